"""Stdlib `logging` records as flowtrail records.

This sits below the handlers and the front: it imports only records, context and config,
so the handlers' `logging.Handler` face and the stdlib bridge (`flowtrail.stdlib`) can
both use it without importing each other.

It also holds the re-entrancy guard: while flowtrail itself writes to the console, a
line that comes back into `logging` (stdout and stderr redirected into loggers, as
Airflow and Celery do) is an echo, and flowtrail drops it rather than loop.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any

from flowtrail.config import Settings
from flowtrail.context import (
    Pid,
    clock_for,
    current_run,
    host_info,
    make_cut_id,
    safe_run_id,
)
from flowtrail.otelbridge import attached_span, otel_current, parent_of
from flowtrail.records import CONTEXT_FIELDS, ERROR_LEVELS, Metadata

_modules = sys.modules

_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "exception",
}

#: Loggers whose records never reach flowtrail (flowtrail's own HTTP clients).
IGNORED_LOGGERS = ("httpx", "httpcore", "urllib3", "botocore", "flowtrail")
_IGNORED_CHILDREN = tuple(f"{name}." for name in IGNORED_LOGGERS)


def is_ignored_logger(name: str) -> bool:
    """Whether records of logger ``name`` must never reach flowtrail: one of
    `IGNORED_LOGGERS` or a child of one (``httpx._client``), not a look-alike
    (``httpxtra``)."""
    return name in IGNORED_LOGGERS or name.startswith(_IGNORED_CHILDREN)


def level_name(levelno: int) -> str:
    """The flowtrail level of a stdlib level number."""
    if levelno in _LEVEL_NAMES:
        return _LEVEL_NAMES[levelno]
    if levelno >= logging.CRITICAL:
        return "exception"
    for number in (logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= number:
            return _LEVEL_NAMES[number]
    return "debug"


def record_level(record: logging.LogRecord) -> str:
    """The flowtrail level of a stdlib record: ``exception`` for an error with exception
    info (``logger.exception``), else by its level number."""
    if record.exc_info and record.exc_info[0] is not None and record.levelno >= logging.ERROR:
        return "exception"
    return level_name(record.levelno)


def _join_otel_span(fields: dict[str, Any], context: Any) -> None:
    """Give the record the ids of OpenTelemetry's current span when it is not the open
    flowtrail span (a library's span, or one outside flowtrail's): see
    `flowtrail.otelbridge`."""
    live = context.live if context is not None else None
    own = getattr(live, "_otel", None)  # `live` may be another kind of context
    if live is not None and own is None:
        return  # a flowtrail span that is not OpenTelemetry's: its ids stand
    current = otel_current()
    if own is not None and current is attached_span(own):
        return
    outer = parent_of(current)
    if outer is None:
        return
    if live is None:
        fields["trace_id"] = outer.trace_id
        fields["span_id"] = outer.span_id
        fields.pop("parent_span_id", None)
    elif outer.trace_id == fields.get("trace_id") and outer.span_id != fields.get("span_id"):
        fields["parent_span_id"] = fields.get("span_id")
        fields["span_id"] = outer.span_id


def metadata_from_log_record(
    record: logging.LogRecord,
    settings: Settings,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    extras: Mapping[str, Any] | None = None,
) -> Metadata:
    """A flowtrail record from a stdlib one: the run from the current context, else the
    given ``run_id``, else the logger name; the caller file and line from the record."""
    context = current_run.get()
    fields: dict[str, Any] = {k: v for k, v in (extras or {}).items() if k in CONTEXT_FIELDS}
    if context is not None:
        run_id = run_id or context.run_id
        parent_run_id = parent_run_id or context.parent_run_id
        fields.update(context.fields)
        if context.trace_id:
            fields["trace_id"] = context.trace_id
        if context.span_id:
            fields["span_id"] = context.span_id
            fields["parent_span_id"] = context.parent_span_id
    if _modules.get("opentelemetry.trace") is not None:
        _join_otel_span(fields, context)
    if not run_id:
        run_id = safe_run_id(record.name)
    level = record_level(record)
    error = level in ERROR_LEVELS
    exc_type = exc_message = stack = None
    if record.exc_info and record.exc_info[0] is not None:
        exc_type = record.exc_info[0].__name__
        exc_message = str(record.exc_info[1])
        stack = "".join(traceback.format_exception(*record.exc_info))
    host = host_info()
    stamp = clock_for(settings.log_tz).now()
    metadata = dict(fields.pop("metadata", None) or {})
    metadata.setdefault("logger", record.name)
    return Metadata(
        run_id=run_id,
        parent_run_id=parent_run_id,
        level=level,
        message=record.getMessage(),
        error_flag=error,
        datetime=stamp,
        process=record.process or Pid.value,
        thread=record.thread or 0,
        filename=os.path.basename(record.pathname),
        lineno=record.lineno,
        cut_id=make_cut_id(run_id, parent_run_id),
        exception_type=exc_type,
        exception_message=exc_message,
        stack_trace=stack,
        hostname=fields.pop("hostname", host.hostname),
        ip_address=fields.pop("ip_address", host.ip_address),
        python_version=host.python_version,
        tags=list(fields.pop("tags", None) or []),
        metadata=metadata,
        created_at=stamp,
        mode="stderr" if error else "stdout",
        **fields,
    )


# ---------------------------------------------------------------- re-entrancy guard
class _Writing(threading.local):
    #: True while this thread is inside flowtrail's own output or stdlib bridge.
    active = False


#: Set while flowtrail writes to the console or hands a stdlib record on, in this thread.
writing = _Writing()
#: How many echoed stdlib records were dropped (see `drop_echo`).
dropped_echoes = [0]


def drop_echo(record: logging.LogRecord) -> bool:
    """Whether ``record`` arrived while this thread is inside flowtrail's own output (its
    console line came back through a redirected stdout or stderr): then it is counted,
    reported once on the real stderr, and must be dropped."""
    if not writing.active:
        return False
    dropped_echoes[0] += 1
    if dropped_echoes[0] == 1:
        try:
            # sys.__stderr__: the redirected sys.stderr is what echoes.
            stream = sys.__stderr__
            if stream is not None:
                stream.write(
                    f"flowtrail: dropped a record of logger {record.name!r} that echoed "
                    "flowtrail's own console output back into logging (stdout or stderr "
                    "redirected to a logger); further echoes are dropped silently.\n"
                )
        except Exception:
            pass
    return True


__all__ = [
    "IGNORED_LOGGERS",
    "drop_echo",
    "is_ignored_logger",
    "level_name",
    "metadata_from_log_record",
    "record_level",
    "safe_run_id",
    "writing",
]
