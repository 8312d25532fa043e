"""The human form of a run (seed 004): the indented tree of spans with durations, status
marks and the logs under the span they were written in, then a summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowtrail.metrics import Metrics, aggregate
from flowtrail.records import Metadata, Span, TraceData, parse_iso
from flowtrail.status import RunStatus, run_status

OK_MARK = "✓"
ERROR_MARK = "✗"


def duration_text(ms: float) -> str:
    """``45.2ms`` below a second, ``2.35s`` above. timeline.js's ``durationText`` gives
    the same text for every number (tests compare the two)."""
    return f"{ms:.1f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def iso_ns(text: str) -> int:
    """Nanoseconds since the epoch of an ISO-8601 time (0 if it cannot be read)."""
    try:
        moment = parse_iso(text)
    except (TypeError, ValueError):
        return 0
    seconds = int(moment.timestamp())
    return seconds * 1_000_000_000 + moment.microsecond * 1000


#: Attributes of a node span (seed 004) that its ``[node.id]`` stands for.
NODE_ATTRIBUTES = frozenset({"node.id", "node.type", "node.config"})


def _attributes(span: Span) -> str:
    if not span.attributes:
        return ""
    node_id = span.attributes.get("node.id")
    if node_id is not None:  # seed 004: ``→ node.read_file [reader]``
        rest = [(k, v) for k, v in span.attributes.items() if k not in NODE_ATTRIBUTES]
        shown = [str(node_id), *(f"{key}={value}" for key, value in rest[:3])]
        more = f", +{len(rest) - 3}" if len(rest) > 3 else ""
        return f" [{', '.join(shown)}{more}]"
    items = list(span.attributes.items())
    shown_text = ", ".join(f"{key}={value}" for key, value in items[:4])
    more = f", +{len(items) - 4}" if len(items) > 4 else ""
    return f" [{shown_text}{more}]"


def _log_lines(record: Metadata, pad: str) -> list[str]:
    lines = [f"{pad}[{record.level.upper()}] {record.message}"]
    if record.exception_type:
        where = f" ({record.filename}:{record.lineno})" if record.filename else ""
        lines.append(f"{pad}  ! {record.exception_type}: {record.exception_message}{where}")
    return lines


def _raised_at(span: Span) -> list[str]:
    """The last frame of the span's exception: where it was raised, and the line."""
    for event in span.events:
        stack = event.attributes.get("exception.stacktrace") if event.name == "exception" else None
        if stack:
            frames = [line for line in stack.rstrip().splitlines() if line.strip()]
            where = [i for i, line in enumerate(frames) if line.lstrip().startswith("File ")]
            if where:
                last = where[-1]
                return [frames[last].strip()] + [f.strip() for f in frames[last + 1 : last + 2]]
    return []


def render_tree(
    data: TraceData, *, run_id: str | None = None, metrics: Metrics | None = None
) -> str:
    """The indented tree of one run, then its summary."""
    spans: Sequence[Span] = sorted(data.spans, key=lambda s: (s.start_ns, s.end_ns))
    records = data.meta
    run_id = run_id or (records[0].run_id if records else spans[0].run_id if spans else "?")
    trace_id = spans[0].trace_id if spans else (records[0].trace_id if records else None)
    lines = [f"Workflow Trace: {trace_id or '-'}", f"Run: {run_id}"]
    ids = {span.span_id for span in spans}
    children: dict[str | None, list[Span]] = {}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)
    # Times from one clock share a zone offset and then order as text; otherwise they
    # are compared as instants.
    one_zone = len({r.datetime[26:] for r in records} | {s.start_time[26:] for s in spans}) <= 1
    logs: dict[str | None, list[tuple[Any, Metadata]]] = {}
    for record in records:
        owner = record.span_id if record.span_id in ids else None
        moment = record.datetime if one_zone else iso_ns(record.datetime)
        logs.setdefault(owner, []).append((moment, record))

    def walk(owner: str | None, depth: int) -> None:
        pad = "  " * depth
        items: list[tuple[Any, int, object]] = [
            (s.start_time if one_zone else s.start_ns, 1, s) for s in children.get(owner, ())
        ]
        items += [(t, 0, r) for t, r in logs.get(owner, ())]
        items.sort(key=lambda item: (item[0], item[1]))
        for _, _, item in items:
            if isinstance(item, Metadata):
                lines.extend(_log_lines(item, pad))
                continue
            assert isinstance(item, Span)
            start = ""
            if owner is None:
                start = f" [{item.start_time[:19].replace('T', ' ')}]"
            lines.append(f"{pad}→ {item.kind}.{item.name}{start}{_attributes(item)}")
            walk(item.span_id, depth + 1)
            mark = ERROR_MARK if item.status == "error" else OK_MARK
            end = f"{pad}← {item.kind}.{item.name} ({duration_text(item.duration_ms)}) {mark}"
            if item.status == "error" and item.status_message:
                end += f" {item.status_message}"
            lines.append(end)

    walk(None, 0)
    lines.append("")
    lines.extend(render_summary(data, metrics))
    return "\n".join(lines) + "\n"


def status_text(state: RunStatus) -> str:
    """The ``- Status:`` of a summary: the status, and why where it needs saying."""
    status = state.text
    if state.status == "ok" and state.retried:
        plural = "s" if state.retried != 1 else ""
        status += f": {state.retried} failed attempt{plural} passed when retried"
    elif state.open_spans and state.status in ("running", "interrupted"):
        plural = "s" if state.open_spans != 1 else ""
        status += f": {state.open_spans} span{plural} started and not ended"
    return status


def render_summary(data: TraceData, metrics: Metrics | None = None) -> list[str]:
    """The summary lines under a tree: the run's status (`flowtrail.status`), then what
    ran and what failed, each line counting what it names."""
    spans = data.spans
    error_records = sum(1 for r in data.meta if r.error_flag)
    state = run_status(data.meta, spans, data.open_spans)
    lines = ["Summary:", f"- Status: {status_text(state)}"]
    if not spans:
        lines.append(f"- Records: {len(data.meta)}")
        lines.append(f"- Error Records: {error_records}")
        if state.first_failure:
            lines.append(f"- First Failure: {state.first_failure}")
        return lines
    metrics = metrics or aggregate(spans)
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(metrics.kinds.items()))
    slowest = max(
        (s for s in spans if s.kind != "workflow"), key=lambda s: s.duration_ms, default=None
    )
    nodes = [s for s in spans if s.kind != "workflow"]
    nodes_ok = sum(1 for s in nodes if s.status != "error")
    failed_spans = sum(1 for s in spans if s.status == "error")
    lines += [
        f"- Total Duration: {duration_text(metrics.total_duration_ms)}",
        f"- Spans: {metrics.span_count} ({kinds})",
        f"- Nodes Executed: {len(nodes)} (spans below the workflow, retried attempts included)",
        f"- Failures: {state.failures} ({failed_spans} span(s) ended in error, "
        f"{error_records} error record(s))",
    ]
    if nodes:
        lines.append(
            f"- Success Rate: {nodes_ok / len(nodes):.0%} of nodes ended ok "
            f"({nodes_ok} of {len(nodes)})"
        )
    if metrics.peak_memory_mb is not None:
        lines.append(f"- Peak Memory: {metrics.peak_memory_mb:.1f} MB")
    if slowest is not None:
        lines.append(
            f"- Slowest: {slowest.kind}.{slowest.name} ({duration_text(slowest.duration_ms)})"
        )
    first = next((s for s in spans if s.span_id == state.failed_span_id), None)
    if first is not None:
        lines.append(
            f"- First Failure: {first.kind}.{first.name}: {first.status_message or 'error'}"
        )
        lines.extend(f"    {line}" for line in _raised_at(first))
    elif state.first_failure:
        lines.append(f"- First Failure: {state.first_failure}")
    return lines
