"""ddeutil-workflow, traced in one line::

    from flowtrail.integrations import ddeutil
    ddeutil.instrument()

- Spans: each run of a ``Workflow`` is a ``workflow`` span, each run of one of its jobs a
  ``job`` span, each stage a ``stage`` span, nested as they run, across the thread pools
  ddeutil runs parallel jobs, strategies and stages in (the context is carried into
  them). A job or stage with ``retry`` gets one ``attempt`` span per try. A span's status
  follows ddeutil's result: ``FAILED`` and ``CANCEL`` are errors, ``SKIP`` is ok with the
  attribute ``ddeutil.status``.
- Run ids: every span and record carries ddeutil's own run id and parent run id (a
  workflow's jobs and stages are runs whose parent is the workflow's run), so
  ``flowtrail show <workflow run id>`` shows the whole workflow.
- Records: ddeutil's own trace records (``[WORKFLOW]: ...``, ``[JOB]: ...``,
  ``[STAGE]: ...``) go to flowtrail's handlers instead of ddeutil's, in the span they
  were written in; stdlib `logging` records written inside a stage do too.
- Settings: ddeutil's ``WORKFLOW_LOG_TRACE_HANDLERS`` (handlers, in the seeds' dict form),
  ``WORKFLOW_LOG_TIMEZONE`` (time zone), ``WORKFLOW_LOG_DEBUG_MODE`` (``false``: level
  info), ``WORKFLOW_LOG_FORMAT``, ``WORKFLOW_LOG_FORMAT_FILE`` and
  ``WORKFLOW_LOG_DATETIME_FORMAT`` are used for the settings that neither ``instrument``'s
  arguments, ``FLOWTRAIL_*`` variables nor a flowtrail config file set.

ddeutil-workflow has no hooks: the integration wraps methods of its classes (``_execute``
of workflows, jobs and stages, ``process`` for attempts, ``Trace.emit``) and the thread
pool class its modules use; `uninstrument` puts them back.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flowtrail.config import read_config_files, read_env
from flowtrail.integrations._common import (
    LogBridge,
    Patches,
    TraceSource,
    current_trace,
    open_span,
    require,
    trace_of,
)
from flowtrail.spans import LiveSpan
from flowtrail.trace import Trace

__all__ = ["current_trace", "instrument", "instrumented", "settings_from_ddeutil", "uninstrument"]

_patches = Patches()
_bridge = LogBridge()
_source: list[TraceSource] = []
#: flowtrail traces by ddeutil (run id, parent run id): ddeutil makes a trace object for
#: every step; flowtrail's are made once per run.
_traces: dict[tuple[str, str | None], Trace] = {}
_traces_lock = threading.Lock()
_TRACE_CACHE = 4096
#: The object whose span is open in this context (a subclass calling its parent's
#: ``_execute`` stays in the same span).
_current: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "flowtrail_ddeutil_current", default=None
)
#: Result statuses that end a span in error.
_ERROR_STATUSES = frozenset({"FAILED", "CANCEL"})
#: ddeutil's environment variables with a flowtrail meaning: variable -> setting.
DDEUTIL_SETTINGS = {
    "WORKFLOW_LOG_TRACE_HANDLERS": "trace_handlers",
    "WORKFLOW_LOG_TIMEZONE": "log_tz",
    "WORKFLOW_LOG_TZ": "log_tz",
    "WORKFLOW_LOG_DEBUG_MODE": "log_level",
    "WORKFLOW_LOG_FORMAT": "log_format",
    "WORKFLOW_LOG_FORMAT_FILE": "log_format_file",
    "WORKFLOW_LOG_DATETIME_FORMAT": "log_datetime_format",
}


class ContextThreadPool(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run in a copy of the submitter's context, so
    spans opened in them nest under the span that submitted them."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def settings_from_ddeutil(
    explicit: dict[str, Any] | None = None, environ: Any = None
) -> dict[str, Any]:
    """The flowtrail settings that ddeutil's ``WORKFLOW_LOG_*`` variables give, for the
    settings not set in ``explicit`` (``instrument``'s arguments), ``FLOWTRAIL_*``
    variables or a flowtrail config file."""
    environ = os.environ if environ is None else environ
    taken = set(explicit or {}) | set((explicit or {}).get("extras") or {})
    if "handlers" in taken:
        taken.add("trace_handlers")
    if environ is os.environ:
        taken |= set(read_env())
    taken |= {key for _, layer in read_config_files() for key in layer}
    found: dict[str, Any] = {}
    for variable, setting in DDEUTIL_SETTINGS.items():
        raw = environ.get(variable)
        if raw is None or setting in taken or setting in found:
            continue
        if setting == "trace_handlers":
            found[setting] = json.loads(raw)
        elif setting == "log_level":
            if raw.strip().lower() in ("false", "0", "no", "off", "n", "f"):
                found[setting] = "info"
        else:
            found[setting] = raw
    return found


def instrument(
    *,
    logs: bool = True,
    logger: str | None = None,
    **trace_options: Any,
) -> None:
    """Trace every ddeutil-workflow workflow, job and stage run from now on, and send
    ddeutil's own trace records to flowtrail's handlers.

    ``trace_options`` (``handlers=``, ``extras=``, settings) make the traces, as for
    `flowtrail.get_trace`; ddeutil's ``WORKFLOW_LOG_*`` variables fill in the settings
    nobody set for flowtrail (`settings_from_ddeutil`). With ``logs`` (the default),
    stdlib records (of ``logger``, default the root logger) written inside a stage go to
    its trace. Calling it again replaces the options. Needs ``flowtrail[ddeutil]``."""
    require("ddeutil.workflow", "ddeutil")
    workflow_mod = require("ddeutil.workflow.workflow", "ddeutil")
    job_mod = require("ddeutil.workflow.job", "ddeutil")
    stages_mod = require("ddeutil.workflow.stages", "ddeutil")
    traces_mod = require("ddeutil.workflow.traces", "ddeutil")
    uninstrument()
    options = {**settings_from_ddeutil(trace_options), **trace_options}
    if "trace_handlers" in options and "handlers" not in options:
        options["handlers"] = options.pop("trace_handlers")
    _source.append(TraceSource("ddeutil", None, options))
    for module in (workflow_mod, job_mod, stages_mod):
        if vars(module).get("ThreadPoolExecutor") is ThreadPoolExecutor:
            _patches.replace(module, "ThreadPoolExecutor", lambda original: ContextThreadPool)
    workflow_cls = workflow_mod.Workflow
    _patches.replace(workflow_cls, "_execute", lambda o: _wrap_execute(o, "workflow"))
    _patches.replace(workflow_cls, "_rerun", lambda o: _wrap_execute(o, "workflow"))
    _patches.replace(job_mod.Job, "_execute", lambda o: _wrap_execute(o, "job"))
    _patches.replace(job_mod.Job, "process", _wrap_attempt)
    for cls in _stage_classes(stages_mod.BaseStage):
        _patches.replace(cls, "_execute", _wrap_stage_execute)
        _patches.replace(cls, "_axecute", _wrap_stage_axecute)
    trace_cls = traces_mod.Trace
    # ddeutil's get_trace validates its own handlers (which flowtrail's replace) for
    # every step: each module that imported it gets one that makes the bare trace.
    original_get_trace = traces_mod.get_trace
    for name, module in list(sys.modules.items()):
        if (
            name.startswith("ddeutil.workflow")
            and module is not None
            and vars(module).get("get_trace") is original_get_trace
        ):
            _patches.replace(module, "get_trace", lambda o: _make_get_trace(trace_cls))
    _patches.replace(trace_cls, "emit", lambda original: _emit)
    _patches.replace(trace_cls, "amit", lambda original: _amit)
    _patches.replace(trace_cls, "buffer", lambda original: _buffer)
    _LEVEL_CODES.clear()
    for cls in (traces_mod.BaseEmit, traces_mod.BaseAsyncEmit):
        for name in ("debug", "info", "warning", "error", "exception"):
            for attribute in (name, f"a{name}"):
                method = vars(cls).get(attribute)
                if method is not None:
                    _LEVEL_CODES.add(method.__code__)
    if logs:
        _bridge.want(logger)


def uninstrument() -> None:
    """Stop tracing ddeutil-workflow: its classes and modules get their own back."""
    _patches.undo()
    _bridge.remove()
    _source.clear()
    with _traces_lock:
        _traces.clear()


def instrumented() -> bool:
    """Whether `instrument` is in effect."""
    return bool(_patches)


def _stage_classes(base: type) -> list[type]:
    found: list[type] = []
    todo = [base]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


# ---------------------------------------------------------------- traces by run id
def trace_for(run_id: str, parent_run_id: str | None) -> Trace:
    """The flowtrail trace of one ddeutil run (made once, then shared)."""
    if parent_run_id == run_id:  # ddeutil's top-level runs are their own parents
        parent_run_id = None
    key = (run_id, parent_run_id)
    trace = _traces.get(key)
    if trace is not None:
        return trace
    with _traces_lock:
        trace = _traces.get(key)
        if trace is None:
            if len(_traces) >= _TRACE_CACHE:
                _traces.clear()
            source = _source[0] if _source else TraceSource("ddeutil", None, {})
            trace = _traces[key] = source.new(run_id, parent_run_id)
    return trace


# ---------------------------------------------------------------- spans
def _span_of(obj: Any, level: str, trace: Trace) -> LiveSpan:
    if level == "workflow":
        name = str(obj.name)
        attributes: dict[str, Any] = {"workflow.name": name}
    elif level == "job":
        name = str(obj.id or "EMPTY")
        attributes = {"job.id": name, "job.retry": getattr(obj, "retry", 0)}
    else:
        name = str(getattr(obj, "name", None) or getattr(obj, "iden", None) or type(obj).__name__)
        attributes = {"stage.type": type(obj).__name__}
        if getattr(obj, "id", None):
            attributes["stage.id"] = obj.id
        retry = getattr(obj, "retry", None)
        if retry:
            attributes["stage.retry"] = retry
    return trace._start_span(level, name, attributes)


def _ddeutil_trace(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``trace`` argument of an ``_execute`` (ddeutil's Trace of the run)."""
    found = kwargs.get("trace")
    if found is None:
        for arg in args:
            if hasattr(arg, "run_id") and hasattr(arg, "handlers"):
                return arg
    return found


def _result_status(live: LiveSpan, result: Any) -> None:
    status = getattr(getattr(result, "status", None), "name", None)
    if status is None:
        return
    live.set_attribute("ddeutil.status", status)
    if status in _ERROR_STATUSES:
        errors = (getattr(result, "context", None) or {}).get("errors")
        live.set_status("error", _error_text(errors) or status)


def _error_text(errors: Any) -> str | None:
    if isinstance(errors, dict):
        if "name" in errors:
            return f"{errors.get('name')}: {errors.get('message')}"
        for value in errors.values():  # per strategy or per job
            text = _error_text(value)
            if text:
                return text
    if isinstance(errors, list) and errors:
        return _error_text(errors[0])
    return None


def _skipped(exc: BaseException) -> bool:
    return "Skip" in type(exc).__name__


def _wrap_execute(original: Callable[..., Any], level: str) -> Callable[..., Any]:
    def _execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        ddeutil_trace = _ddeutil_trace(args, kwargs)
        if _current.get() is self or ddeutil_trace is None:
            return original(self, *args, **kwargs)
        _bridge.ensure()
        trace = trace_for(ddeutil_trace.run_id, ddeutil_trace.parent_run_id)
        live = _span_of(self, level, trace)
        token = _current.set(self)
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            _current.reset(token)
            if _skipped(exc):
                live.set_attribute("ddeutil.status", "SKIP")
                trace._end_span(live, None)
            else:
                trace._end_span(live, exc)
            raise
        _current.reset(token)
        _result_status(live, result)
        trace._end_span(live, None)
        return result

    return _execute


def _wrap_attempt(original: Callable[..., Any]) -> Callable[..., Any]:
    """``process`` of a job or stage: one ``attempt`` span per call when it may retry."""

    def process(self: Any, *args: Any, **kwargs: Any) -> Any:
        parent = open_span()
        if not getattr(self, "retry", 0) or parent is None or _current.get() is not self:
            return original(self, *args, **kwargs)
        trace = trace_of(parent)
        number = parent.attributes.get("attempts", 0) + 1
        parent.set_attribute("attempts", number)
        attempt = trace._start_span(
            "attempt", parent.name, {"attempt": number, "max_attempts": self.retry + 1}
        )
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            if _skipped(exc):
                trace._end_span(attempt, None)
            else:
                trace._end_span(attempt, exc)
            raise
        _result_status(attempt, result)
        trace._end_span(attempt, None)
        return result

    return process


def _wrap_async_attempt(original: Callable[..., Any]) -> Callable[..., Any]:
    """``async_process`` of a stage: one ``attempt`` span per call when it may retry."""

    async def async_process(self: Any, *args: Any, **kwargs: Any) -> Any:
        parent = open_span()
        if not getattr(self, "retry", 0) or parent is None or _current.get() is not self:
            return await original(self, *args, **kwargs)
        trace = trace_of(parent)
        number = parent.attributes.get("attempts", 0) + 1
        parent.set_attribute("attempts", number)
        attempt = trace._start_span(
            "attempt", parent.name, {"attempt": number, "max_attempts": self.retry + 1}
        )
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            trace._end_span(attempt, None if _skipped(exc) else exc)
            raise
        _result_status(attempt, result)
        trace._end_span(attempt, None)
        return result

    return async_process


def _ensure_attempts(cls: type, name: str = "process") -> None:
    """Wrap the ``process`` (or ``async_process``) a stage class runs (once per class,
    found when it first runs: every stage type defines its own)."""
    wrap = _wrap_attempt if name == "process" else _wrap_async_attempt
    for owner in cls.__mro__:
        if name in vars(owner):
            if not _patches.replaced(owner, name):
                _patches.replace(owner, name, wrap)
            return


def _wrap_stage_execute(original: Callable[..., Any]) -> Callable[..., Any]:
    inner = _wrap_execute(original, "stage")

    def _execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "retry", 0):
            _ensure_attempts(type(self))
        return inner(self, *args, **kwargs)

    return _execute


def _wrap_stage_axecute(original: Callable[..., Any]) -> Callable[..., Any]:
    """The async path (``stage.axecute()``): ``_axecute(params, run_id, context,
    parent_run_id, event)`` gets the run ids instead of a trace."""

    async def _axecute(self: Any, *args: Any, **kwargs: Any) -> Any:
        run_id = kwargs.get("run_id", args[1] if len(args) > 1 else None)
        parent_run_id = kwargs.get("parent_run_id", args[3] if len(args) > 3 else None)
        if _current.get() is self or not run_id:
            return await original(self, *args, **kwargs)
        if getattr(self, "retry", 0):
            _ensure_attempts(type(self), "async_process")
        _bridge.ensure()
        trace = trace_for(run_id, parent_run_id)
        live = _span_of(self, "stage", trace)
        token = _current.set(self)
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            _current.reset(token)
            if _skipped(exc):
                live.set_attribute("ddeutil.status", "SKIP")
            trace._end_span(live, None if _skipped(exc) else exc)
            raise
        _current.reset(token)
        _result_status(live, result)
        trace._end_span(live, None)
        return result

    return _axecute


# ---------------------------------------------------------------- ddeutil's records
#: Code objects of ddeutil's ``trace.info`` & co: a record's caller is one frame further.
_LEVEL_CODES: set[Any] = set()


def _message(msg: Any, module: Any, extras: Any) -> str:
    from ddeutil.workflow.traces import Message  # the engine, imported by instrument()

    text = Message.from_str(str(msg), module=module).prepare({"log_add_emoji": False})
    # ddeutil marks line breaks with "||".
    return text.replace("||", "\n").strip("\n")


def _record(self: Any, msg: Any, level: str, module: Any) -> Any:
    trace = trace_for(self.run_id, self.parent_run_id)
    # Frames: trace._make, this, _emit, [ddeutil's trace.info,] the caller.
    depth = 4 if sys._getframe(2).f_code in _LEVEL_CODES else 3
    return trace, trace._make(_message(msg, module, self.extras), level, depth)


def _emit(self: Any, msg: str, level: str, *, metric: Any = None, module: Any = None) -> None:
    trace, record = _record(self, msg, level, module)
    trace._submit(record)


async def _amit(self: Any, msg: str, level: str, *, metric: Any = None, module: Any = None) -> None:
    trace, record = _record(self, msg, level, module)
    trace._submit(record)


def _make_get_trace(trace_cls: Any) -> Callable[..., Any]:
    def get_trace(
        run_id: str,
        *,
        handlers: Any = None,
        parent_run_id: str | None = None,
        extras: Any = None,
        pre_process: bool = False,
    ) -> Any:
        """ddeutil's ``get_trace`` while flowtrail takes its records: no handlers."""
        return trace_cls.model_construct(
            run_id=run_id, parent_run_id=parent_run_id, handlers=[], extras=extras or {}
        )

    return get_trace


class _Buffer:
    """ddeutil's ``with trace.buffer():``: flowtrail batches by itself, so records are
    written as they come; an exception leaving the block is recorded as ddeutil does."""

    def __init__(self, trace: Any, module: Any) -> None:
        self.trace = trace
        self.module = module

    def __enter__(self) -> Any:
        return self.trace

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, Exception):
            self.trace.emit(str(exc), level="error", module=self.module)


def _buffer(self: Any, module: Any = None) -> _Buffer:
    return _Buffer(self, module)
