"""The front users call: `get_trace` and `Trace`.

A call such as ``trace.info("...")`` builds one immutable record on the caller's thread
(ids from the context, a cached time stamp, the caller's file and line from its frame),
writes it to the console, and appends it to each storing handler's pipeline queue. It
never waits on a network and never raises a handler's failure. Only in a burst, when a
full batch of a local store (file, SQLite) waits and its worker is idle, does the caller
write that batch itself (see `flowtrail.pipeline`).
"""

from __future__ import annotations

import contextvars
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from types import FrameType, TracebackType
from typing import Any

import msgspec

from flowtrail.config import ConfigError, Settings, mask_text, resolve_settings
from flowtrail.context import (
    ActiveContext,
    Pid,
    RunContext,
    TraceParent,
    clock_for,
    current_run,
    current_trace,
    format_baggage,
    host_info,
    make_cut_id,
    new_run_id,
    new_span_id,
    new_trace_id,
    parse_baggage,
    parse_traceparent,
    sample_decision,
)
from flowtrail.handlers import (
    BaseHandler,
    ConsoleHandler,
    SQLiteHandler,
    check_run_id,
    make_handler,
)
from flowtrail.lifecycle import (
    INTERRUPTED,
    install_signal_handlers,
    on_child_exit,
    on_fork_child,
    on_terminate,
)
from flowtrail.logrecords import record_level
from flowtrail.otelbridge import attached_span, otel_current, parent_of
from flowtrail.pipeline import Pipeline, close_all, set_exit_timeout
from flowtrail.records import CONTEXT_FIELDS, LEVELS, Metadata, Span, SpanEvent, json_safe
from flowtrail.spans import (
    LiveSpan,
    SpanScope,
    end_open_spans,
    is_open,
    open_spans,
    path_to_errors,
)

_getframe = sys._getframe
_perf_counter_ns = time.perf_counter_ns
_get_ident = threading.get_ident
_replace = msgspec.structs.replace
_modules = sys.modules
_basenames: dict[str, str] = {}

#: Handlers that receive every record of every trace (see `flowtrail.testing`).
_global_handlers: list[tuple[BaseHandler, ...]] = [()]
#: The trace whose ``with`` block is active in this context (for the stdlib bridge).
_active = current_trace
#: Traces whose ``with`` block was entered, and the process that entered it: the end of
#: a process that never leaves the block (a signal, a multiprocessing child) releases the
#: records the block holds.
_in_block: weakref.WeakKeyDictionary[Trace, int] = weakref.WeakKeyDictionary()
#: Buffered records handed to the pipelines early once this many are held.
_BUFFER_LIMIT = 10_000

#: Keys of extras that choose handlers (seed 002/003 ``trace_type`` shortcut).
_TRACE_TYPE_ALIASES = {"elasticsearch": "elastic", "es": "elastic", "rest": "restapi"}
_HANDLER_KEY_ALIASES = {"es_hosts": "hosts", "index_name": "index"}


def active_trace() -> Trace | None:
    """The trace whose ``with get_trace(...)`` block encloses the current code, if any."""
    return _active.get()


def _basename(path: str) -> str:
    name = _basenames.get(path)
    if name is None:
        name = _basenames[path] = os.path.basename(path)
    return name


def default_handlers(settings: Settings) -> list[BaseHandler]:
    """Console plus an SQLite store at ``<log_dir>/flowtrail.db``."""
    return list(_default_handlers(settings.log_dir))


@lru_cache(maxsize=32)
def _default_handlers(log_dir: str) -> tuple[BaseHandler, ...]:
    return (ConsoleHandler(), SQLiteHandler(path=f"{log_dir}/flowtrail.db"))


_bound_cache: dict[Any, BaseHandler] = {}


def _bind(handler: BaseHandler, settings: Settings) -> BaseHandler:
    """``handler.bound(settings)``, cached: a get_trace per stage should not rebuild the
    same handlers each time."""
    try:
        key = (
            os.getcwd(),
            type(handler),
            handler.config,
            settings.log_format,
            settings.log_format_file,
            settings.log_datetime_format,
            settings.log_add_emoji,
            settings.log_dir,
        )
        bound = _bound_cache.get(key)
    except TypeError:  # a config with unhashable values
        return handler.bound(settings)
    if bound is None:
        bound = handler.bound(settings)
        if bound is not handler:  # a handler bound to itself (memory) must stay itself
            if len(_bound_cache) > 512:
                _bound_cache.clear()
            _bound_cache[key] = bound
    return bound


def _handlers_from_trace_type(extras: Mapping[str, Any]) -> list[BaseHandler]:
    from flowtrail.handlers import handler_class

    name = str(extras["trace_type"]).lower()
    cls = handler_class(_TRACE_TYPE_ALIASES.get(name, name))
    known = set(cls.Config.__struct_fields__)
    options = {}
    for key, value in extras.items():
        key = _HANDLER_KEY_ALIASES.get(key, key)
        if key in known and key != "type":
            options[key] = value
    return [cls(**options)]


def _incoming_context(
    traceparent: str | None, baggage: str | Mapping[str, str] | None
) -> tuple[TraceParent | None, tuple[tuple[str, str], ...]]:
    """The W3C context a trace continues: the arguments, else the ``TRACEPARENT`` and
    ``BAGGAGE`` environment variables. Invalid values are ignored with a warning."""
    source = "argument"
    if traceparent is None:
        traceparent, source = os.environ.get("TRACEPARENT"), "environment variable"
    remote = parse_traceparent(traceparent) if traceparent else None
    if traceparent and remote is None:
        warnings.warn(
            f"flowtrail: ignoring the invalid traceparent {source} {traceparent!r}; "
            "starting a new trace",
            RuntimeWarning,
            stacklevel=4,
        )
    if baggage is None:
        baggage = os.environ.get("BAGGAGE")
    if isinstance(baggage, Mapping):
        items = tuple((str(k), str(v)) for k, v in baggage.items())
    else:
        items = parse_baggage(baggage)
        members = [m for m in (baggage or "").split(",") if m.strip()]
        if len(items) < len(members):
            warnings.warn(
                f"flowtrail: ignoring {len(members) - len(items)} malformed member(s) of the "
                f"baggage {mask_text(baggage or '')!r}",
                RuntimeWarning,
                stacklevel=4,
            )
    return remote, items


def _context_fields(run_id: str, extras: Mapping[str, Any]) -> dict[str, Any]:
    fields = {key: value for key, value in extras.items() if key in CONTEXT_FIELDS}
    if not fields:
        return {}
    try:
        checked = msgspec.convert({"run_id": run_id, **fields}, Metadata, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(
            f"flowtrail config: a record field in extras is not valid: {exc}"
        ) from None
    # Made encodable once per trace, not per record: every store must be able to write
    # the values (lone surrogates, objects JSON cannot hold, a dict that contains itself).
    return {key: json_safe(getattr(checked, key)) for key in fields}


def _level_method(level: str) -> Any:
    """The method logging at ``level``: the hot path, written out once for each level so
    that a call is one frame deep and passes no level argument."""
    severity = LEVELS[level]
    wants_exception = level == "exception"
    get_context = current_run.get
    globals_ = _global_handlers

    def method(self: Trace, message: Any) -> None:
        if severity < self._min_level:
            return
        context = get_context()
        if context is not None and not context.sampled and severity < 30:
            return  # an unsampled trace keeps warnings and errors only
        try:
            frame = _getframe(self._layer)
        except ValueError:
            frame = _outermost_frame()
        code_file = frame.f_code.co_filename
        now = self._clock.now()
        record = _replace(
            self._templates[level],
            message=message if message.__class__ is str else str(message),
            datetime=now,
            process=Pid.value,
            thread=_get_ident(),
            filename=_basenames.get(code_file) or _basename(code_file),
            lineno=frame.f_lineno,
            created_at=now,
        )
        if context is not None and context.live is not None:
            record = _in_span(record, context)
        if _modules.get("opentelemetry.trace") is not None:
            record = _in_otel_span(record, context)
        if wants_exception:
            record = self._with_exception(record, None)
        if self._direct and not globals_[0]:
            for pipeline in self._pipes:
                pipeline.submit(record)
        else:
            self._submit(record)

    method.__name__ = method.__qualname__ = level
    method.__doc__ = f"Log ``message`` at {level.upper()} level" + (
        " with the active exception's type, message and stack." if wants_exception else "."
    )
    return method


def _in_span(record: Metadata, context: ActiveContext) -> Metadata:
    """The record with the open span's ids and names, attached to the span as an event."""
    record = _replace(record, **context.overrides)
    live = context.live
    live.events.append(
        SpanEvent(
            name="log",
            time=record.datetime,
            time_ns=live._epoch_ns + _perf_counter_ns(),  # `LiveSpan.now_ns`, inlined
            level=record.level,
            attributes={"message": record.message, "lineno": record.lineno},
        )
    )
    return record


def _in_otel_span(record: Metadata, context: ActiveContext | None) -> Metadata:
    """The record with the ids of OpenTelemetry's current span when that span is not
    the open flowtrail span (`flowtrail.otelbridge`): outside flowtrail spans, or in a
    span an instrumented library started inside one."""
    live = context.live if context is not None else None
    own = getattr(live, "_otel", None)  # `live` may be another kind of context
    if live is not None and own is None:
        # A flowtrail span that is not OpenTelemetry's (opened before OpenTelemetry
        # was imported, or mirroring an engine's own span): its ids stand.
        return record
    current = otel_current()
    if own is not None and current is attached_span(own):
        return record  # OpenTelemetry's current span is the open flowtrail span
    outer = parent_of(current)
    if outer is None:
        return record
    if live is None:
        return _replace(record, trace_id=outer.trace_id, span_id=outer.span_id)
    # A span started inside the flowtrail span (the record carries its ids already).
    if outer.span_id != record.span_id and outer.trace_id == record.trace_id:
        return _replace(record, span_id=outer.span_id, parent_span_id=record.span_id)
    return record


def _outermost_frame() -> Any:
    frame = _getframe(1)
    while frame.f_back is not None:
        frame = frame.f_back
    return frame


class Trace:
    """Log records of one run to its handlers.

    ``Trace(run_id, parent_run_id, handlers=[...], extras={...})`` or, more usually,
    `get_trace`. Use ``with get_trace(...) as trace:`` to hold records until the block
    ends (then they are written and flushed); an exception in the block is recorded with
    its traceback and re-raised.
    """

    def __init__(
        self,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        *,
        handlers: Sequence[BaseHandler | Mapping[str, Any]] | None = None,
        extras: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
        baggage: str | Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.run_id = check_run_id(run_id) if run_id is not None else new_run_id()
        self._remote, self.baggage_items = _incoming_context(traceparent, baggage)
        if parent_run_id is None and self._remote is not None:
            parent_run_id = dict(self.baggage_items).get("flowtrail.run_id")
        if parent_run_id is not None:
            check_run_id(parent_run_id)
        self.parent_run_id = parent_run_id
        self.extras: dict[str, Any] = dict(extras or {})
        arguments = dict(settings)
        if handlers is not None:
            arguments["trace_handlers"] = handlers
        self.settings = resolve_settings(arguments, self.extras)
        self.handlers = self._choose_handlers(handlers)
        bound = [_bind(handler, self.settings) for handler in self.handlers]
        self._sync: tuple[BaseHandler, ...] = tuple(h for h in bound if h.synchronous)
        self._pipes: tuple[Pipeline, ...] = tuple(
            h.pipeline(self.settings.strict) for h in bound if not h.synchronous
        )
        host = host_info()
        fields = _context_fields(self.run_id, self.extras)
        remote_id = self._remote.trace_id if self._remote is not None else None
        self.trace_id: str = fields.get("trace_id") or remote_id or new_trace_id()
        #: Whether this trace records everything (see the ``sample_ratio`` setting).
        self.sampled = sample_decision(self.trace_id, self.settings.sample_ratio)
        self.workflow_name: str | None = fields.get("workflow_name")
        self._template = Metadata(
            run_id=self.run_id,
            parent_run_id=parent_run_id,
            cut_id=make_cut_id(self.run_id, parent_run_id),
            python_version=host.python_version,
            **{
                "hostname": host.hostname,
                "ip_address": host.ip_address,
                **fields,
                "trace_id": self.trace_id,
            },
        )
        self._fields = fields
        #: The template with each level's name, error flag and mode already set.
        self._templates = {
            name: _replace(
                self._template,
                level=name,
                error_flag=severity >= 40,
                mode="stderr" if severity >= 40 else "stdout",
            )
            for name, severity in LEVELS.items()
        }
        self._clock = clock_for(self.settings.log_tz)
        set_exit_timeout(self.settings.exit_timeout)
        if self.settings.handle_signals:
            install_signal_handlers()
        self._min_level = LEVELS[self.settings.log_level]
        if not self.sampled:  # an unsampled trace keeps warnings and errors only
            self._min_level = max(self._min_level, LEVELS["warning"])
        self._layer = self.settings.logs_trace_frame_layer
        self._buffer: list[Metadata | Span] | None = None
        self._buffer_lock = threading.RLock()
        #: True while records can go straight to the pipelines (no console, no buffer).
        self._direct = not self._sync
        self._tokens: list[tuple[contextvars.Token[Any], contextvars.Token[Any]]] = []

    def _choose_handlers(
        self, handlers: Sequence[BaseHandler | Mapping[str, Any]] | None
    ) -> list[BaseHandler]:
        if handlers is None and "trace_handlers" not in self.extras and "trace_type" in self.extras:
            return _handlers_from_trace_type(self.extras)
        specs: Iterable[Any] | None = self.settings.trace_handlers
        if specs is None:
            return default_handlers(self.settings)
        return [make_handler(spec) for spec in specs]

    def __repr__(self) -> str:
        return f"Trace(run_id={self.run_id!r}, parent_run_id={self.parent_run_id!r})"

    # ------------------------------------------------------------------ records
    def _make(
        self,
        message: Any,
        level: str,
        depth: int,
        exc: BaseException | None = None,
    ) -> Metadata | None:
        severity = LEVELS.get(level)
        if severity is None:
            raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
        if severity < self._min_level:
            return None
        context = current_run.get()
        if context is not None and not context.sampled and severity < 30:
            return None
        try:
            frame = _getframe(depth + self._layer - 1)
        except ValueError:  # the layer reaches past the outermost frame: use the outermost
            frame = _getframe(depth)
            while frame.f_back is not None:
                frame = frame.f_back
        now = self._clock.now()
        error = severity >= 40
        record = _replace(
            self._template,
            level=level,
            message=message if message.__class__ is str else str(message),
            error_flag=error,
            datetime=now,
            process=Pid.value,
            thread=_get_ident(),
            filename=_basename(frame.f_code.co_filename),
            lineno=frame.f_lineno,
            created_at=now,
            mode="stderr" if error else "stdout",
        )
        if context is not None and context.live is not None:
            record = _in_span(record, context)
        if _modules.get("opentelemetry.trace") is not None:
            record = _in_otel_span(record, context)
        if level == "exception" or exc is not None:
            record = self._with_exception(record, exc)
        return record

    @staticmethod
    def _with_exception(record: Metadata, exc: BaseException | None) -> Metadata:
        if exc is None:
            exc = sys.exc_info()[1]
        if exc is None:
            return record
        _first_escape(exc)  # a span it leaves later does not record it again
        return _replace(
            record,
            exception_type=type(exc).__qualname__,
            exception_message=str(exc),
            stack_trace="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )

    def _submit(self, record: Metadata | Span | None) -> None:
        if record is None:
            return
        for handler in _global_handlers[0]:  # capture_traces() observes every call
            handler.write(record)
        if self._buffer is not None and self._hold(record):
            return
        for handler in self._sync:
            handler.write(record)
        for pipeline in self._pipes:
            pipeline.submit(record)

    def _hold(self, record: Metadata | Span) -> bool:
        """Inside ``with``: keep the record until the block ends. False if the block
        ended meanwhile (then the record is written at once). The lock makes sure a
        record another thread adds while the block exits is never left in a buffer that
        was already handed on; it is re-entrant so a signal handler that logs while
        this thread holds it does not deadlock."""
        with self._buffer_lock:
            buffer = self._buffer
            if buffer is None:
                return False
            buffer.append(record)
            full = len(buffer) >= _BUFFER_LIMIT
        if full:
            self._release_buffer()
        return True

    def _take_buffer(self, keep_holding: bool) -> list[Metadata | Span]:
        with self._buffer_lock:
            buffer = self._buffer or []
            self._buffer = [] if keep_holding else None
        return buffer

    def _release_buffer(self, keep_holding: bool = True) -> None:
        """Hand the held records to every handler (and stop holding unless
        ``keep_holding``)."""
        if self._buffer is None:
            return
        buffer = self._take_buffer(keep_holding)
        if buffer:
            for handler in self._sync:
                for record in buffer:
                    handler.write(record)
            for pipeline in self._pipes:
                pipeline.submit_many(buffer)

    def _log_record(self, record: logging.LogRecord) -> None:
        """Take a stdlib record (from `FlowtrailLogHandler`)."""
        level = record_level(record)
        severity = LEVELS[level]
        if severity < self._min_level:
            return
        context = current_run.get()
        if context is not None and not context.sampled and severity < 30:
            return
        now = self._clock.now()
        meta = _replace(
            self._templates[level],
            message=record.getMessage(),
            datetime=now,
            process=record.process or Pid.value,
            thread=record.thread or _get_ident(),
            filename=_basename(record.pathname),
            lineno=record.lineno,
            created_at=now,
            metadata={**self._template.metadata, "logger": record.name},
        )
        if context is not None and context.live is not None:
            meta = _in_span(meta, context)
        if _modules.get("opentelemetry.trace") is not None:
            meta = _in_otel_span(meta, context)
        if record.exc_info and record.exc_info[1] is not None:
            meta = self._with_exception(meta, record.exc_info[1])
        self._submit(meta)

    # ------------------------------------------------------------------ public API
    def emit(self, message: Any, level: str = "info") -> None:
        """Log ``message`` at ``level`` (debug, info, warning, error, exception)."""
        self._submit(self._make(message, level, 2))

    debug = _level_method("debug")
    info = _level_method("info")
    warning = _level_method("warning")
    error = _level_method("error")
    exception = _level_method("exception")

    async def amit(self, message: Any, level: str = "info") -> None:
        """Async `emit`: hands the record to the same queue and returns at once."""
        self._submit(self._make(message, level, 2))

    async def adebug(self, message: Any) -> None:
        """Async `debug`."""
        self._submit(self._make(message, "debug", 2))

    async def ainfo(self, message: Any) -> None:
        """Async `info`."""
        self._submit(self._make(message, "info", 2))

    async def awarning(self, message: Any) -> None:
        """Async `warning`."""
        self._submit(self._make(message, "warning", 2))

    async def aerror(self, message: Any) -> None:
        """Async `error`."""
        self._submit(self._make(message, "error", 2))

    async def aexception(self, message: Any) -> None:
        """Async `exception`."""
        self._submit(self._make(message, "exception", 2))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every record logged so far is written (or spooled). Returns False
        if ``timeout`` seconds passed first."""
        self._release_buffer()
        ok = True
        for pipeline in self._pipes:
            ok = pipeline.flush(timeout) and ok
        return ok

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush. Workers are shared by every trace with the same handlers and stop at
        interpreter exit (or `flowtrail.shutdown`)."""
        return self.flush(timeout)

    def pipelines(self) -> tuple[Pipeline, ...]:
        """The pipelines this trace writes through (their ``stats`` count outcomes)."""
        return self._pipes

    # ------------------------------------------------------------------ spans
    def span(self, kind: Any = "stage", name: str | None = None, **attributes: Any) -> Any:
        """A span around a workflow, job, stage or node::

            with trace.span("job", name="extract", source="s3") as span:
                span.set_attribute("rows", 10)

            @trace.span("stage")
            async def validate(): ...

        Spans nest by context; records written inside carry the span's ids and are
        attached to it as events; an exception leaving the span marks it ``error``,
        is recorded as an event, and propagates. ``@trace.span`` without arguments
        makes a ``stage`` span named after the function."""
        if callable(kind) and name is None and not attributes:
            return SpanScope(self, "stage", None, {})(kind)
        return SpanScope(self, kind, name, attributes)

    def _start_span(self, kind: str, name: str, attributes: dict[str, Any]) -> LiveSpan:
        context = current_run.get()
        parent = context.live if context is not None else None
        if _modules.get("opentelemetry.trace") is None:
            live = LiveSpan(self, kind, name, attributes, parent, self._remote)
        else:
            live = self._start_in_otel(kind, name, attributes, parent)
        live._enter(context)
        return live

    def _start_in_otel(
        self, kind: str, name: str, attributes: dict[str, Any], parent: LiveSpan | None
    ) -> LiveSpan:
        """A span whose parent may be OpenTelemetry's current span: outside any flowtrail
        span, it joins that span's trace as its child; inside one, a span that
        OpenTelemetry started inside it (an instrumented library's) is its parent."""
        own = getattr(parent, "_otel", None)  # `parent` may be another kind of context
        if parent is not None and own is None:
            # A parent that is not OpenTelemetry's current span (see `_in_otel_span`).
            return LiveSpan(self, kind, name, attributes, parent, self._remote)
        current = otel_current()
        if own is not None and current is attached_span(own):
            outer = None  # OpenTelemetry's current span is the flowtrail parent itself
        else:
            outer = parent_of(current)
        if outer is None or (
            parent is not None and outer.span_id == getattr(parent, "span_id", "")
        ):
            return LiveSpan(self, kind, name, attributes, parent, self._remote)
        if parent is None:
            live = LiveSpan(self, kind, name, attributes, None, outer)
            live.trace_id = outer.trace_id
            return live
        live = LiveSpan(self, kind, name, attributes, parent, self._remote)
        if outer.trace_id == parent.trace_id:
            live.parent_span_id = outer.span_id
        return live

    def _span_started(self, live: LiveSpan) -> None:
        if live.sampled and self._buffer is None:
            for handler in self._sync:
                handler.span_started(live)

    def _end_span(self, live: LiveSpan, exc: BaseException | None) -> Span | None:
        if exc is not None and is_open(live) and _first_escape(exc):
            self._submit(self._escape_record(live, exc))
        span = live._finish(exc)
        if span is None:  # ended by a signal, or opened in the parent before a fork
            return None
        if span.sampled:
            if self._direct and not _global_handlers[0]:
                for pipeline in self._pipes:
                    pipeline.submit(span)
            else:
                self._submit(span)
            return span
        # An unsampled trace keeps its spans until its local root ends, then writes
        # only the ones on the path to an error.
        root = live.root
        assert root.pending is not None
        root.pending.append(span)
        if root is live:
            for kept in path_to_errors(root.pending):
                self._submit(kept)
            root.pending = []
        return span

    def _escape_record(self, live: LiveSpan, exc: BaseException) -> Metadata | None:
        """The exception record of ``exc`` leaving ``live`` (written once per exception,
        by the innermost span it left): in the span, at the line that raised it, with its
        type, message and stack, so `search` and ``--level error`` find it."""
        if LEVELS["exception"] < self._min_level:
            return None
        last = exc.__traceback__
        while last is not None and last.tb_next is not None:
            last = last.tb_next
        record = self._record_at(
            "exception",
            f"{live.kind} {live.name} failed: {type(exc).__qualname__}: {exc}",
            last.tb_frame if last is not None else None,
            last.tb_lineno if last is not None else 0,
        )
        return self._with_exception(_in_span(record, live), exc)

    def _record_at(
        self, level: str, message: str, frame: FrameType | None, lineno: int, **fields: Any
    ) -> Metadata:
        """A record written now for a place other than the caller's (where an exception
        was raised, where a signal landed); off the hot path."""
        now = self._clock.now()
        return _replace(
            self._templates[level],
            message=message,
            datetime=now,
            created_at=now,
            process=Pid.value,
            thread=_get_ident(),
            filename=_basename(frame.f_code.co_filename) if frame is not None else "",
            lineno=lineno,
            **fields,
        )

    def _span_open(self, start: Span) -> None:
        # Straight to the stores (a console prints the start itself; a with-block does not
        # hold it: the start says the run is being written).
        for pipeline in self._pipes:
            pipeline.submit(start)

    def current_span(self) -> LiveSpan | None:
        """The span open in the current context, if any."""
        context = current_run.get()
        return context.live if context is not None else None

    # ------------------------------------------------------------------ propagation
    def traceparent(self) -> str:
        """The W3C ``traceparent`` of the current span (else of this trace), for another
        process to continue this trace."""
        live = self.current_span()
        if live is not None:
            return live.traceparent()
        span_id = self._remote.span_id if self._remote is not None else self._root_span_id()
        return f"00-{self.trace_id}-{span_id}-{'01' if self.sampled else '00'}"

    def _root_span_id(self) -> str:
        span_id = self.__dict__.get("_anchor_span_id")
        if span_id is None:
            span_id = self.__dict__["_anchor_span_id"] = new_span_id()
        return span_id

    @property
    def baggage(self) -> dict[str, str]:
        """The W3C baggage this trace carries, with ``flowtrail.run_id``."""
        return {**dict(self.baggage_items), "flowtrail.run_id": self.run_id}

    def headers(self) -> dict[str, str]:
        """``traceparent`` and ``baggage`` headers for an outgoing request."""
        return {"traceparent": self.traceparent(), "baggage": format_baggage(self.baggage)}

    def subprocess_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of ``env`` (default: this process's) with ``TRACEPARENT`` and
        ``BAGGAGE`` set, so that `get_trace` in the child continues this trace."""
        result = dict(os.environ if env is None else env)
        result["TRACEPARENT"] = self.traceparent()
        result["BAGGAGE"] = format_baggage(self.baggage)
        return result

    def run_subprocess(self, args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run` with this trace's context in the child's environment.
        Records are flushed first so that the child's come after them in the store."""
        self.flush()
        kwargs["env"] = self.subprocess_env(kwargs.get("env"))
        return subprocess.run(args, **kwargs)

    # ------------------------------------------------------------------ with-block
    def __enter__(self) -> Trace:
        if self._buffer is None:
            self._buffer = []
            self._direct = False
        context = RunContext(
            run_id=self.run_id,
            parent_run_id=self.parent_run_id,
            trace_id=self.trace_id,
            fields=tuple(self._fields.items()),
        )
        self._tokens.append((_active.set(self), current_run.set(context)))
        _in_block[self] = Pid.value
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None and not _normal_exit(exc) and _first_escape(exc):
                record = self._make(f"{type(exc).__qualname__}: {exc}", "exception", 2, exc)
                if record is not None and tb is not None:
                    # The line in the block that raised, not the line of the ``with``.
                    code_file = tb.tb_frame.f_code.co_filename
                    record = _replace(record, filename=_basename(code_file), lineno=tb.tb_lineno)
                self._submit(record)
        finally:
            self._release_buffer(keep_holding=False)
            self._direct = not self._sync
            if self._tokens:
                active_token, run_token = self._tokens.pop()
                try:
                    _active.reset(active_token)
                    current_run.reset(run_token)
                except ValueError:  # exited in another context
                    pass
            self.flush()


_RECORDED = "__flowtrail_recorded__"


def _first_escape(exc: BaseException) -> bool:
    """Whether ``exc`` is to be recorded now: not a normal exit (``sys.exit(0)``,
    ``GeneratorExit``) and not recorded already (by a span it left, ``trace.exception()``
    or a ``with`` block). Marks it recorded."""
    if _normal_exit(exc) or isinstance(exc, GeneratorExit):
        return False
    if getattr(exc, _RECORDED, False):
        return False
    try:
        setattr(exc, _RECORDED, True)
    except (AttributeError, TypeError):  # an exception class without a __dict__
        pass
    return True


def _normal_exit(exc: BaseException) -> bool:
    """``sys.exit()`` / ``sys.exit(0)``: leaving the block, not a failure."""
    return isinstance(exc, SystemExit) and exc.code in (None, 0)


def get_trace(
    run_id: str | None = None,
    parent_run_id: str | None = None,
    *,
    handlers: Sequence[BaseHandler | Mapping[str, Any]] | None = None,
    extras: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Trace:
    """A `Trace` for ``run_id``.

    Handlers come from ``handlers=``, else ``extras["trace_handlers"]`` (or the
    ``trace_type`` shortcut of seeds 002/003 with its keys in ``extras``), else the
    ``FLOWTRAIL_TRACE_HANDLERS`` environment variable, else the config file, else console +
    SQLite under ``./logs/``. Other settings (``log_tz``, ``log_format`` ...) may be passed
    as keywords. Record fields such as ``workflow_name``, ``job_name``, ``user_id``,
    ``tags`` and ``metadata`` in ``extras`` go on every record.
    """
    return Trace(run_id, parent_run_id, handlers=handlers, extras=extras, **settings)


def _stop_runs(signal_name: str, frame: FrameType | None) -> None:
    """What a signal that stops the process does to the runs in progress (registered with
    `flowtrail.lifecycle`): each trace with open spans or inside its ``with`` block hands
    the records it holds to its handlers and records, at level error inside its innermost
    open span, that the run was stopped; then every open span ends as interrupted."""
    traces: dict[Any, LiveSpan | None] = {}
    for live in open_spans():  # newest first: a trace's first is its innermost
        traces.setdefault(live.trace, live)
    _release_held_records()
    for trace, entered_by in list(_in_block.items()):
        # A block entered by the parent before a fork is the parent's run, not this one.
        if trace._tokens and entered_by == Pid.value:
            traces.setdefault(trace, None)
    for trace, innermost in traces.items():
        trace._release_buffer(keep_holding=False)
        record = trace._record_at(
            "error",
            f"[WORKFLOW]: stopped by {signal_name}",
            frame,
            frame.f_lineno if frame is not None else 0,
            metadata={**trace._template.metadata, INTERRUPTED: signal_name},
        )
        if innermost is not None:
            record = _in_span(record, innermost)
        trace._submit(record)
    end_open_spans(signal_name)


def _release_held_records() -> None:
    """Hand the records held by open ``with`` blocks to the handlers (a process that ends
    without leaving its blocks)."""
    for trace in list(_in_block):
        trace._release_buffer()


def _forget_parent_records() -> None:
    """In a forked child: the records a ``with`` block held at the fork are the parent's
    to write; the child's go on from an empty buffer."""
    for trace in list(_in_block):
        trace._buffer_lock = threading.RLock()  # another thread may have held it
        if trace._buffer:
            trace._buffer = []


on_terminate(_stop_runs)
on_child_exit(_release_held_records)
on_fork_child(_forget_parent_records)


def shutdown(timeout: float | None = 30.0) -> bool:
    """Flush every pipeline of this process and stop its workers, all within
    ``timeout`` seconds."""
    return close_all(timeout)


__all__ = ["Trace", "active_trace", "default_handlers", "get_trace", "shutdown"]
