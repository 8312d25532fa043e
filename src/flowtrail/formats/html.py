"""The HTML timeline of a run: one self-contained file (no network) with a waterfall of
the spans (bars on a time axis, nested, coloured by status), the logs of a span shown on
click, and the run's metrics.

The page opens on the run's first failure (the failed span that ended first, as in the
summary of ``flowtrail show``: selected, with its stack) or, in a run without spans, on
its first error record; a run without spans shows its records as a list. Durations use
`flowtrail.formats.tree.duration_text`, mirrored by ``durationText`` in timeline.js.

A large run stays usable: the page embeds at most `MAX_SPANS` spans (failures and the
spans above them first, then the shallowest), `PER_SPAN` records per span (plus up to
`ERRORS_PER_SPAN` error records), `MAX_RECORDS` records and `TEXT_BUDGET` characters of
messages and stacks in all (and as many again for the records of failed spans, so the
failures' own records are always there), and draws records a page at a time behind a
"more" button. A note names what was left out and the command that prints it.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import msgspec

from flowtrail.formats.document import run_document
from flowtrail.records import ERROR_LEVELS, Metadata, Span, TraceData
from flowtrail.status import RunStatus

#: Spans drawn at most.
MAX_SPANS = 2000
#: Records embedded per span (and outside spans), not counting error records.
PER_SPAN = 100
#: Error and exception records embedded per span on top of `PER_SPAN`.
ERRORS_PER_SPAN = 20
#: Records embedded at most.
MAX_RECORDS = 5000
#: Characters of messages and stack traces embedded at most.
TEXT_BUDGET = 4_000_000
#: A message or a stack trace longer than this is cut (a stack keeps its end).
MAX_TEXT = 8000
#: Rows of the metrics table (the span names that took longest in all).
MAX_NAMES = 200
#: Records drawn per click of "more".
PAGE_SIZE = 100


def _asset(name: str) -> str:
    return resources.files("flowtrail.formats").joinpath(name).read_text(encoding="utf-8")


def first_failure(spans: Iterable[Span]) -> Span | None:
    """The failed span that ended first (the summary's "First Failure")."""
    return min((s for s in spans if s.status == "error"), key=lambda s: s.end_ns, default=None)


def _chosen_spans(spans: Sequence[Span], limit: int) -> list[Span]:
    """All spans, or ``limit`` of them: the failed ones and every span above them first,
    then the shallowest, earliest first (so a drawn span's parent is drawn too)."""
    if len(spans) <= limit:
        return list(spans)
    by_id = {s.span_id: s for s in spans}
    depth: dict[str, int] = {}

    def depth_of(span: Span) -> int:
        chain = []
        current: Span | None = span
        while current is not None and current.span_id not in depth:
            chain.append(current)
            parent = current.parent_span_id
            current = by_id.get(parent) if parent and parent != current.span_id else None
            if len(chain) > len(by_id):  # a cycle in damaged data
                break
        base = depth.get(current.span_id, -1) if current is not None else -1
        for offset, item in enumerate(reversed(chain), start=1):
            depth[item.span_id] = base + offset
        return depth[span.span_id]

    on_path: set[str] = set()
    for span in spans:
        current: Span | None = span if span.status == "error" else None
        while current is not None and current.span_id not in on_path:
            on_path.add(current.span_id)
            current = by_id.get(current.parent_span_id or "")
    ranked = sorted(
        spans, key=lambda s: (s.span_id not in on_path, depth_of(s), s.start_ns, s.end_ns)
    )
    return ranked[:limit]


def _cut(text: str | None, keep_end: bool = False) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    left = len(text) - MAX_TEXT
    if keep_end:
        return f"[{left} characters cut]\n" + text[-MAX_TEXT:]
    return text[:MAX_TEXT] + f" … [{left} characters cut]"


def _chosen_records(
    records: Iterable[Metadata], drawn: set[str], failed: set[str]
) -> tuple[list[Metadata], dict[str, int], int]:
    """The records to embed, the count of every drawn span's records (key "" for those
    outside drawn spans), and the count of all records. One pass; memory bounded by
    what is embedded. Records of the ``failed`` spans have limits of their own: they are
    embedded however many records came before them."""
    counts: dict[str, int] = {}
    errors: dict[str, int] = {}
    chosen: list[Metadata] = []
    budget = TEXT_BUDGET
    total = 0
    ordinary = of_failures = 0
    # Records outside the drawn spans are a list of their own: longer, and the whole
    # page when the run has no spans.
    loose_cap = 10 * PER_SPAN if drawn else MAX_RECORDS
    for record in records:
        total += 1
        key = record.span_id if record.span_id in drawn else ""
        seen = counts[key] = counts.get(key, 0) + 1
        in_failure = key in failed
        if in_failure and of_failures >= MAX_RECORDS:
            continue
        if not in_failure and (ordinary >= MAX_RECORDS or budget <= 0):
            continue
        cap = PER_SPAN if key else loose_cap
        if record.level in ERROR_LEVELS:
            shown_errors = errors[key] = errors.get(key, 0) + 1
            if seen > cap and shown_errors > ERRORS_PER_SPAN:
                continue
        elif seen > cap:
            continue
        message, stack = _cut(record.message), _cut(record.stack_trace, keep_end=True)
        if message is not record.message or stack is not record.stack_trace:
            record = msgspec.structs.replace(record, message=message, stack_trace=stack)
        if in_failure:
            of_failures += 1
        else:
            ordinary += 1
            budget -= len(record.message) + len(record.stack_trace or "")
        chosen.append(record)
    return chosen, counts, total


def _compact(log: dict[str, Any]) -> dict[str, Any]:
    """A log of the page without its empty fields (the JSON document keeps them)."""
    return {k: v for k, v in log.items() if v is not None and v != "" and v != [] and v != {}}


def report_document(
    data: TraceData,
    *,
    run_id: str | None = None,
    records: Iterable[Metadata] | None = None,
    state: RunStatus | None = None,
) -> dict[str, Any]:
    """What the page embeds: `run_document` with the spans and records chosen for the
    page, and a ``view`` of what to open on and what was left out. ``records`` (default
    ``data.meta``) are read once, so a store's streamed reader keeps a run of any size
    out of memory; ``state`` is then the run's status (`flowtrail.status.run_status`)."""
    spans = _chosen_spans(data.spans, MAX_SPANS)
    drawn = {s.span_id for s in spans}
    failed = {s.span_id for s in spans if s.status == "error"}
    chosen, counts, total = _chosen_records(
        data.meta if records is None else records, drawn, failed
    )
    records = chosen
    document = run_document(data, run_id=run_id, spans=spans, logs=records, state=state)
    document["logs"] = [_compact(log) for log in document["logs"]]
    metrics = document["metrics"]
    name_total = len(metrics["by_name"]) if metrics else 0
    if metrics and name_total > MAX_NAMES:
        slowest = sorted(metrics["by_name"], key=lambda row: -row.get("total_ms", 0.0))
        metrics["by_name"] = slowest[:MAX_NAMES]
    failure = first_failure(data.spans)
    first_error = next((i for i, r in enumerate(records) if r.level in ERROR_LEVELS), None)
    opened = failure.span_id if failure is not None else None
    if opened is None and first_error is not None and records[first_error].span_id in drawn:
        opened = records[first_error].span_id  # no failed span: the first error's span
    run = document["run_id"] or ""
    document["view"] = {
        "first_failure": opened,
        "first_error_record": first_error if opened is None else None,
        "span_total": len(data.spans),
        "record_total": total,
        "records_by_span": counts,
        "name_total": name_total,
        "page_size": PAGE_SIZE,
        "rest_command": f"flowtrail show {shlex.quote(run)} --format text",
    }
    return document


def _cap_note(document: dict[str, Any]) -> str:
    view = document["view"]
    parts = []
    if len(document["spans"]) < view["span_total"]:
        parts.append(
            f"{len(document['spans']):,} of {view['span_total']:,} spans (failures and the "
            "spans above them first, then the shallowest)"
        )
    if len(document["logs"]) < view["record_total"]:
        parts.append(f"{len(document['logs']):,} of {view['record_total']:,} records")
    if not parts:
        return ""
    command = html.escape(view["rest_command"])
    return (
        f"<p class='cap' id='cap'>This report shows {' and '.join(parts)}, to stay small. "
        f"Every record: <code>{command}</code></p>"
    )


def render_html(
    data: TraceData,
    *,
    run_id: str | None = None,
    records: Iterable[Metadata] | None = None,
    state: RunStatus | None = None,
) -> str:
    """A self-contained HTML page with the timeline of one run (``records`` and
    ``state``: see `report_document`)."""
    from flowtrail.formats.tree import duration_text

    document = report_document(data, run_id=run_id, records=records, state=state)
    payload = msgspec.json.encode(document).decode()
    # Keep the JSON inside its script element whatever the messages contain: "<" only
    # occurs inside JSON strings, where the escape \u003c is valid JSON ("<\!--" is not).
    payload = payload.replace("<", "\\u003c")
    metrics = document["metrics"] or {}
    status = str(document["status"])
    total = metrics.get("total_duration_ms")
    title = html.escape(f"{document['workflow_name'] or 'run'} {document['run_id']}")
    summary = [
        f"<span>run <b>{html.escape(str(document['run_id']))}</b></span>",
        f"<span>trace {html.escape(str(document['trace_id']))}</span>",
        f"<span class='status status-{html.escape(status)}' id='run-status'>"
        f"{html.escape(status)}"
        + (" (retried)" if status == "ok" and document.get("retried") else "")
        + "</span>",
    ]
    if total is not None:
        summary.append(f"<span>{duration_text(total)}</span>")
        failed = metrics["error_count"]
        plural = "" if failed == 1 else "s"
        summary.append(f"<span>{metrics['span_count']} spans, {failed} failed span{plural}</span>")
    summary.append(f"<span>{document['view']['record_total']} records</span>")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title} — flowtrail</title><style>{_asset('timeline.css')}</style></head><body>"
        f"<header><h1>{title}</h1><div class='meta'>{''.join(summary)}</div>"
        f"{_cap_note(document)}</header>"
        "<main><div id='chart'></div><div id='details'></div></main>"
        "<section id='metrics'></section>"
        f"<script type='application/json' id='run-data'>{payload}</script>"
        f"<script>{_asset('timeline.js')}</script></body></html>\n"
    )
