"""Output formats of one run (seed 004): the human tree compared with an exact expected
rendering of a fixed, hand-built run, and the JSON form validated against its schema."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest

from flowtrail import MemoryHandler, Metadata, TraceData, get_trace
from flowtrail.formats.document import RUN_SCHEMA, run_document, run_json
from flowtrail.formats.tree import duration_text, render_tree
from flowtrail.records import Span, SpanEvent

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
RUN_ID = "run-fixed"
START = datetime(2024, 1, 15, 10, 30, 45, tzinfo=timezone.utc)
T0_NS = int(START.timestamp()) * 1_000_000_000

WORKFLOW_ID = "1111111111111111"
READ_ID = "2222222222222222"
TRANSFORM_ID = "3333333333333333"
RETRY_ID = "4444444444444444"


def at(ms: float) -> str:
    return (START + timedelta(milliseconds=ms)).isoformat(timespec="microseconds")


def span(
    span_id: str,
    parent: str | None,
    kind: str,
    name: str,
    start_ms: float,
    duration_ms: float,
    **fields,
) -> Span:
    return Span(
        run_id=RUN_ID,
        trace_id=TRACE_ID,
        span_id=span_id,
        parent_span_id=parent,
        kind=kind,
        name=name,
        start_time=at(start_ms),
        end_time=at(start_ms + duration_ms),
        start_ns=T0_NS + int(start_ms * 1_000_000),
        end_ns=T0_NS + int((start_ms + duration_ms) * 1_000_000),
        duration_ms=duration_ms,
        workflow_name="ingest",
        **fields,
    )


def log(ms: float, level: str, message: str, span_id: str | None, **fields) -> Metadata:
    return Metadata(
        run_id=RUN_ID,
        level=level,
        message=message,
        error_flag=level in ("error", "exception"),
        datetime=at(ms),
        trace_id=TRACE_ID,
        span_id=span_id,
        workflow_name="ingest",
        **fields,
    )


def fixed_run() -> TraceData:
    """A run with known times: a workflow with two nodes, one holding a stage that fails,
    logs in every span and one outside them. Spans are listed in the order they ended."""
    spans = [
        span(READ_ID, WORKFLOW_ID, "node", "read_file", 10, 45.2, attributes={"node.id": "reader"}),
        span(
            RETRY_ID,
            TRANSFORM_ID,
            "stage",
            "retry",
            70,
            20.0,
            status="error",
            status_message="ValueError: bad row",
            events=[
                SpanEvent(
                    name="exception",
                    time=at(90),
                    level="exception",
                    attributes={"exception.type": "ValueError", "exception.message": "bad row"},
                )
            ],
        ),
        span(
            TRANSFORM_ID,
            WORKFLOW_ID,
            "node",
            "transform",
            60,
            123.4,
            attributes={"node.id": "processor", "a": 1, "b": 2, "c": 3, "d": 4},
            memory_start_mb=21.0,
            memory_end_mb=25.5,
        ),
        span(
            WORKFLOW_ID,
            None,
            "workflow",
            "ingest",
            0,
            234.5,
            attributes={"owner": "data-team"},
            memory_start_mb=20.0,
            memory_end_mb=24.0,
        ),
    ]
    meta = [
        log(1, "info", "[WORKFLOW]: start", WORKFLOW_ID),
        log(12, "info", "Opening file: input.txt", READ_ID),
        log(13, "debug", "File size: 1024 bytes", READ_ID),
        log(61, "info", "Processing 10 records", TRANSFORM_ID),
        log(
            80,
            "error",
            "bad row 7",
            RETRY_ID,
            exception_type="ValueError",
            exception_message="bad row",
            filename="etl.py",
            lineno=42,
        ),
        log(240, "warning", "orphan", None),
    ]
    return TraceData(meta=meta, spans=spans)


EXPECTED_TREE = """\
Workflow Trace: 0af7651916cd43dd8448eb211c80319c
Run: run-fixed
→ workflow.ingest [2024-01-15 10:30:45] [owner=data-team]
  [INFO] [WORKFLOW]: start
  → node.read_file [reader]
    [INFO] Opening file: input.txt
    [DEBUG] File size: 1024 bytes
  ← node.read_file (45.2ms) ✓
  → node.transform [processor, a=1, b=2, c=3, +1]
    [INFO] Processing 10 records
    → stage.retry
      [ERROR] bad row 7
        ! ValueError: bad row (etl.py:42)
    ← stage.retry (20.0ms) ✗ ValueError: bad row
  ← node.transform (123.4ms) ✓
← workflow.ingest (234.5ms) ✓
[WARNING] orphan

Summary:
- Status: error
- Total Duration: 234.5ms
- Spans: 4 (node 2, stage 1, workflow 1)
- Nodes Executed: 3 (spans below the workflow, retried attempts included)
- Failures: 1 (1 span(s) ended in error, 1 error record(s))
- Success Rate: 67% of nodes ended ok (2 of 3)
- Peak Memory: 25.5 MB
- Slowest: node.transform (123.4ms)
- First Failure: stage.retry: ValueError: bad row
"""


# ---------------------------------------------------------------------- human tree


def test_human_tree_of_a_fixed_run() -> None:
    assert render_tree(fixed_run()) == EXPECTED_TREE


def test_human_tree_does_not_depend_on_input_order() -> None:
    data = fixed_run()
    shuffled = TraceData(meta=list(reversed(data.meta)), spans=list(reversed(data.spans)))
    assert render_tree(shuffled) == EXPECTED_TREE


def test_human_tree_of_records_without_spans() -> None:
    data = TraceData(meta=[log(1, "info", "hello", None), log(2, "error", "oops", None)])
    assert render_tree(data) == (
        f"Workflow Trace: {TRACE_ID}\n"
        "Run: run-fixed\n"
        "[INFO] hello\n"
        "[ERROR] oops\n"
        "\n"
        "Summary:\n"
        "- Status: error\n"
        "- Records: 2\n"
        "- Error Records: 1\n"
        "- First Failure: oops\n"
    )


def test_human_tree_seconds_and_several_roots() -> None:
    data = TraceData(
        spans=[
            span("5555555555555555", None, "job", "slow", 0, 2350.0),
            span("6666666666666666", "ffffffffffffffff", "job", "late", 3000, 0.04),
        ]
    )
    lines = render_tree(data, run_id="given-run").splitlines()
    assert lines[:6] == [
        f"Workflow Trace: {TRACE_ID}",
        "Run: given-run",
        "→ job.slow [2024-01-15 10:30:45]",
        "← job.slow (2.35s) ✓",
        "→ job.late [2024-01-15 10:30:48]",  # its parent is elsewhere: shown as a root
        "← job.late (0.0ms) ✓",
    ]
    assert "- Total Duration: 3.00s" in lines


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0.0, "0.0ms"), (45.25, "45.2ms"), (999.94, "999.9ms"), (1000.0, "1.00s"), (61_000, "61.00s")],
)
def test_duration_text(ms: float, text: str) -> None:
    assert duration_text(ms) == text


# ---------------------------------------------------------------------- JSON


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(RUN_SCHEMA)
    return jsonschema.Draft202012Validator(RUN_SCHEMA)


def test_json_of_the_fixed_run(validator: jsonschema.Draft202012Validator) -> None:
    document = json.loads(run_json(fixed_run()))
    validator.validate(document)
    assert document["run_id"] == RUN_ID
    assert document["trace_id"] == TRACE_ID
    assert document["workflow_name"] == "ingest"
    # The failed stage was not retried: the run failed, though its top spans ended ok.
    assert document["status"] == "error"
    assert (document["failures"], document["retried"]) == (1, 0)
    assert [s["operation"] for s in document["spans"]] == [
        "workflow.ingest",
        "node.read_file",
        "node.transform",
        "stage.retry",
    ]
    by_id = {s["span_id"]: s for s in document["spans"]}
    assert by_id[RETRY_ID]["parent_span_id"] == TRANSFORM_ID
    assert by_id[RETRY_ID]["status"] == "error"
    assert by_id[RETRY_ID]["events"][0]["attributes"]["exception.type"] == "ValueError"
    assert by_id[READ_ID]["duration_ms"] == 45.2
    assert by_id[READ_ID]["start_ns"] == T0_NS + 10_000_000
    assert [r["message"] for r in document["logs"]][-1] == "orphan"
    metrics = document["metrics"]
    assert metrics["span_count"] == 4
    assert metrics["node_count"] == 3
    assert metrics["error_count"] == 1
    assert metrics["success_rate"] == 0.75
    assert metrics["total_duration_ms"] == pytest.approx(234.5)
    assert metrics["peak_memory_mb"] == 25.5
    stats = {(s["kind"], s["name"]): s for s in metrics["by_name"]}
    assert stats[("node", "read_file")]["p95_ms"] == 45.2
    assert stats[("stage", "retry")]["success_rate"] == 0.0


def test_json_with_failed_root_and_no_spans(validator: jsonschema.Draft202012Validator) -> None:
    failed = TraceData(
        spans=[span(WORKFLOW_ID, None, "workflow", "ingest", 0, 10.0, status="error")]
    )
    document = run_document(failed)
    validator.validate(document)
    assert document["status"] == "error"
    assert document["run_id"] == RUN_ID

    logs_only = run_document(TraceData(meta=[log(1, "info", "hello", None)]))
    validator.validate(logs_only)
    assert logs_only["metrics"] is None and logs_only["spans"] == []


def test_json_of_a_real_run(validator: jsonschema.Draft202012Validator) -> None:
    memory = MemoryHandler()
    trace = get_trace("real-json", handlers=[memory], extras={"workflow_name": "wf"})
    with trace.span("workflow", name="wf", owner="me", tags=["a", "b"], nested={"k": 1}):
        trace.info("start")
        try:
            with trace.span("stage", name="bad"):
                raise ValueError("x")
        except ValueError:
            trace.exception("caught")
    document = json.loads(run_json(memory.find_trace_with_id("real-json")))
    validator.validate(document)
    assert document["trace_id"] == trace.trace_id
    assert len(document["spans"]) == 2
    # The exception leaving the span is recorded once, in it; "caught" is the caller's own.
    assert [r["level"] for r in document["logs"]] == ["info", "exception", "exception"]
    assert document["logs"][1]["message"] == "stage bad failed: ValueError: x"
    assert document["logs"][2]["exception_type"] == "ValueError"
    assert (document["status"], document["failures"]) == ("error", 1)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d.pop("spans"),
        lambda d: d.update(status="maybe"),
        lambda d: d["spans"][0].update(span_id="NOT-HEX-AT-ALL!!"),
        lambda d: d["spans"][0].pop("duration_ms"),
        lambda d: d["logs"][0].update(level="verbose"),
        lambda d: d["metrics"].update(success_rate=1.5),
    ],
)
def test_schema_rejects_broken_documents(
    validator: jsonschema.Draft202012Validator, breakage
) -> None:
    document = copy.deepcopy(json.loads(run_json(fixed_run())))
    breakage(document)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(document)
