"""The JSON form of a run (seed 004): trace id, spans, logs and metrics, and the JSON
Schema it follows, for other tools to import."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter
from typing import Any

import msgspec

from flowtrail.handlers.query import without_log_events
from flowtrail.metrics import aggregate, metrics_dict
from flowtrail.records import Metadata, Span, TraceData
from flowtrail.status import RunStatus, run_status

SCHEMA_ID = "https://flowtrail.dev/schema/run-1.json"


def _span_doc(span: Span) -> dict[str, Any]:
    # A span's ``log`` events repeat the records written in it, which are in "logs"
    # (with the span's id): the document holds each log once.
    doc = msgspec.to_builtins(without_log_events(span))
    doc["operation"] = f"{span.kind}.{span.name}"
    return doc


def _head(
    spans: Sequence[Span],
    records: Sequence[Metadata],
    run_id: str | None,
    state: RunStatus,
    workflow: str | None = None,
) -> dict[str, Any]:
    """The document's fields before its spans and logs."""
    run_id = run_id or (records[0].run_id if records else spans[0].run_id if spans else None)
    trace_id = spans[0].trace_id if spans else (records[0].trace_id if records else None)
    workflow = (
        workflow
        or next((r.workflow_name for r in records if r.workflow_name), None)
        or next((s.workflow_name for s in spans if s.workflow_name), None)
    )
    return {
        "$schema": SCHEMA_ID,
        "run_id": run_id,
        "trace_id": trace_id,
        "workflow_name": workflow,
        "status": state.status,
        "retried": state.retried,
        "failures": state.failures,
        "first_failure": state.first_failure,
        "interrupted_by": state.interrupted_by,
    }


def run_document(
    data: TraceData,
    *,
    run_id: str | None = None,
    spans: Sequence[Span] | None = None,
    logs: Sequence[Metadata] | None = None,
    state: RunStatus | None = None,
) -> dict[str, Any]:
    """A plain-data document of one run. ``spans`` and ``logs``: the ones to put in it
    (default: all of the run's); the status and metrics are always the whole run's
    (``state``: its status, if already known)."""
    by_start = attrgetter("start_ns", "end_ns")
    every = sorted(data.spans, key=by_start)
    shown = every if spans is None else sorted(spans, key=by_start)
    if state is None:
        state = run_status(data.meta, every, data.open_spans)
    return {
        **_head(every, data.meta or list(logs or ())[:1], run_id, state),
        "spans": [_span_doc(span) for span in shown],
        "logs": msgspec.to_builtins(data.meta if logs is None else logs),
        "metrics": metrics_dict(aggregate(every)) if every else None,
    }


def run_json(data: TraceData, *, run_id: str | None = None, indent: int = 2) -> str:
    """The JSON text of `run_document`."""
    raw = msgspec.json.encode(run_document(data, run_id=run_id))
    return msgspec.json.format(raw, indent=indent).decode() if indent else raw.decode()


def run_json_chunks(
    spans: list[Span],
    records: Iterable[Metadata],
    *,
    run_id: str,
    first: Metadata | None = None,
    state: RunStatus | None = None,
    indent: int = 2,
) -> Iterator[str]:
    """The text of `run_json` in pieces, reading ``records`` as it goes: a run of any
    size is written in bounded memory. ``first`` (the run's first record) gives the trace
    id and workflow when there are no spans; ``state`` is the run's status
    (`flowtrail.status.run_status`, from its error records)."""
    spans = sorted(spans, key=lambda s: (s.start_ns, s.end_ns))
    state = state or run_status([], spans)
    head = _head(spans[:1], [first] if first else [], run_id, state)
    encode = msgspec.json.encode
    pad = " " * indent
    sep = ",\n" + pad if indent else ","

    def pretty(value: Any, depth: int) -> str:
        if not indent:
            return encode(value).decode()
        text = msgspec.json.format(encode(value), indent=indent).decode()
        return text.replace("\n", "\n" + pad * depth)

    def array(name: str, items: Iterable[Any]) -> Iterator[str]:
        yield sep + (f'"{name}": [' if indent else f'"{name}":[')
        batch: list[str] = []
        empty = True
        for item in items:
            batch.append(("\n" + pad * 2 if indent else "") + pretty(item, 2))
            if len(batch) >= 500:
                yield ("" if empty else ",") + ",".join(batch)
                empty, batch = False, []
        if batch:
            yield ("" if empty else ",") + ",".join(batch)
            empty = False
        yield "]" if empty or not indent else "\n" + pad + "]"

    text = pretty(head, 0)
    yield text[: text.rindex("}")].rstrip()
    yield from array("spans", map(_span_doc, spans))
    yield from array("logs", records)
    metrics = metrics_dict(aggregate(spans)) if spans else None
    yield sep + ('"metrics": ' if indent else '"metrics":') + pretty(metrics, 1)
    yield "\n}" if indent else "}"


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
        "status": {"enum": ["ok", "error", "interrupted", "running"]},
        "retried": {"type": "integer", "minimum": 0},
        "failures": {"type": "integer", "minimum": 0},
        "first_failure": {"type": ["string", "null"]},
        "interrupted_by": {"type": ["string", "null"]},
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
