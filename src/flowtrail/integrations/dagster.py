"""Dagster, traced in one line (in the module that defines your assets and jobs, so that
every process Dagster starts for a run calls it too)::

    from flowtrail.integrations import dagster
    dagster.instrument()

The integration reads Dagster's event stream: a logging handler that every run's log
manager gets (`FlowtrailDagsterHandler`; `instrument` adds it to the handlers of every
Dagster instance, or name it in ``dagster.yaml`` under ``python_logs:
dagster_handler_config: handlers:``, Dagster's own extension point):

- ``RUN_START`` .. ``RUN_SUCCESS``/``RUN_FAILURE``/``RUN_CANCELED``: a ``workflow`` span
  named after the job; its run id is Dagster's run id (a re-execution's parent run id is
  kept as the parent run id).
- ``STEP_START``/``STEP_RESTARTED`` .. ``STEP_SUCCESS``/``STEP_FAILURE``/
  ``STEP_UP_FOR_RETRY``: a ``stage`` span per op or asset step and attempt
  (``dagster.step_key``, ``dagster.attempt``), in error with the step's error (type,
  message, stack) when it fails or is up for retry. Steps run in other processes (the
  multiprocess executor) join the run's span: its trace and span ids are derived from the
  run id.
- ``context.log`` messages: records in their step's span (or the run's); asset
  materializations and outputs are events of the step's span.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from typing import Any

import msgspec

from flowtrail.context import current_run
from flowtrail.integrations._common import (
    LogBridge,
    Patches,
    TraceSource,
    current_trace,
    require,
)
from flowtrail.records import SpanEvent
from flowtrail.spans import LiveSpan
from flowtrail.status import RETRIED_ATTEMPT
from flowtrail.trace import Trace

__all__ = [
    "FlowtrailDagsterHandler",
    "current_trace",
    "instrument",
    "instrumented",
    "run_span_ids",
    "uninstrument",
]

_patches = Patches()
_bridge = LogBridge()
_source: list[TraceSource] = []
_lock = threading.Lock()
#: Traces by Dagster run id (this process).
_traces: dict[str, Trace] = {}
#: Open run spans by run id, open step spans by (run id, step key), attempts per step.
_runs: dict[str, LiveSpan] = {}
_steps: dict[tuple[str, str], LiveSpan] = {}
_attempts: dict[tuple[str, str], int] = {}
_RUN_ENDS = {"PIPELINE_SUCCESS": None, "PIPELINE_FAILURE": "error", "PIPELINE_CANCELED": "error"}
_ATTEMPT = re.compile(r"attempt # (\d+)")
_STEP_EVENTS = {
    "ASSET_MATERIALIZATION": "asset_materialization",
    "STEP_OUTPUT": "output",
    "ASSET_CHECK_EVALUATION": "asset_check",
}


def run_span_ids(run_id: str) -> tuple[str, str]:
    """The trace id and the workflow span id of a Dagster run, derived from its run id so
    that every process of the run agrees on them without talking."""
    digest = hashlib.sha256(f"flowtrail-dagster:{run_id}".encode()).hexdigest()
    return digest[:32], digest[32:48]


class FlowtrailDagsterHandler(logging.Handler):
    """A logging handler for Dagster's log manager: turns a run's events into spans and
    its log messages into records (see the module docstring). Usable from ``dagster.yaml``::

        python_logs:
          dagster_handler_config:
            handlers:
              flowtrail:
                class: flowtrail.integrations.dagster.FlowtrailDagsterHandler
    """

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None)
        if not isinstance(meta, dict) or not meta.get("run_id"):
            return
        try:
            event = meta.get("dagster_event")
            if event is None:
                _log(meta, record)
            else:
                _event(meta, event, record)
        except Exception:
            self.handleError(record)


def instrument(*, logs: bool = True, **trace_options: Any) -> None:
    """Trace every Dagster run of this process from now on (`FlowtrailDagsterHandler` on
    the handlers of every Dagster instance). ``trace_options`` (``handlers=``, ``extras=``,
    settings) make the traces, as for `flowtrail.get_trace`. With ``logs`` (the default),
    stdlib records written inside a step go to its trace too. Needs
    ``flowtrail[dagster]``."""
    require("dagster", "dagster")
    instance_mod = require("dagster._core.instance", "dagster")
    uninstrument()
    _source.append(TraceSource("dagster", None, trace_options))
    owner = next(
        (c for c in instance_mod.DagsterInstance.__mro__ if "get_handlers" in vars(c)), None
    )
    if owner is None:
        raise RuntimeError("this Dagster version has no DagsterInstance.get_handlers")
    _patches.replace(owner, "get_handlers", _wrap_get_handlers)
    if logs:
        _bridge.want(None)


def uninstrument() -> None:
    """Stop tracing Dagster runs."""
    _patches.undo()
    _bridge.remove()
    _source.clear()


def instrumented() -> bool:
    """Whether `instrument` is in effect."""
    return bool(_patches)


def _wrap_get_handlers(original: Any) -> Any:
    def get_handlers(self: Any) -> Any:
        handlers = list(original(self))
        if not any(isinstance(h, FlowtrailDagsterHandler) for h in handlers):
            handlers.append(FlowtrailDagsterHandler())
        return handlers

    return get_handlers


# ---------------------------------------------------------------- traces and spans
def _trace(run_id: str, meta: dict[str, Any]) -> Trace:
    trace = _traces.get(run_id)
    if trace is None:
        with _lock:
            trace = _traces.get(run_id)
            if trace is None:
                if len(_traces) > 1024:
                    _traces.clear()
                trace_id, span_id = run_span_ids(run_id)
                tags = meta.get("job_tags") or {}
                source = _source[0] if _source else TraceSource("dagster", None, {})
                trace = _traces[run_id] = source.new(
                    run_id,
                    tags.get("dagster/parent_run_id"),
                    workflow_name=meta.get("job_name"),
                    traceparent=f"00-{trace_id}-{span_id}-01",
                )
    return trace


def _open(trace: Trace, kind: str, name: str, attributes: dict[str, Any], root: bool) -> LiveSpan:
    """A span whose parent is the run's span (by its derived id), whatever the context."""
    live = LiveSpan(trace, kind, name, attributes, None, None if root else trace._remote)
    if root:
        live.span_id = run_span_ids(trace.run_id)[1]
    live._enter(current_run.get())
    return live


def _fail(trace: Trace, live: LiveSpan, error: Any, fallback: str) -> None:
    """End-of-span error from Dagster's serialized error: status, exception event and an
    exception record in the span."""
    inner = error
    while inner is not None and getattr(inner, "cause", None) is not None:
        inner = inner.cause
    kind = (getattr(inner, "cls_name", None) or "Error") if inner is not None else "Error"
    message = (getattr(inner, "message", None) or fallback).strip()
    if message.startswith(f"{kind}: "):
        message = message[len(kind) + 2 :]
    stack = "".join(getattr(error, "stack", None) or []) if error is not None else ""
    if inner is not None and inner is not error:
        stack += "".join(getattr(inner, "stack", None) or [])
    live.events.append(
        SpanEvent(
            name="exception",
            time=trace._clock.now(),
            time_ns=live.now_ns(),
            level="exception",
            attributes={
                "exception.type": kind,
                "exception.message": message,
                "exception.stacktrace": stack,
            },
        )
    )
    live.set_status("error", f"{kind}: {message}")
    record = trace._record_at(
        "exception",
        f"{live.kind} {live.name} failed: {kind}: {message}",
        None,
        0,
        exception_type=kind,
        exception_message=message,
        stack_trace=stack,
    )
    trace._submit(msgspec.structs.replace(record, **live.overrides))


def _event(meta: dict[str, Any], event: Any, record: logging.LogRecord) -> None:
    run_id: str = meta["run_id"]
    kind = getattr(event, "event_type_value", None) or ""
    step_key = meta.get("step_key") or getattr(event, "step_key", None)
    if kind == "PIPELINE_START":
        _bridge.ensure()
        trace = _trace(run_id, meta)
        name = meta.get("job_name") or "dagster"
        _runs[run_id] = _open(trace, "workflow", name, {"dagster.run_id": run_id}, True)
    elif kind in _RUN_ENDS:
        live = _runs.pop(run_id, None)
        if live is not None:
            trace = _trace(run_id, meta)
            live.set_attribute("dagster.status", kind.replace("PIPELINE_", ""))
            if _RUN_ENDS[kind]:
                live.set_status("error", getattr(event, "message", None) or kind)
            trace._end_span(live, None)
            for key in [k for k in _attempts if k[0] == run_id]:
                del _attempts[key]
    elif kind in ("STEP_START", "STEP_RESTARTED") and step_key:
        _bridge.ensure()  # a step process of the multiprocess executor starts here
        trace = _trace(run_id, meta)
        attempt = _attempts.get((run_id, step_key), 0) + 1
        # Each attempt may run in a process of its own: the restart message numbers it.
        numbered = _ATTEMPT.search(getattr(event, "message", None) or "")
        if kind == "STEP_RESTARTED" and numbered is not None:
            attempt = int(numbered.group(1))
        _attempts[run_id, step_key] = attempt
        attributes = {"dagster.step_key": step_key, "dagster.attempt": attempt}
        if meta.get("op_name"):
            attributes["dagster.op_name"] = meta["op_name"]
        _steps[run_id, step_key] = _open(trace, "stage", step_key, attributes, False)
    elif kind in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_UP_FOR_RETRY", "STEP_SKIPPED"):
        live = _steps.pop((run_id, step_key or ""), None)
        if live is None:
            return
        trace = _trace(run_id, meta)
        live.set_attribute("dagster.status", kind.replace("STEP_", ""))
        if kind in ("STEP_FAILURE", "STEP_UP_FOR_RETRY"):
            data = getattr(event, "event_specific_data", None)
            _fail(trace, live, getattr(data, "error", None), getattr(event, "message", "") or kind)
            if kind == "STEP_UP_FOR_RETRY":
                live.set_attribute(RETRIED_ATTEMPT, f"{run_id}:{step_key}")
        trace._end_span(live, None)
    elif kind in _STEP_EVENTS:
        live = _steps.get((run_id, step_key or "")) or _runs.get(run_id)
        if live is not None:
            live.add_event(_STEP_EVENTS[kind], message=getattr(event, "message", "") or "")


def _log(meta: dict[str, Any], record: logging.LogRecord) -> None:
    """A ``context.log`` message: a record in its step's span (else the run's)."""
    run_id: str = meta["run_id"]
    live = _steps.get((run_id, meta.get("step_key") or "")) or _runs.get(run_id)
    trace = live.trace if live is not None else _trace(run_id, meta)
    assert isinstance(trace, Trace)
    message = meta.get("orig_message")
    if not isinstance(message, str):
        message = record.getMessage()
    plain = logging.LogRecord(
        record.name, record.levelno, record.pathname, record.lineno, message, (), record.exc_info
    )
    plain.process, plain.thread = record.process, record.thread
    token = current_run.set(live) if live is not None else None
    try:
        trace._log_record(plain)
    finally:
        if token is not None:
            current_run.reset(token)
