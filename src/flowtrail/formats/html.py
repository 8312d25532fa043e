"""The HTML timeline of a run: one self-contained file (no network) with a waterfall of
the spans (bars on a time axis, nested, coloured by status), the logs of a span shown on
click, and the run's metrics."""

from __future__ import annotations

import html
from importlib import resources

import msgspec

from flowtrail.formats.document import run_document
from flowtrail.records import TraceData


def _asset(name: str) -> str:
    return resources.files("flowtrail.formats").joinpath(name).read_text(encoding="utf-8")


def render_html(data: TraceData, *, run_id: str | None = None) -> str:
    """A self-contained HTML page with the timeline of one run."""
    document = run_document(data, run_id=run_id)
    payload = msgspec.json.encode(document).decode()
    # Keep the JSON inside its script element whatever the messages contain: "<" only
    # occurs inside JSON strings, where the escape \u003c is valid JSON ("<\!--" is not).
    payload = payload.replace("<", "\\u003c")
    metrics = document["metrics"] or {}
    status = document["status"]
    total = metrics.get("total_duration_ms")
    title = html.escape(f"{document['workflow_name'] or 'run'} {document['run_id']}")
    summary = [
        f"<span>run <b>{html.escape(str(document['run_id']))}</b></span>",
        f"<span>trace {html.escape(str(document['trace_id']))}</span>",
        f"<span class='status-{status}'>{status}"
        + (" (retried)" if status == "ok" and document.get("retried") else "")
        + "</span>",
    ]
    if total is not None:
        summary.append(f"<span>{total:.1f} ms</span>")
        failed = metrics["error_count"]
        plural = "" if failed == 1 else "s"
        summary.append(f"<span>{metrics['span_count']} spans, {failed} failed span{plural}</span>")
    summary.append(f"<span>{len(document['logs'])} records</span>")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title} — flowtrail</title><style>{_asset('timeline.css')}</style></head><body>"
        f"<header><h1>{title}</h1><div class='meta'>{''.join(summary)}</div></header>"
        "<main><div id='chart'></div><div id='details'></div></main>"
        "<section id='metrics'></section>"
        f"<script type='application/json' id='run-data'>{payload}</script>"
        f"<script>{_asset('timeline.js')}</script></body></html>\n"
    )
