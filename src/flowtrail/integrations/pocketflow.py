"""PocketFlow, traced in one line (seed 004)::

    from flowtrail.integrations import pocketflow
    pocketflow.instrument()

Every run of a ``Flow``, ``AsyncFlow`` or ``BatchFlow`` becomes a span (``workflow.<type>``
for the outermost flow, ``flow.<type>`` for a flow run as a node of another, ``batch.<type>``
for each parameter set of a batch flow), and every ``Node``, ``AsyncNode`` and ``BatchNode``
run inside it a ``node.<type>`` span with the attributes ``node.id``, ``node.type`` and
``node.config``. A node with ``max_retries > 1`` gets one ``attempt.<type>`` span per call of
its ``exec`` (the failed ones carry their error; a last attempt whose ``exec_fallback``
returned a result ends ok with the ``fallback`` attribute and the exception as an event);
the action the node returned and the node it leads to are ``action`` and ``next`` events
of its span. Records written inside ``prep``, ``exec`` and ``post`` (through
`current_trace` or the stdlib `logging` module) carry the node's span.

The node type is the class name in snake case without a ``Node``/``Flow`` suffix
(``ReadFileNode`` -> ``read_file``); the node id is the node's ``node_id`` (or ``name``)
attribute when it is a string, else its type.

PocketFlow copies every node before it runs it, so the integration replaces methods of
PocketFlow's classes (``_run``, ``_run_async``, ``_exec``, ``_orch``), never of instances;
`uninstrument` puts the originals back. PocketFlow has no hooks or signals to use instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from flowtrail.integrations._common import (
    LogBridge,
    Patches,
    TraceSource,
    config_text,
    current_trace,
    open_span,
    require,
    trace_of,
)
from flowtrail.records import SpanEvent
from flowtrail.spans import LiveSpan
from flowtrail.trace import Trace

__all__ = ["current_trace", "instrument", "instrumented", "uninstrument"]

_patches = Patches()
_bridge = LogBridge()
_source: list[TraceSource] = []
#: The node (or flow) whose span is open in this context: a subclass's method that calls
#: its parent's (``super()._run(shared)``) runs in the same span, not in a second one.
_current: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "flowtrail_pocketflow_node", default=None
)
#: Per class: (kind of span for a flow or a node, node type).
_types: dict[type, str] = {}
#: ``node.config`` texts by (class, retries, wait, id(params)), with the params they were
#: made from (an id is only trusted while the object it was taken from is the one held).
_configs: dict[tuple[Any, ...], tuple[Any, str]] = {}
_CONFIG_CACHE = 512
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def instrument(
    trace: Trace | None = None,
    *,
    logs: bool = True,
    logger: str | None = None,
    **trace_options: Any,
) -> None:
    """Trace every PocketFlow flow and node run from now on.

    A run started inside an open span or a ``with get_trace(...)`` block nests in that
    trace; else it goes to ``trace`` when given; else each outermost run gets its own trace
    (run id ``pocketflow-<time>-<hex>``) made by `flowtrail.get_trace` with
    ``trace_options`` (``handlers=``, ``extras=``, settings). With ``logs`` (the default),
    stdlib log records (of ``logger``, default the root logger) written inside a node go to
    its trace. Calling it again replaces the options. Needs ``flowtrail[pocketflow]``."""
    pf = require("pocketflow", "pocketflow")
    uninstrument()
    _source.append(TraceSource("pocketflow", trace, trace_options))
    for cls in (pf.BaseNode, pf.Flow, getattr(pf, "BatchFlow", None)):
        if cls is not None:
            _patches.replace(cls, "_run", _wrap_run)
    for name in ("AsyncNode", "AsyncFlow", "AsyncBatchFlow", "AsyncParallelBatchFlow"):
        cls = getattr(pf, name, None)
        if cls is not None:
            _patches.replace(cls, "_run_async", _wrap_run_async)
    _patches.replace(pf.Node, "_exec", lambda original: _exec)
    if getattr(pf, "AsyncNode", None) is not None:
        _patches.replace(pf.AsyncNode, "_exec", lambda original: _exec_async)
    batch_flows = tuple(
        c for c in (getattr(pf, "BatchFlow", None), getattr(pf, "AsyncBatchFlow", None)) if c
    )
    _patches.replace(pf.Flow, "_orch", lambda original: _wrap_orch(original, batch_flows))
    if getattr(pf, "AsyncFlow", None) is not None:
        _patches.replace(
            pf.AsyncFlow, "_orch_async", lambda original: _wrap_orch_async(original, batch_flows)
        )
    if logs:
        _bridge.want(logger)


def uninstrument() -> None:
    """Stop tracing PocketFlow: its classes get their own methods back."""
    _patches.undo()
    _bridge.remove()
    _source.clear()
    _configs.clear()


def instrumented() -> bool:
    """Whether `instrument` is in effect."""
    return bool(_patches)


# ---------------------------------------------------------------- naming
def node_type(cls: type) -> str:
    """``ReadFileNode`` -> ``read_file``; ``Flow`` -> ``flow``."""
    found = _types.get(cls)
    if found is None:
        name = cls.__name__
        for suffix in ("Node", "Flow"):
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        found = _types[cls] = _CAMEL.sub("_", name).lower()
    return found


def node_id(node: Any, kind_name: str) -> str:
    """The node's ``node_id`` or ``name`` attribute when it is a string, else its type."""
    for attribute in ("node_id", "name"):
        value = getattr(node, attribute, None)
        if isinstance(value, str) and value:
            return value
    return kind_name


def _config(node: Any) -> str:
    params = getattr(node, "params", None)
    retries = getattr(node, "max_retries", None)
    wait = getattr(node, "wait", None)
    # A flow hands one params dict to all its nodes: its id is the key while it lives.
    key = (type(node), retries, wait, id(params) if params else 0)
    cached = _configs.get(key)
    if cached is not None and (cached[0] is params or not params):
        return cached[1]
    values: dict[str, Any] = {"class": type(node).__qualname__}
    if retries is not None:
        values["max_retries"] = retries
        values["wait"] = wait
    if params:
        values["params"] = params
    text = config_text(values)
    if len(_configs) >= _CONFIG_CACHE:
        _configs.clear()
    _configs[key] = (params, text)
    return text


def _is_flow(node: Any) -> bool:
    return hasattr(node, "start_node")


def _open(node: Any) -> tuple[Trace, LiveSpan]:
    """Open the span of a run of ``node`` (a flow or a node) in the current context."""
    _bridge.ensure()
    kind_name = node_type(type(node))
    parent = open_span()
    if _is_flow(node):
        kind = "flow" if _current.get() is not None else "workflow"
    else:
        kind = "node"
    if parent is not None:
        trace = trace_of(parent)
    else:
        source = _source[0] if _source else TraceSource("pocketflow", None, {})
        trace = source.for_run(workflow_name=kind_name)
    attributes = {
        "node.id": node_id(node, kind_name),
        "node.type": kind_name,
        "node.config": _config(node),
    }
    return trace, trace._start_span(kind, kind_name, attributes)


def _close(trace: Trace, live: LiveSpan, node: Any, action: Any) -> None:
    # The two events happen at the same moment: one clock reading for both.
    when, when_ns = trace._clock.now(), live.now_ns()
    shown = action if isinstance(action, str) or action is None else repr(action)
    events = live.events
    events.append(
        SpanEvent(name="action", time=when, time_ns=when_ns, attributes={"action": shown})
    )
    successors: Mapping[str, Any] | None = getattr(node, "successors", None)
    if successors:
        following = successors.get(action or "default")
        if following is None:
            after: dict[str, Any] = {"next.id": None, "reason": "no successor for the action"}
        else:
            kind_name = node_type(type(following))
            after = {"next.id": node_id(following, kind_name), "next.type": kind_name}
        events.append(SpanEvent(name="next", time=when, time_ns=when_ns, attributes=after))
    trace._end_span(live, None)


# ---------------------------------------------------------------- runs
def _wrap_run(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def _run(self: Any, shared: Any) -> Any:
        if _current.get() is self:  # a subclass calling its parent's _run
            return original(self, shared)
        trace, live = _open(self)
        token = _current.set(self)
        try:
            action = original(self, shared)
        except BaseException as exc:
            _current.reset(token)
            trace._end_span(live, exc)
            raise
        _current.reset(token)
        _close(trace, live, self, action)
        return action

    return _run


def _wrap_run_async(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def _run_async(self: Any, shared: Any) -> Any:
        if _current.get() is self:
            return await original(self, shared)
        trace, live = _open(self)
        token = _current.set(self)
        try:
            action = await original(self, shared)
        except BaseException as exc:
            _current.reset(token)
            trace._end_span(live, exc)
            raise
        _current.reset(token)
        _close(trace, live, self, action)
        return action

    return _run_async


def _batch_span(flow: Any, params: Any) -> tuple[Trace, LiveSpan] | None:
    parent = open_span()
    if parent is None:
        return None
    kind_name = node_type(type(flow))
    trace = trace_of(parent)
    attributes = {"node.id": node_id(flow, kind_name), "batch.params": config_text(params)}
    return trace, trace._start_span("batch", kind_name, attributes)


def _wrap_orch(original: Callable[..., Any], batch_flows: tuple[type, ...]) -> Any:
    def _orch(self: Any, shared: Any, params: Any = None) -> Any:
        opened = _batch_span(self, params) if params and isinstance(self, batch_flows) else None
        if opened is None:
            return original(self, shared, params)
        trace, live = opened
        try:
            result = original(self, shared, params)
        except BaseException as exc:
            trace._end_span(live, exc)
            raise
        trace._end_span(live, None)
        return result

    return _orch


def _wrap_orch_async(original: Callable[..., Any], batch_flows: tuple[type, ...]) -> Any:
    async def _orch_async(self: Any, shared: Any, params: Any = None) -> Any:
        opened = _batch_span(self, params) if params and isinstance(self, batch_flows) else None
        if opened is None:
            return await original(self, shared, params)
        trace, live = opened
        try:
            result = await original(self, shared, params)
        except BaseException as exc:
            trace._end_span(live, exc)
            raise
        trace._end_span(live, None)
        return result

    return _orch_async


# ---------------------------------------------------------------- attempts
# PocketFlow's own retry loop (``Node._exec``), with a span around each call of ``exec``
# when the node may retry. The loop is PocketFlow's: the node's ``cur_retry``, ``wait``
# between attempts and ``exec_fallback`` after the last are kept as they are.
def _exec(self: Any, prep_res: Any) -> Any:
    retries = self.max_retries
    parent = open_span() if retries > 1 else None
    if parent is None:
        for self.cur_retry in range(retries):
            try:
                return self.exec(prep_res)
            except Exception as exc:
                if self.cur_retry == retries - 1:
                    return self.exec_fallback(prep_res, exc)
                if self.wait > 0:
                    time.sleep(self.wait)
        return None
    trace = trace_of(parent)
    kind_name = node_type(type(self))
    for self.cur_retry in range(retries):
        attempt = trace._start_span(
            "attempt", kind_name, {"attempt": self.cur_retry + 1, "max_retries": retries}
        )
        try:
            result = self.exec(prep_res)
        except Exception as exc:
            if self.cur_retry == retries - 1:  # the fallback runs inside the last attempt
                try:
                    value = self.exec_fallback(prep_res, exc)
                except BaseException as failure:
                    trace._end_span(attempt, failure)
                    _count_attempt(parent)
                    raise
                _recovered(trace, attempt, exc)
                _count_attempt(parent)
                return value
            attempt.add_event("retry", wait_s=self.wait)
            trace._end_span(attempt, exc)
            _count_attempt(parent)
            if self.wait > 0:
                time.sleep(self.wait)
            continue
        except BaseException as exc:
            trace._end_span(attempt, exc)
            _count_attempt(parent)
            raise
        trace._end_span(attempt, None)
        _count_attempt(parent)
        return result
    return None


async def _exec_async(self: Any, prep_res: Any) -> Any:
    retries = self.max_retries
    parent = open_span() if retries > 1 else None
    if parent is None:
        for i in range(retries):
            try:
                return await self.exec_async(prep_res)
            except Exception as exc:
                if i == retries - 1:
                    return await self.exec_fallback_async(prep_res, exc)
                if self.wait > 0:
                    await asyncio.sleep(self.wait)
        return None
    trace = trace_of(parent)
    kind_name = node_type(type(self))
    for i in range(retries):
        attempt = trace._start_span(
            "attempt", kind_name, {"attempt": i + 1, "max_retries": retries}
        )
        try:
            result = await self.exec_async(prep_res)
        except Exception as exc:
            if i == retries - 1:
                try:
                    value = await self.exec_fallback_async(prep_res, exc)
                except BaseException as failure:
                    trace._end_span(attempt, failure)
                    _count_attempt(parent)
                    raise
                _recovered(trace, attempt, exc)
                _count_attempt(parent)
                return value
            attempt.add_event("retry", wait_s=self.wait)
            trace._end_span(attempt, exc)
            _count_attempt(parent)
            if self.wait > 0:
                await asyncio.sleep(self.wait)
            continue
        except BaseException as exc:
            trace._end_span(attempt, exc)
            _count_attempt(parent)
            raise
        trace._end_span(attempt, None)
        _count_attempt(parent)
        return result
    return None


def _recovered(trace: Trace, attempt: LiveSpan, exc: BaseException) -> None:
    """The last attempt failed and the node's ``exec_fallback`` returned a result: the
    attempt keeps its exception as an event and ends ok (the node recovered)."""
    attempt.record_exception(exc)
    attempt.set_attribute("fallback", True)
    attempt.add_event("fallback", reason=f"{type(exc).__qualname__}: {exc}")
    trace._end_span(attempt, None)


def _count_attempt(node_span: LiveSpan) -> None:
    """The node span's ``attempts``: calls of ``exec`` (every item of a batch node)."""
    node_span.set_attribute("attempts", node_span.attributes.get("attempts", 0) + 1)
