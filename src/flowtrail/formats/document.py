"""The JSON form of a run (seed 004): trace id, spans, logs and metrics, and the JSON
Schema it follows, for other tools to import."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import msgspec

from flowtrail.metrics import aggregate, metrics_dict
from flowtrail.records import Metadata, Span, TraceData

SCHEMA_ID = "https://flowtrail.dev/schema/run-1.json"


def run_document(
    data: TraceData,
    *,
    run_id: str | None = None,
    spans: Sequence[Span] | None = None,
    logs: Sequence[Metadata] | None = None,
) -> dict[str, Any]:
    """A plain-data document of one run. ``spans`` and ``logs``: the ones to put in it
    (default: all of the run's); the status and metrics are always the whole run's."""
    by_start = attrgetter("start_ns", "end_ns")
    shown = None if spans is None else sorted(spans, key=by_start)
    spans = sorted(data.spans, key=by_start)
    records = data.meta
    run_id = run_id or (records[0].run_id if records else spans[0].run_id if spans else None)
    trace_id = spans[0].trace_id if spans else (records[0].trace_id if records else None)
    workflow = next((r.workflow_name for r in records if r.workflow_name), None) or next(
        (s.workflow_name for s in spans if s.workflow_name), None
    )
    span_docs = []
    for span in spans if shown is None else shown:
        doc = msgspec.to_builtins(span)
        doc["operation"] = f"{span.kind}.{span.name}"
        span_docs.append(doc)
    ids = {x.span_id for x in spans}
    failed = any(s.status == "error" for s in spans if s.parent_span_id not in ids)
    return {
        "$schema": SCHEMA_ID,
        "run_id": run_id,
        "trace_id": trace_id,
        "workflow_name": workflow,
        "status": "error" if failed else "ok",
        "spans": span_docs,
        "logs": msgspec.to_builtins(records if logs is None else logs),
        "metrics": metrics_dict(aggregate(spans)) if spans else None,
    }


def run_json(data: TraceData, *, run_id: str | None = None, indent: int = 2) -> str:
    """The JSON text of `run_document`."""
    raw = msgspec.json.encode(run_document(data, run_id=run_id))
    return msgspec.json.format(raw, indent=indent).decode() if indent else raw.decode()


_STATS = {
    "type": "object",
    "required": [
        "kind",
        "name",
        "count",
        "errors",
        "success_rate",
        "min_ms",
        "max_ms",
        "mean_ms",
        "p50_ms",
        "p95_ms",
    ],
    "properties": {
        "kind": {"type": "string"},
        "name": {"type": "string"},
        "count": {"type": "integer", "minimum": 1},
        "errors": {"type": "integer", "minimum": 0},
        "success_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "min_ms": {"type": "number"},
        "max_ms": {"type": "number"},
        "mean_ms": {"type": "number"},
        "p50_ms": {"type": "number"},
        "p95_ms": {"type": "number"},
        "total_ms": {"type": "number"},
        "peak_memory_mb": {"type": ["number", "null"]},
    },
}

#: JSON Schema (draft 2020-12) of `run_document`.
RUN_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "flowtrail run",
    "type": "object",
    "required": ["run_id", "trace_id", "status", "spans", "logs", "metrics"],
    "properties": {
        "$schema": {"type": "string"},
        "run_id": {"type": ["string", "null"]},
        "trace_id": {"type": ["string", "null"]},
        "workflow_name": {"type": ["string", "null"]},
        "status": {"enum": ["ok", "error"]},
        "spans": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "trace_id",
                    "span_id",
                    "parent_span_id",
                    "name",
                    "kind",
                    "operation",
                    "start_ns",
                    "end_ns",
                    "duration_ms",
                    "status",
                    "attributes",
                    "events",
                ],
                "properties": {
                    "trace_id": {"type": "string"},
                    "span_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "parent_span_id": {"type": ["string", "null"]},
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "operation": {"type": "string"},
                    "start_time": {"type": "string"},
                    "end_time": {"type": "string"},
                    "start_ns": {"type": "integer"},
                    "end_ns": {"type": "integer"},
                    "duration_ms": {"type": "number", "minimum": 0},
                    "status": {"enum": ["ok", "error", "unset"]},
                    "status_message": {"type": ["string", "null"]},
                    "attributes": {"type": "object"},
                    "events": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "time"],
                            "properties": {
                                "name": {"type": "string"},
                                "time": {"type": "string"},
                                "level": {"type": ["string", "null"]},
                                "attributes": {"type": "object"},
                            },
                        },
                    },
                    "cpu_time_ms": {"type": ["number", "null"]},
                    "cpu_percent": {"type": ["number", "null"]},
                    "memory_start_mb": {"type": ["number", "null"]},
                    "memory_end_mb": {"type": ["number", "null"]},
                },
            },
        },
        "logs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["run_id", "level", "message", "datetime"],
                "properties": {
                    "run_id": {"type": "string"},
                    "level": {"enum": ["debug", "info", "warning", "error", "exception"]},
                    "message": {"type": "string"},
                    "datetime": {"type": "string"},
                    "span_id": {"type": ["string", "null"]},
                },
            },
        },
        "metrics": {
            "type": ["object", "null"],
            "required": [
                "span_count",
                "node_count",
                "error_count",
                "success_rate",
                "total_duration_ms",
                "by_name",
            ],
            "properties": {
                "span_count": {"type": "integer"},
                "node_count": {"type": "integer"},
                "error_count": {"type": "integer"},
                "success_rate": {"type": "number", "minimum": 0, "maximum": 1},
                "total_duration_ms": {"type": "number"},
                "peak_memory_mb": {"type": ["number", "null"]},
                "kinds": {"type": "object"},
                "by_name": {"type": "array", "items": _STATS},
            },
        },
    },
}
