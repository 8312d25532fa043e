"""The bridge from the `logging` module: stdlib records become flowtrail records.

`FlowtrailLogHandler` sends every stdlib record to the handlers of the trace active in
the current context (``with get_trace(...)``, or a span), or to its own handlers. Each
flowtrail handler is also a `logging.Handler` for the seeds' direct form.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Mapping
from typing import Any

from flowtrail.config import Settings
from flowtrail.context import Pid, clock_for, current_run, host_info, make_cut_id
from flowtrail.records import CONTEXT_FIELDS, ERROR_LEVELS, Metadata

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
    if not run_id:
        from flowtrail.handlers.base import safe_run_id

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


class FlowtrailLogHandler(logging.Handler):
    """A stdlib handler that forwards records to flowtrail.

    With no arguments, records go to the handlers of the trace active in the current
    context (inside ``with get_trace(...)`` or a span); outside any trace they go to the
    trace given as ``trace=`` or are ignored. ``logging.getLogger().addHandler(
    FlowtrailLogHandler())`` is all it takes.
    """

    def __init__(self, trace: Any = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.trace = trace

    def emit(self, record: logging.LogRecord) -> None:
        if is_ignored_logger(record.name):
            return
        try:
            from flowtrail.trace import active_trace

            trace = active_trace()
            if trace is None:
                context = current_run.get()
                live = context.live if context is not None else None
                trace = live.trace if live is not None else self.trace
            if trace is not None:
                trace._log_record(record)
        except Exception:
            self.handleError(record)
