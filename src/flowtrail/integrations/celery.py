"""Celery, traced in one line (in the module that makes the app, so workers run it too)::

    from flowtrail.integrations import celery
    celery.instrument()

Everything goes through Celery's signals, nothing is patched:

- ``before_task_publish``: a task sent (``.delay()``, ``.apply_async()``, a canvas) from
  inside a span or a ``with get_trace()`` block carries W3C ``traceparent`` and ``baggage``
  (with the flowtrail run id) in its message headers. A retry keeps the headers of the
  execution it retries, so every attempt has the same parent.
- ``task_prerun``/``task_postrun``: each execution of a task is a ``task`` span named after
  the task, with ``celery.task_id``, ``celery.retries``, ``celery.args_size`` (characters
  of the arguments' repr), ``celery.queue`` and, when it ends, ``celery.state``. It
  continues the trace and the run of the code that sent it (the parent span is the
  sender's); a task sent from outside any trace starts a run whose id is its task id.
- ``task_retry``/``task_failure``: the execution ends in error with the retry's reason or
  the exception (type, message, stack), so a retry that succeeds reads as "ok (retried)"
  and a failure as the run's failure.
- ``worker_process_init``/``worker_process_shutdown``/``worker_shutdown``: a prefork child
  forgets the parent's open executions and flushes its records before it exits.
- ``after_setup_logger``/``after_setup_task_logger``: the worker's loggers and task loggers
  (``get_task_logger``) are bridged: records written inside a task carry its run and span.

Eager tasks (``task_always_eager``, ``.apply()``) run in the caller's span.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from flowtrail.context import TraceParent, current_run, parse_baggage, parse_traceparent
from flowtrail.integrations._common import (
    LogBridge,
    TraceSource,
    current_trace,
    open_span,
    require,
)
from flowtrail.pipeline import flush_all
from flowtrail.spans import LiveSpan
from flowtrail.status import RETRIED_ATTEMPT
from flowtrail.stdlib import FlowtrailLogHandler
from flowtrail.trace import Trace

__all__ = ["TaskRetried", "current_trace", "instrument", "instrumented", "uninstrument"]

#: Seconds a worker process may take to flush its records when it stops.
SHUTDOWN_FLUSH = 10.0
_RUN_KEY = "flowtrail.run_id"

_source: list[TraceSource] = []
_connected: list[tuple[Any, Any]] = []
_bridge = LogBridge()
#: Loggers the worker set up, and the bridge handler put on each.
_bridged: list[tuple[logging.Logger, logging.Handler]] = []
#: Executions in progress in this process: task id -> (trace, span, context token).
_running: dict[str, tuple[Trace, LiveSpan, contextvars.Token[Any] | None]] = {}
#: Traces by (run id, parent run id, trace id), oldest first.
_traces: dict[tuple[str, str | None, str | None], Trace] = {}
_TRACE_CACHE = 1024
#: Parsed (traceparent, baggage) headers, by their text.
_parsed: dict[
    tuple[str | None, str | None], tuple[TraceParent | None, tuple[tuple[str, str], ...]]
] = {}
#: Why an execution failed or is retried (task_failure / task_retry), until it ends.
_failed: dict[str, BaseException] = {}
#: The id of the task executing in this context (its retries keep their headers).
_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flowtrail_celery_task", default=None
)


def instrument(
    trace: Trace | None = None,
    *,
    logs: bool = True,
    **trace_options: Any,
) -> None:
    """Trace every Celery task execution of this process, and link the tasks it sends.

    The traces of executions are made with ``trace_options`` (``handlers=``, ``extras=``,
    settings) as by `flowtrail.get_trace`; ``trace`` (or an open span or ``with
    get_trace()`` block) is what tasks sent from outside a task continue. With ``logs``
    (the default) the worker's loggers are bridged. Calling it again replaces the
    options. Needs ``flowtrail[celery]``."""
    signals = require("celery.signals", "celery")
    uninstrument()
    _source.append(TraceSource("celery", trace, trace_options))
    receivers = [
        (signals.before_task_publish, _before_publish),
        (signals.task_prerun, _prerun),
        (signals.task_postrun, _postrun),
        (signals.task_retry, _retry),
        (signals.task_failure, _failure),
        (signals.worker_process_init, _process_init),
        (signals.worker_process_shutdown, _process_shutdown),
        (signals.worker_shutdown, _process_shutdown),
    ]
    if logs:
        receivers += [
            (signals.after_setup_logger, _setup_logger),
            (signals.after_setup_task_logger, _setup_logger),
        ]
        _bridge.want(None)  # a process that runs tasks without a worker's logging setup
    for signal, receiver in receivers:
        signal.connect(receiver, weak=False)
        _connected.append((signal, receiver))


def uninstrument() -> None:
    """Disconnect every receiver and take the log bridges away."""
    while _connected:
        signal, receiver = _connected.pop()
        signal.disconnect(receiver)
    for logger, handler in _bridged:
        logger.removeHandler(handler)
    _bridged.clear()
    _bridge.remove()
    _source.clear()
    _traces.clear()


def instrumented() -> bool:
    """Whether `instrument` is in effect."""
    return bool(_connected)


# ---------------------------------------------------------------- sending
def _before_publish(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:  # protocol 1 has no headers: nothing to carry
        return
    if headers.get("id") is not None and headers.get("id") == _task_id.get():
        return  # a retry of the running task: it keeps the parent of the first attempt
    live = open_span()
    if live is not None:
        headers.update(live.headers())
        return
    trace = current_trace() or (_source[0].trace if _source else None)
    if trace is not None:
        headers.update(trace.headers())


# ---------------------------------------------------------------- executing
def _header(request: Any, name: str) -> str | None:
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value if isinstance(value, str) else None


def _size(args: Any, kwargs: Any) -> int:
    try:
        return len(repr(args or ())) + len(repr(kwargs or {}))
    except Exception:  # a repr that fails is the task's business, not the trace's
        return -1


def _prerun(
    sender: Any = None,
    task_id: str | None = None,
    task: Any = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    if task_id is None or task is None:
        return
    _bridge.ensure()
    request = getattr(task, "request", None)
    source = _source[0] if _source else TraceSource("celery", None, {})
    trace: Trace | None = None
    if getattr(request, "is_eager", False):
        trace = source.enclosing()
    remote: TraceParent | None = None
    if trace is None:
        remote, baggage = _context(_header(request, "traceparent"), _header(request, "baggage"))
        run_id = dict(baggage).get(_RUN_KEY)
        parent_run_id = None
        if run_id is None:
            run_id = task_id
            parent_run_id = getattr(request, "parent_id", None)
        trace = _trace_for(source, run_id, parent_run_id, remote, baggage)
    delivery = getattr(request, "delivery_info", None) or {}
    attributes = {
        "celery.task_id": task_id,
        "celery.retries": getattr(request, "retries", 0) or 0,
        "celery.args_size": _size(args, kwargs),
    }
    queue = delivery.get("routing_key")
    if queue:
        attributes["celery.queue"] = queue
    name = getattr(task, "name", None) or str(sender)
    if remote is None:
        live = trace._start_span("task", name, attributes)
    else:  # the sender's span is the parent, whichever task of the run made the trace
        live = LiveSpan(trace, "task", name, attributes, None, remote)
        live._enter(current_run.get())
    _running[task_id] = (trace, live, _task_id.set(task_id))


def _context(
    traceparent: str | None, baggage: str | None
) -> tuple[TraceParent | None, tuple[tuple[str, str], ...]]:
    """The parsed headers (the tasks of a run carry the same ones: parsed once)."""
    key = (traceparent, baggage)
    found = _parsed.get(key)
    if found is None:
        if len(_parsed) >= _TRACE_CACHE:
            _parsed.pop(next(iter(_parsed)), None)
        found = _parsed[key] = (parse_traceparent(traceparent), parse_baggage(baggage))
    return found


def _trace_for(
    source: TraceSource,
    run_id: str,
    parent_run_id: str | None,
    remote: TraceParent | None,
    baggage: tuple[tuple[str, str], ...],
) -> Trace:
    """The trace of a run in this process: made once per run and trace id (making one
    costs more than a span), shared by the tasks of the run it executes."""
    key = (run_id, parent_run_id, remote.trace_id if remote is not None else None)
    trace = _traces.get(key)
    if trace is None:
        if len(_traces) >= _TRACE_CACHE:
            _traces.pop(next(iter(_traces)), None)
        trace = _traces[key] = source.new(
            run_id,
            parent_run_id,
            workflow_name=None,
            traceparent=remote.header() if remote is not None else None,
            baggage={k: v for k, v in baggage if k != _RUN_KEY},
        )
    return trace


def _postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    entry = _running.pop(task_id or "", None)
    if entry is None:
        return
    trace, live, token = entry
    if token is not None:
        try:
            _task_id.reset(token)
        except ValueError:  # ended in another context
            pass
    if state:
        live.set_attribute("celery.state", state)
    if state == "RETRY":  # its retry may run after other tasks of the same parent
        live.set_attribute(RETRIED_ATTEMPT, task_id)
    exc = _failed.pop(task_id or "", None)
    if exc is None and state in ("FAILURE", "RETRY", "REVOKED"):
        exc = RuntimeError(f"task ended in state {state}")
    trace._end_span(live, exc)


class TaskRetried(Exception):
    """The reason of a retry that was not an exception (``self.retry()`` with none)."""


def _retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    entry = _running.get(task_id or "")
    if entry is None or task_id is None:
        return
    live = entry[1]
    live.add_event("retry", reason=str(reason))
    failure = reason if isinstance(reason, BaseException) else TaskRetried(str(reason))
    # The reason of a `self.retry(exc=...)` is the task's exception; Celery's own Retry
    # carries it as .exc.
    cause = getattr(failure, "exc", None)
    _failed[task_id] = cause if isinstance(cause, BaseException) else failure


def _failure(task_id: str | None = None, exception: Any = None, **_: Any) -> None:
    if task_id in _running and isinstance(exception, BaseException):
        _failed[task_id] = exception


# ---------------------------------------------------------------- worker processes
def _process_init(**_: Any) -> None:
    # A prefork child starts with the parent's state: its executions are not ours.
    _running.clear()
    _failed.clear()
    _traces.clear()


def _process_shutdown(**_: Any) -> None:
    for trace, live, _token in list(_running.values()):
        live.add_event("worker_shutdown")
        trace._end_span(live, RuntimeError("worker stopped during the task"))
    _running.clear()
    flush_all(SHUTDOWN_FLUSH)


def _setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is None or any(isinstance(h, FlowtrailLogHandler) for h in logger.handlers):
        return
    handler = FlowtrailLogHandler()
    logger.addHandler(handler)
    _bridged.append((logger, handler))
