"""Spans: ``with trace.span("stage", name="validate", rows=10) as span:`` and the decorator
form, for sync and ``async def`` functions.

An open span is a `LiveSpan` held in the run context (`contextvars`), so nesting is right
across ``await``, ``asyncio.gather`` and threads started with a copied context. Log records
written while it is open carry its ids and are attached to it as events. When it ends it
becomes an immutable `Span` that goes through the same pipelines as log records.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, cast

from flowtrail.context import (
    Clock,
    Memory,
    Pid,
    TraceParent,
    current_run,
    format_baggage,
    host_info,
    new_span_id,
)
from flowtrail.lifecycle import INTERRUPTED, on_fork_child
from flowtrail.otelbridge import attach as otel_attach
from flowtrail.otelbridge import detach as otel_detach
from flowtrail.records import Span, SpanEvent


class SpanOwner(Protocol):
    """What a span needs of the trace it belongs to, and no more: `flowtrail.trace.Trace`
    is one. Spans talk to their trace only through these names, so this module does not
    import the trace module."""

    run_id: str
    parent_run_id: str | None
    trace_id: str
    sampled: bool
    baggage_items: tuple[tuple[str, str], ...]
    workflow_name: str | None
    #: Stamps span start and end times in the trace's time zone.
    _clock: Clock
    #: The trace's synchronous handlers (a span's start is printed only if there are).
    _sync: tuple[Any, ...]

    def _start_span(self, kind: str, name: str, attributes: dict[str, Any]) -> LiveSpan:
        """Open a span in the current context."""
        ...

    def _span_started(self, live: LiveSpan) -> None:
        """Tell the synchronous handlers that ``live`` opened."""
        ...

    def _end_span(self, live: LiveSpan, exc: BaseException | None) -> Span | None:
        """Close ``live`` (with the exception that left it) and hand the span on."""
        ...

    def _span_open(self, start: Span) -> None:
        """Hand the start of a span still open (`announce_open_spans`) to the stores."""
        ...


F = TypeVar("F", bound=Callable[..., Any])

#: Spans open in this process, oldest first: a signal that stops the process ends them
#: (`end_open_spans`). A dict, for an insert and a removal that cost next to nothing.
_OPEN: dict[LiveSpan, None] = {}
_GONE: Any = object()
_modules = sys.modules

#: Span kinds that name the job or stage of the records inside them.
JOB_KINDS = frozenset({"job"})
STAGE_KINDS = frozenset({"stage", "node", "task", "step"})


class LiveSpan:
    """A span that is still open. Returned by ``with trace.span(...) as span``."""

    __slots__ = (
        "trace",
        "run_id",
        "parent_run_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "attributes",
        "events",
        "status",
        "status_message",
        "sampled",
        "root",
        "pending",
        "names",
        "fields",
        "_overrides",
        "start_ns",
        "start_time",
        "_perf",
        "_epoch_ns",
        "_cpu",
        "memory_start_mb",
        "_token",
        "_otel",
        "baggage",
        "_owns_attributes",
    )

    # Declared here because `__init__` sets some of them from another span's.
    trace_id: str
    sampled: bool
    baggage: tuple[tuple[str, str], ...]
    names: dict[str, str]
    fields: tuple[tuple[str, Any], ...]
    _overrides: dict[str, Any] | None

    def __init__(
        self,
        trace: SpanOwner,
        kind: str,
        name: str,
        attributes: dict[str, Any],
        parent: LiveSpan | None,
        remote: TraceParent | None,
    ) -> None:
        self.trace = trace
        self.run_id = trace.run_id
        self.parent_run_id = trace.parent_run_id
        self.kind = kind
        self.name = name
        self.attributes = attributes
        self._owns_attributes = False
        self.events: list[SpanEvent] = []
        self.status: Literal["ok", "error"] = "ok"
        self.status_message: str | None = None
        self.span_id = new_span_id()
        if parent is not None:
            self.trace_id = parent.trace_id
            self.parent_span_id: str | None = parent.span_id
            self.sampled = parent.sampled
            self.root: LiveSpan = parent.root
            self.baggage = parent.baggage
            names: dict[str, str] = dict(parent.names)
        else:
            self.trace_id = trace.trace_id
            self.parent_span_id = remote.span_id if remote is not None else None
            self.sampled = trace.sampled
            self.root = self
            self.baggage = trace.baggage_items
            names = {}
        if kind in JOB_KINDS:
            names["job_name"] = name
        elif kind in STAGE_KINDS:
            names["stage_name"] = name
        elif kind == "workflow":
            names["workflow_name"] = name
        #: The workflow, job and stage names this span gives the records inside it.
        self.names = names
        #: Finished spans of an unsampled trace, kept by its local root until it ends.
        self.pending: list[Span] | None = None if self.sampled else []
        self._perf = time.perf_counter_ns()
        # The times of a span tree (starts, ends, events) all come from the perf counter,
        # placed on the wall clock once, at its root: two clocks read one after the other
        # (a thread may be preempted between the reads) could end a span before what
        # happened inside it, or a child after its parent.
        self._epoch_ns: int = (
            parent._epoch_ns if parent is not None else time.time_ns() - self._perf
        )
        self.start_ns = self._epoch_ns + self._perf
        self.start_time = trace._clock.now()
        self._cpu = time.process_time_ns()
        self.memory_start_mb = Memory.rss_mb()
        self._token: Any = None
        self._otel: Any = None

    # ------------------------------------------------------------------ user API
    def set_attribute(self, key: str, value: Any) -> None:
        """Set one attribute."""
        self._own_attributes()[key] = value

    def set_attributes(self, **attributes: Any) -> None:
        """Set several attributes."""
        self._own_attributes().update(attributes)

    def _own_attributes(self) -> dict[str, Any]:
        if not self._owns_attributes:
            self.attributes = dict(self.attributes)
            self._owns_attributes = True
        return self.attributes

    def now_ns(self) -> int:
        """Now, in nanoseconds since the epoch, on the clock of this span's times."""
        return self._epoch_ns + time.perf_counter_ns()

    def add_event(self, name: str, **attributes: Any) -> None:
        """Record something that happened now, inside this span."""
        self.events.append(
            SpanEvent(
                name=name,
                time=self.trace._clock.now(),
                time_ns=self.now_ns(),
                attributes=attributes,
            )
        )

    def record_exception(self, exc: BaseException) -> None:
        """Record an exception as an ``exception`` event (type, message, stack)."""
        self.events.append(
            SpanEvent(
                name="exception",
                time=self.trace._clock.now(),
                time_ns=self.now_ns(),
                level="exception",
                attributes={
                    "exception.type": type(exc).__qualname__,
                    "exception.message": str(exc),
                    "exception.stacktrace": "".join(
                        traceback.format_exception(type(exc), exc, exc.__traceback__)
                    ),
                },
            )
        )

    def set_status(self, status: str, message: str | None = None) -> None:
        """Mark the span ``ok`` or ``error`` (an exception leaving it sets ``error``)."""
        if status == "ok":
            self.status = "ok"
        elif status == "error":
            self.status = "error"
        else:
            raise ValueError(f"span status must be 'ok' or 'error', got {status!r}")
        self.status_message = message

    def traceparent(self) -> str:
        """The W3C ``traceparent`` header naming this span as the parent."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def headers(self) -> dict[str, str]:
        """``traceparent`` (and ``baggage`` when there is some) for an outgoing call."""
        baggage = {**dict(self.baggage), "flowtrail.run_id": self.run_id}
        return {"traceparent": self.traceparent(), "baggage": format_baggage(baggage)}

    def __repr__(self) -> str:
        return f"LiveSpan(kind={self.kind!r}, name={self.name!r}, span_id={self.span_id!r})"

    # ------------------------------------------------------------------ lifecycle
    @property
    def live(self) -> LiveSpan:
        """The open span of this context: itself (a `LiveSpan` is its own `RunContext`)."""
        return self

    @property
    def overrides(self) -> dict[str, Any]:
        """Record fields this span sets on records written inside it (made on the first
        record: most spans of a busy pipeline have none)."""
        overrides = self._overrides
        if overrides is None:
            overrides = self._overrides = {
                "trace_id": self.trace_id,
                "span_id": self.span_id,
                "parent_span_id": self.parent_span_id,
                **self.names,
            }
        return overrides

    def _enter(self, context: Any, otel: bool = True) -> None:
        # The span itself is the run context of the code inside it: it has every
        # attribute of `RunContext`, so opening a span makes no second object.
        # ``otel=False``: the span mirrors one OpenTelemetry makes current itself (an
        # engine's own span, same ids), so it is not made OpenTelemetry's current span.
        self.fields = context.fields if context is not None else ()
        self._overrides = None
        self._token = current_run.set(self)
        if otel and _modules.get("opentelemetry.trace") is not None:
            # OpenTelemetry's current span is this one while it is open.
            self._otel = otel_attach(self.trace_id, self.span_id, self.sampled)
        _OPEN[self] = None
        if not _ANNOUNCER and self.root is self:
            _start_announcer()
        if self.trace._sync:
            self.trace._span_started(self)

    def _finish(self, exc: BaseException | None) -> Span | None:
        """The finished span, or None if it is not open in this process: a signal ended
        it already, or it was opened before a fork (the parent ends it)."""
        token, self._token = self._token, None
        if token is not None:
            try:
                current_run.reset(token)
            except ValueError:  # ended in another context (e.g. another task)
                pass
        if self._otel is not None:
            otel_detach(self._otel)
            self._otel = None
        if _OPEN.pop(self, _GONE) is _GONE:
            return None
        wall_ns = time.perf_counter_ns() - self._perf
        cpu_ns = time.process_time_ns() - self._cpu
        if exc is not None:
            self.record_exception(exc)
            self.status = "error"
            self.status_message = f"{type(exc).__qualname__}: {exc}"
        names = self.names
        # Positional, in `Span` field order: much cheaper than 27 keywords per span.
        return Span(
            self.run_id,
            self.trace_id,
            self.span_id,
            self.name,
            self.kind,
            self.parent_span_id,
            self.parent_run_id,
            self.start_time,
            self.trace._clock.now(),
            self.start_ns,
            self.start_ns + wall_ns,
            wall_ns / 1e6,
            self.status,
            self.status_message,
            self.attributes,
            self.events,
            names.get("workflow_name") or self.trace.workflow_name,
            names.get("job_name"),
            names.get("stage_name"),
            cpu_ns / 1e6,
            round(100.0 * cpu_ns / wall_ns, 1) if wall_ns > 0 else None,
            self.memory_start_mb,
            Memory.rss_mb(),
            Pid.value,
            threading.get_ident(),
            _HOSTNAME[0] or _hostname(),
            self.sampled,
        )


def is_open(live: LiveSpan) -> bool:
    """Whether ``live`` is open in this process (not ended, not inherited over a fork)."""
    return live in _OPEN


def open_spans() -> list[LiveSpan]:
    """The spans open in this process (every thread), newest first."""
    return list(reversed(list(_OPEN)))


def end_open_spans(signal_name: str) -> None:
    """End every open span, newest (innermost) first, as ``error`` with the
    ``interrupted`` attribute and event naming the signal that stopped the process."""
    for live in open_spans():
        live.set_attribute(INTERRUPTED, signal_name)
        live.add_event(INTERRUPTED, signal=signal_name)
        live.status = "error"
        live.status_message = f"interrupted by {signal_name}"
        live.trace._end_span(live, None)


def _forget_open_spans() -> None:
    # A forked child's copies of the parent's open spans are the parent's to end.
    _OPEN.clear()
    _ANNOUNCED.clear()
    _ANNOUNCER.clear()  # threads do not survive a fork


#: Seconds a local root span stays open before its start is stored (`announce_open_spans`).
ANNOUNCE_AFTER = 0.2
#: The announcer thread, once started in this process.
_ANNOUNCER: list[Any] = []
_ANNOUNCED: dict[LiveSpan, None] = {}


def open_span_record(live: LiveSpan) -> Span:
    """The stored form of a span that is still open: its start, status ``unset``, no
    end (``end_ns`` 0), and the host and pid that write it (`flowtrail.status`)."""
    names = live.names
    return Span(
        live.run_id,
        live.trace_id,
        live.span_id,
        live.name,
        live.kind,
        live.parent_span_id,
        live.parent_run_id,
        live.start_time,
        "",
        live.start_ns,
        0,
        0.0,
        "unset",  # a stored start, never a finished span's status
        None,
        {},
        [],
        names.get("workflow_name") or live.trace.workflow_name,
        names.get("job_name"),
        names.get("stage_name"),
        None,
        None,
        live.memory_start_mb,
        None,
        Pid.value,
        0,
        _HOSTNAME[0] or _hostname(),
        live.sampled,
    )


def announce_open_spans(min_age_s: float = ANNOUNCE_AFTER) -> int:
    """Store the start of every sampled local root span (the top span of this process in
    its run) open for ``min_age_s`` or more and not stored yet; return how many. So a run
    whose process dies without ending its spans (SIGKILL, a crash) reads as
    ``interrupted``, and one still being written as ``running``. Called by a thread of
    flowtrail's every `ANNOUNCE_AFTER` seconds: the span's own path costs nothing more."""
    now = time.perf_counter_ns()
    count = 0
    for live in list(_OPEN):
        if (
            live.root is live
            and live.sampled
            and live not in _ANNOUNCED
            and now - live._perf >= min_age_s * 1e9
        ):
            _ANNOUNCED[live] = None
            try:
                live.trace._span_open(open_span_record(live))
            except Exception:  # the announcer must outlive any one trace's trouble
                continue
            count += 1
    for live in list(_ANNOUNCED):
        if live not in _OPEN:
            _ANNOUNCED.pop(live, None)
    return count


def _start_announcer() -> None:
    from flowtrail.pipeline import start_thread

    if _ANNOUNCER:
        return
    _ANNOUNCER.append(None)

    def loop() -> None:
        wait = threading.Event().wait
        while True:
            wait(ANNOUNCE_AFTER)
            if _OPEN:
                announce_open_spans()

    try:
        _ANNOUNCER[0] = start_thread(loop, "flowtrail-open-spans")
    except RuntimeError:  # interpreter shutting down
        pass


on_fork_child(_forget_open_spans)

_HOSTNAME: list[str | None] = [None]


def _hostname() -> str:
    hostname = _HOSTNAME[0] = host_info().hostname
    return hostname


def path_to_errors(spans: list[Span]) -> list[Span]:
    """The spans of an unsampled trace worth keeping: every span that ended in error and
    all its ancestors (seed 004's minimal trace)."""
    by_id = {span.span_id: span for span in spans}
    keep: set[str] = set()
    for span in spans:
        if span.status == "error":
            current: Span | None = span
            while current is not None and current.span_id not in keep:
                keep.add(current.span_id)
                current = by_id.get(current.parent_span_id or "")
    return [span for span in spans if span.span_id in keep]


class SpanScope:
    """What ``trace.span(...)`` returns: a context manager (sync and async) and a
    decorator. Each ``with`` or call opens a new span."""

    __slots__ = ("_trace", "_kind", "_name", "_attributes", "_open")

    def __init__(
        self, trace: SpanOwner, kind: str, name: str | None, attributes: dict[str, Any]
    ) -> None:
        self._trace = trace
        self._kind = kind
        self._name = name
        self._attributes = attributes
        # The span this scope opened, or a list when it is open several times at once.
        self._open: LiveSpan | list[LiveSpan] | None = None

    def _start(self, name: str | None = None) -> LiveSpan:
        # The span shares the scope's attributes until it sets one (copy on write).
        return self._trace._start_span(
            self._kind, name or self._name or self._kind, self._attributes
        )

    def __enter__(self) -> LiveSpan:
        live = self._start()
        opened = self._open
        if opened is None:
            self._open = live
        elif isinstance(opened, list):
            opened.append(live)
        else:
            self._open = [opened, live]
        return live

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._trace._end_span(self._pop(), exc)

    def _pop(self) -> LiveSpan:
        """The span this ``with`` opened: the one open in the current context (one scope
        may be entered by several tasks or threads at once), else the last opened."""
        opened = self._open
        if not isinstance(opened, list):
            assert opened is not None, "span scope exited more often than entered"
            self._open = None
            return opened
        context = current_run.get()
        live = context.live if context is not None else None
        if live is not None and live in opened:
            opened.remove(live)  # only this context can remove its own span
            return live
        return opened.pop()

    async def __aenter__(self) -> LiveSpan:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        """Wrap ``func`` (sync or ``async def``) so that each call runs in a new span,
        named after the function unless a name was given."""
        name = self._name or func.__name__
        trace = self._trace

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                live = trace._start_span(self._kind, name, self._attributes)
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    trace._end_span(live, exc)
                    raise
                trace._end_span(live, None)
                return result

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            live = trace._start_span(self._kind, name, self._attributes)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                trace._end_span(live, exc)
                raise
            trace._end_span(live, None)
            return result

        return cast(F, wrapper)
