"""Shared context with the OpenTelemetry API, both ways.

- Into flowtrail: when OpenTelemetry has a current span (a request handler's server span,
  a span of the caller's own ``tracer``), a flowtrail span opened inside it joins its
  trace as its child, and a record written inside it carries its trace and span ids
  (`otel_parent`).
- Out of flowtrail: while a flowtrail span is open, OpenTelemetry's current context holds
  it (as a non-recording span with its ids, `attach`), so spans that instrumented
  libraries start (``tracer.start_as_current_span``, an instrumented HTTP client) are its
  children, and the ``traceparent`` they inject names it.
- flowtrail's own HTTP requests (`flowtrail.delivery`) suppress instrumentation, so an
  instrumented HTTP client library never turns an export into spans.

Nothing here imports OpenTelemetry: it is used only once the program (or a library it
uses) has imported ``opentelemetry.trace`` itself. Until then each call costs one dict
look-up (`sys.modules`), and a program without OpenTelemetry pays nothing more.
"""

from __future__ import annotations

import sys
from typing import Any

from flowtrail.context import TraceParent

_modules = sys.modules
_TRACE = "opentelemetry.trace"
_CONTEXT = "opentelemetry.context"
#: ``(opentelemetry.trace, opentelemetry.context)`` once both are imported by the program.
_api: list[Any] = []


def otel_loaded() -> bool:
    """Whether the program has imported the OpenTelemetry API."""
    return _modules.get(_TRACE) is not None


def _load() -> tuple[Any, Any] | None:
    if _api:
        return _api[0], _api[1]
    trace = _modules.get(_TRACE)
    context = _modules.get(_CONTEXT)
    if trace is None or context is None or not hasattr(trace, "get_current_span"):
        return None  # not imported, or still being imported
    _api[:] = [trace, context]
    return trace, context


def otel_current() -> Any:
    """OpenTelemetry's current span object (None when OpenTelemetry is not imported
    or has none). Compare it with `attached_span` before paying for `parent_of`."""
    if _modules.get(_TRACE) is None:
        return None
    api = _load()
    if api is None:
        return None
    try:
        return api[0].get_current_span()
    except Exception:  # another library's broken context must not break a workflow
        return None


def parent_of(span: Any) -> TraceParent | None:
    """An OpenTelemetry span as a parent (its trace id, span id and sampled flag), or
    None if it has no valid ids."""
    if span is None:
        return None
    try:
        span_context = span.get_span_context()
    except Exception:
        return None
    if not span_context.is_valid:
        return None
    return TraceParent(
        f"{span_context.trace_id:032x}",
        f"{span_context.span_id:016x}",
        int(span_context.trace_flags) & 0xFF,
    )


def otel_parent() -> TraceParent | None:
    """OpenTelemetry's current span as a parent, or None when there is none, or
    OpenTelemetry is not imported."""
    return parent_of(otel_current())


def attach(trace_id: str, span_id: str, sampled: bool) -> Any:
    """Make the span with these ids OpenTelemetry's current span (in the current
    context, keeping its other values). Returns what `detach` and `attached_span` take,
    or None when OpenTelemetry is not imported."""
    if _modules.get(_TRACE) is None:
        return None
    api = _load()
    if api is None:
        return None
    trace, context = api
    try:
        if _last_trace[0] != trace_id:
            _last_trace[:] = [trace_id, int(trace_id, 16)]
        span = trace.NonRecordingSpan(
            trace.SpanContext(
                _last_trace[1],
                int(span_id, 16),
                is_remote=False,
                trace_flags=_flags(trace, sampled),
            )
        )
        return (context.attach(trace.set_span_in_context(span)), span)
    except Exception:
        return None


#: The trace id last attached, as text and as a number (spans of a trace share it).
_last_trace: list[Any] = ["", 0]
_trace_flags: dict[bool, Any] = {}


def _flags(trace: Any, sampled: bool) -> Any:
    flags = _trace_flags.get(sampled)
    if flags is None:
        flags = _trace_flags[sampled] = trace.TraceFlags(1 if sampled else 0)
    return flags


def attached_span(attached: Any) -> Any:
    """The OpenTelemetry span object `attach` made current."""
    return attached[1]


def suppress_instrumentation() -> Any:
    """Tell OpenTelemetry instrumentations to record nothing in the current context
    (flowtrail's own HTTP requests must not become spans, as the SDK's exporters do);
    returns the token for `detach`, or None when OpenTelemetry is not imported."""
    if _modules.get(_TRACE) is None:
        return None
    api = _load()
    if api is None:
        return None
    context = api[1]
    key = getattr(context, "_SUPPRESS_INSTRUMENTATION_KEY", None)
    if key is None:
        return None
    try:
        return context.attach(context.set_value(key, True))
    except Exception:
        return None


def detach(attached: Any) -> None:
    """Undo `attach` (or `suppress_instrumentation`). Quiet when the span ends in
    another context than it started in (another task or thread): that context's
    value is not this one's to reset."""
    api = _load()
    if api is None:
        return
    token = attached[0] if isinstance(attached, tuple) else attached
    runtime = getattr(api[1], "_RUNTIME_CONTEXT", None)
    try:
        if runtime is not None:
            runtime.detach(token)  # without the error log of `context.detach`
        else:
            api[1].detach(token)
    except Exception:
        pass


__all__ = [
    "attach",
    "attached_span",
    "detach",
    "otel_current",
    "otel_loaded",
    "otel_parent",
    "parent_of",
    "suppress_instrumentation",
]
