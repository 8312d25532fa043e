"""Prefect, traced in one line::

    from flowtrail.integrations import prefect
    prefect.instrument()

Built on Prefect's own OpenTelemetry spans (Prefect 3 makes one per flow run and task
run, with its states as events): flowtrail adds a span processor to the global OpenTelemetry
``TracerProvider`` when it is the SDK's, else gives Prefect's run telemetry a private one
(the global provider is left to you).

- A flow run is a ``workflow`` span named after the flow, a task run a ``stage`` span named
  after the task, nested as Prefect nests them, with the same trace and span ids as
  Prefect's OpenTelemetry spans. A flow run's id is its flowtrail run id (a subflow's parent
  run id is its parent flow run's); ``prefect.run.id`` names each run.
- States (``Running``, ``AwaitingRetry``, ``Retrying``, ``Completed``, ``Failed`` ...) and
  exceptions are span events; ``prefect.state`` is the final one, ``prefect.attempts`` the
  number of runs of the task. A task that retried gets one ``attempt`` span per try under
  its span, the failed ones in error with their exception.
- Records of Prefect's run loggers (``get_run_logger()``) and stdlib records written in a
  task go to its span (found by the record's run id, whatever thread wrote it).
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
import threading
from types import FrameType
from typing import Any

import msgspec

from flowtrail.context import current_run, new_span_id
from flowtrail.integrations._common import (
    LogBridge,
    Patches,
    TraceSource,
    current_trace,
    open_span,
    require,
    trace_of,
)
from flowtrail.records import Span, SpanEvent
from flowtrail.spans import LiveSpan
from flowtrail.stdlib import FlowtrailLogHandler
from flowtrail.trace import Trace

__all__ = ["current_trace", "instrument", "instrumented", "uninstrument"]

_patches = Patches()
_source: list[TraceSource] = []
_lock = threading.Lock()
#: Open spans by OpenTelemetry span id (hex) and by Prefect run id.
_by_span: dict[str, LiveSpan] = {}
_by_run: dict[str, LiveSpan] = {}
#: Processors added to SDK tracer providers (one per provider, for the process's life:
#: OpenTelemetry cannot remove a processor; an inactive one does nothing).
_added: dict[int, Any] = {}
_STARTS = frozenset({"Running", "Retrying"})
#: How far up from the span processor the run engine that starts a span is looked for.
_ENGINE_FRAMES = 12


class _Discard:
    """An event list that keeps nothing."""

    def append(self, item: Any) -> None:
        pass


class _Ended:
    """The context of records a run's logger writes after its span ended ("Finished in
    state ..."): they carry the span's ids, and are not attached to the written span."""

    __slots__ = ("trace", "overrides", "sampled", "events", "_epoch_ns", "fields")

    def __init__(self, live: LiveSpan) -> None:
        self.trace = live.trace
        self.overrides = live.overrides
        self.sampled = live.sampled
        self.events = _Discard()
        self._epoch_ns = live._epoch_ns
        self.fields = live.fields

    @property
    def live(self) -> _Ended:
        return self


#: Runs whose span ended, for the records their logger still writes (newest kept).
_ended: dict[str, _Ended] = {}
_ENDED_KEPT = 256


class _RunLogHandler(FlowtrailLogHandler):
    """The stdlib bridge, that puts a Prefect run logger's record in the span of the run
    it names (``task_run_id``/``flow_run_id``) whatever thread or task wrote it."""

    def emit(self, record: logging.LogRecord) -> None:
        run_id = getattr(record, "task_run_id", None) or getattr(record, "flow_run_id", None)
        live: Any = None
        if run_id is not None:
            live = _by_run.get(str(run_id)) or _ended.get(str(run_id))
        if live is None:
            super().emit(record)
            return
        token = current_run.set(live)
        try:
            super().emit(record)
        finally:
            current_run.reset(token)


_bridge = LogBridge(_RunLogHandler)


class _Processor:
    """An OpenTelemetry span processor for the spans of Prefect's tracer."""

    def __init__(self) -> None:
        self.active = False

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if not self.active or getattr(span.instrumentation_scope, "name", None) != "prefect":
            return
        try:
            _start(span)
        except Exception:  # tracing must never break a flow run
            logging.getLogger("flowtrail").debug("prefect span start failed", exc_info=True)

    def on_end(self, span: Any) -> None:
        if not self.active or getattr(span.instrumentation_scope, "name", None) != "prefect":
            return
        try:
            _end(span)
        except Exception:
            logging.getLogger("flowtrail").debug("prefect span end failed", exc_info=True)

    def _on_ending(self, span: Any) -> None:  # newer SDKs call it
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def instrument(*, logs: bool = True, **trace_options: Any) -> None:
    """Trace every Prefect flow run and task run of this process from now on.

    ``trace_options`` (``handlers=``, ``extras=``, settings) make the traces, as for
    `flowtrail.get_trace`. With ``logs`` (the default) Prefect's run loggers and stdlib
    records written in a run are bridged. Needs ``flowtrail[prefect]``."""
    require("prefect", "prefect")
    telemetry = require("prefect.telemetry.run_telemetry", "prefect")
    sdk = require("opentelemetry.sdk.trace", "prefect")
    otel = require("opentelemetry.trace", "prefect")
    uninstrument()
    _source.append(TraceSource("prefect", None, trace_options))
    provider = otel.get_tracer_provider()
    if not isinstance(provider, sdk.TracerProvider):
        # No SDK provider set: Prefect's telemetry gets a private one, the global stays.
        provider = _added.get(0)
        if provider is None:
            provider = _added[0] = sdk.TracerProvider()
        private = provider

        def get_tracer(name: str, version: str | None = None, *args: Any, **kwargs: Any) -> Any:
            return private.get_tracer(name, version)

        _patches.replace(telemetry, "get_tracer", lambda original: get_tracer)
    processor = _added.get(id(provider))
    if processor is None:
        processor = _added[id(provider)] = _Processor()
        provider.add_span_processor(processor)
    processor.active = True
    if logs:
        _bridge.want(None)


def uninstrument() -> None:
    """Stop tracing Prefect runs."""
    for processor in _added.values():
        if isinstance(processor, _Processor):
            processor.active = False
    _patches.undo()
    _bridge.remove()
    _source.clear()


def instrumented() -> bool:
    """Whether `instrument` is in effect."""
    return any(isinstance(p, _Processor) and p.active for p in _added.values())


# ---------------------------------------------------------------- spans
def _hex(number: int, size: int) -> str:
    return f"{number:0{size}x}"


def _names(span: Any, run_type: str) -> str:
    """The flow's or task's name (Prefect's span is named after the run): from the run
    engine that starts the span, a few frames up (once per run)."""
    attribute, run_attribute = ("task", "task_run") if run_type == "task" else ("flow", "flow_run")
    frame: FrameType | None = sys._getframe(2)
    for _ in range(_ENGINE_FRAMES):
        if frame is None:
            break
        engine = frame.f_locals.get("self")
        run = getattr(engine, run_attribute, None)
        if run is not None and getattr(run, "name", None) == span.name:
            named = getattr(getattr(engine, attribute, None), "name", None)
            if isinstance(named, str) and named:
                return named
        frame = frame.f_back
    name = str(span.name)
    if run_type == "task" and "-" in name:
        return name.rsplit("-", 1)[0]  # task runs are named <task>-<suffix>
    return name


def _start(span: Any) -> None:
    _bridge.ensure()
    attributes = {k: v for k, v in dict(span.attributes or {}).items()}
    run_type = str(attributes.get("prefect.run.type") or "task")
    prefect_id = str(attributes.get("prefect.run.id") or "")
    if isinstance(attributes.get("prefect.tags"), tuple):
        attributes["prefect.tags"] = list(attributes["prefect.tags"])
    context = span.get_span_context()
    trace_id, span_id = _hex(context.trace_id, 32), _hex(context.span_id, 16)
    parent_id = _hex(span.parent.span_id, 16) if span.parent is not None else None
    parent = _by_span.get(parent_id) if parent_id else None
    if parent is None:
        parent = open_span()  # a run started inside the user's own span
    name = _names(span, run_type)
    source = _source[0] if _source else TraceSource("prefect", None, {})
    if run_type == "flow" or parent is None:
        trace = source.new(
            prefect_id or None,
            parent.run_id if parent is not None else None,
            workflow_name=name if run_type == "flow" else None,
            traceparent=f"00-{trace_id}-{parent_id or span_id}-01",
        )
    else:
        trace = trace_of(parent)
    kind = "workflow" if run_type == "flow" else "stage"
    live = LiveSpan(trace, kind, name, attributes, parent, None)
    live.span_id = span_id
    if parent is None and parent_id is not None:
        live.parent_span_id = parent_id  # a parent outside this process (labels)
    # Prefect makes its own span (same ids) OpenTelemetry's current one.
    live._enter(current_run.get(), otel=False)
    with _lock:
        _by_span[span_id] = live
        if prefect_id:
            _by_run[prefect_id] = live


def _iso(ns: int, trace: Trace) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9, trace._clock.tz).isoformat(timespec="microseconds")


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(getattr(value, "value", value))


def _end(span: Any) -> None:
    span_id = _hex(span.get_span_context().span_id, 16)
    with _lock:
        live = _by_span.pop(span_id, None)
        if live is None:
            return
        prefect_id = str((span.attributes or {}).get("prefect.run.id") or "")
        if _by_run.get(prefect_id) is live:
            del _by_run[prefect_id]
            if len(_ended) >= _ENDED_KEPT:
                del _ended[next(iter(_ended))]
            _ended[prefect_id] = _Ended(live)
    trace = trace_of(live)
    events: list[SpanEvent] = []
    for event in span.events:
        attributes = {k: _plain(v) for k, v in dict(event.attributes or {}).items()}
        events.append(
            SpanEvent(
                name=event.name,
                time=_iso(event.timestamp, trace),
                time_ns=event.timestamp,
                level="exception" if event.name == "exception" else None,
                attributes=attributes,
            )
        )
    live.events.extend(events)
    states = [e for e in events if "prefect.state.name" in e.attributes]
    if states:
        live.set_attribute("prefect.state", states[-1].attributes["prefect.state.name"])
    starts = [e for e in states if e.attributes["prefect.state.name"] in _STARTS]
    live.set_attribute("prefect.attempts", len(starts))
    status = getattr(span, "status", None)
    if status is not None and getattr(status.status_code, "name", "") == "ERROR":
        live.set_status("error", status.description or "run failed")
    finished = trace._end_span(live, None)
    if finished is not None and len(starts) > 1:
        for attempt in _attempts(finished, states, events, span.end_time or 0, trace):
            trace._submit(attempt)


def _attempts(
    task: Span, states: list[SpanEvent], events: list[SpanEvent], end_ns: int, trace: Trace
) -> list[Span]:
    """One finished span per run of a task that retried: from each ``Running``/``Retrying``
    state to the next state (or the end), in error when an exception was recorded in it."""
    made: list[Span] = []
    number = 0
    for index, state in enumerate(states):
        if state.attributes["prefect.state.name"] not in _STARTS:
            continue
        number += 1
        following = states[index + 1] if index + 1 < len(states) else None
        stop = following.time_ns if following is not None else end_ns
        inside = [e for e in events if e.name == "exception" and state.time_ns <= e.time_ns <= stop]
        failed = bool(inside)
        message = None
        if inside:
            last = inside[-1].attributes
            message = f"{last.get('exception.type')}: {last.get('exception.message')}"
        end_state = following.attributes["prefect.state.name"] if following else None
        made.append(
            msgspec.structs.replace(
                task,
                span_id=new_span_id(),
                kind="attempt",
                parent_span_id=task.span_id,
                start_time=_iso(state.time_ns, trace),
                end_time=_iso(stop, trace),
                start_ns=state.time_ns,
                end_ns=stop,
                duration_ms=(stop - state.time_ns) / 1e6,
                status="error" if failed else "ok",
                status_message=message,
                attributes={"attempt": number, "prefect.state": end_state},
                events=inside,
                cpu_time_ms=None,
                cpu_percent=None,
            )
        )
    return made
