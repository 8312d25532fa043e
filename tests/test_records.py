"""Records: `Message` prefixes and emoji, `Metadata` fields and JSON encoding, `TraceData`."""

from __future__ import annotations

import msgspec
import pytest

from flowtrail.records import (
    ERROR_LEVELS,
    LEVELS,
    METADATA_FIELDS,
    PREFIX_LOGS,
    Message,
    Metadata,
    RunSummary,
    TraceData,
    decode_metadata,
    encode,
    encode_lines,
    render_message,
)

#: Every field named by seed 000 (metadata comment and SQLite schema) and seed 002 (the
#: Elasticsearch document).
SEED_FIELDS = (
    "run_id",
    "parent_run_id",
    "level",
    "message",
    "mode",
    "error_flag",
    "datetime",
    "process",
    "thread",
    "filename",
    "lineno",
    "cut_id",
    "workflow_name",
    "stage_name",
    "job_name",
    "duration_ms",
    "memory_usage_mb",
    "cpu_usage_percent",
    "trace_id",
    "span_id",
    "parent_span_id",
    "exception_type",
    "exception_message",
    "stack_trace",
    "error_code",
    "user_id",
    "tenant_id",
    "environment",
    "hostname",
    "ip_address",
    "python_version",
    "package_version",
    "tags",
    "metadata",
    "created_at",
)

#: The example document of seed 002, as JSON.
SEED_002_DOCUMENT = b"""{
  "run_id": "workflow-123",
  "parent_run_id": "parent-456",
  "level": "info",
  "message": "Processing data",
  "mode": "stdout",
  "datetime": "2024-01-01T12:00:00",
  "process": 12345,
  "thread": 67890,
  "filename": "workflow.py",
  "lineno": 42,
  "cut_id": "workflow-123",
  "workflow_name": "data-pipeline",
  "stage_name": "validation",
  "job_name": "validate-data",
  "duration_ms": 150.5,
  "memory_usage_mb": 256.0,
  "cpu_usage_percent": 25.5,
  "trace_id": "trace-123",
  "span_id": "span-456",
  "parent_span_id": "parent-span-789",
  "exception_type": "ValueError",
  "exception_message": "Invalid data",
  "stack_trace": "...",
  "error_code": "VALIDATION_ERROR",
  "user_id": "user-123",
  "tenant_id": "tenant-456",
  "environment": "production",
  "hostname": "server-01",
  "ip_address": "192.168.1.100",
  "python_version": "3.9.0",
  "package_version": "1.2.3",
  "tags": ["service:workflow", "team:data"],
  "metadata": {"custom_field": "value"},
  "created_at": "2024-01-01T12:00:00"
}"""


def full_record() -> Metadata:
    """A record with every field set to a non-default value."""
    return Metadata(
        run_id="workflow-123",
        parent_run_id="parent-456",
        level="exception",
        message='[STAGE]: failed with ünïcode and "quotes"\nsecond line',
        error_flag=True,
        datetime="2026-01-01T12:00:00.123456+07:00",
        process=12345,
        thread=67890,
        filename="workflow.py",
        lineno=42,
        cut_id="parent-456 -> workflow-123",
        workflow_name="data-pipeline",
        stage_name="validation",
        job_name="validate-data",
        duration_ms=150.5,
        memory_usage_mb=256.0,
        cpu_usage_percent=25.5,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_span_id="00f067aa0ba902b7",
        exception_type="ValueError",
        exception_message="Invalid data",
        stack_trace='Traceback (most recent call last):\n  File "x.py", line 1\n',
        error_code="VALIDATION_ERROR",
        user_id="user-123",
        tenant_id="tenant-456",
        environment="production",
        hostname="server-01",
        ip_address="192.168.1.100",
        python_version="3.11.9",
        package_version="1.2.3",
        tags=["service:workflow", "team:data"],
        metadata={"custom_field": "value", "nested": {"n": [1, 2.5, None, True]}},
        created_at="2026-01-01T12:00:00.123456+07:00",
        mode="stderr",
    )


# ---------------------------------------------------------------------- Message


@pytest.mark.parametrize("name", list(PREFIX_LOGS))
def test_message_from_str_parses_each_prefix(name: str) -> None:
    msg = Message.from_str(f"[{name}]: Starting execution")
    assert msg.name == name
    assert msg.message == "Starting execution"


@pytest.mark.parametrize("name", list(PREFIX_LOGS))
def test_message_prepare_puts_the_prefix_emoji_first(name: str) -> None:
    msg = Message.from_str(f"[{name}]: Starting execution")
    emoji = PREFIX_LOGS[name]["emoji"]
    assert msg.prepare({"log_add_emoji": True}) == f"{emoji} [{name}]: Starting execution"
    assert msg.prepare({"log_add_emoji": False}) == f"[{name}]: Starting execution"


def test_message_seed_example_values() -> None:
    msg = Message.from_str("[WORKFLOW]: Starting execution")
    assert msg.name == "WORKFLOW"
    assert msg.message == "Starting execution"
    assert msg.prepare({"log_add_emoji": True}) == "🏃 [WORKFLOW]: Starting execution"


def test_message_without_prefix_is_a_caller_message() -> None:
    msg = Message.from_str("Just some text")
    assert msg.name is None
    assert msg.message == "Just some text"
    assert msg.prepare({"log_add_emoji": True}) == "📍 [CALLER]: Just some text"
    assert msg.prepare({"log_add_emoji": False}) == "[CALLER]: Just some text"


def test_message_prepare_adds_emoji_by_default() -> None:
    assert Message.from_str("[JOB]: go").prepare() == "⛓️ [JOB]: go"
    assert Message.from_str("[JOB]: go").prepare({}) == "⛓️ [JOB]: go"


def test_message_unknown_prefix_stays_in_the_text() -> None:
    msg = Message.from_str("[NOPE]: hello")
    assert msg.name is None
    assert msg.message == "[NOPE]: hello"


def test_message_prefix_without_space_and_multiline_text() -> None:
    msg = Message.from_str("[STAGE]:run\nsecond line")
    assert msg.name == "STAGE"
    assert msg.message == "run\nsecond line"


def test_message_prefix_only_at_the_start() -> None:
    msg = Message.from_str("text then [STAGE]: not a prefix")
    assert msg.name is None
    assert msg.message == "text then [STAGE]: not a prefix"


def test_message_empty_string() -> None:
    msg = Message.from_str("")
    assert msg.name is None
    assert msg.message == ""


def test_render_message_adds_emoji_only_for_known_prefixes() -> None:
    assert render_message("[WORKFLOW]: go", True) == "🏃 [WORKFLOW]: go"
    assert render_message("[WORKFLOW]: go", False) == "[WORKFLOW]: go"
    assert render_message("[NOPE]: go", True) == "[NOPE]: go"
    assert render_message("plain", True) == "plain"


# ---------------------------------------------------------------------- Metadata


def test_metadata_has_every_seed_field() -> None:
    missing = [name for name in SEED_FIELDS if name not in METADATA_FIELDS]
    assert missing == []
    assert set(Metadata.__struct_fields__) == set(SEED_FIELDS)


def test_metadata_defaults() -> None:
    record = Metadata(run_id="r")
    assert record.level == "info"
    assert record.error_flag is False
    assert record.mode == "stdout"
    assert record.tags == []
    assert record.metadata == {}
    for name in ("parent_run_id", "exception_type", "stack_trace", "workflow_name", "span_id"):
        assert getattr(record, name) is None
    # mutable defaults are not shared between records
    assert Metadata(run_id="a").tags is not Metadata(run_id="b").tags


def test_metadata_is_immutable() -> None:
    record = Metadata(run_id="r")
    with pytest.raises(AttributeError):
        record.message = "changed"  # type: ignore[misc]


def test_metadata_requires_run_id() -> None:
    with pytest.raises(TypeError):
        Metadata()  # type: ignore[call-arg]


def test_metadata_model_dump_has_every_field() -> None:
    record = full_record()
    dumped = record.model_dump()
    assert set(dumped) == set(SEED_FIELDS)
    assert dumped["tags"] == ["service:workflow", "team:data"]
    assert dumped["duration_ms"] == 150.5


def test_metadata_json_round_trip() -> None:
    record = full_record()
    data = encode(record)
    assert isinstance(data, bytes)
    back = decode_metadata(data)
    assert back == record
    assert decode_metadata(data.decode()) == record


def test_metadata_json_has_every_field_by_name() -> None:
    document = msgspec.json.decode(encode(full_record()))
    assert set(document) == set(SEED_FIELDS)
    assert document["error_flag"] is True
    assert document["metadata"]["nested"] == {"n": [1, 2.5, None, True]}


def test_metadata_json_round_trip_of_defaults() -> None:
    record = Metadata(run_id="only-the-run")
    assert decode_metadata(encode(record)) == record


def test_encode_lines_one_json_object_a_line() -> None:
    records = [full_record(), Metadata(run_id="b", message="two"), Metadata(run_id="c")]
    data = encode_lines(records)
    lines = data.split(b"\n")
    assert lines[-1] == b""  # trailing newline
    assert len(lines) == 4
    assert [decode_metadata(line) for line in lines[:-1]] == records


def test_decode_seed_002_document() -> None:
    record = decode_metadata(SEED_002_DOCUMENT)
    assert record.run_id == "workflow-123"
    assert record.parent_run_id == "parent-456"
    assert record.mode == "stdout"
    assert record.lineno == 42
    assert record.cpu_usage_percent == 25.5
    assert record.tags == ["service:workflow", "team:data"]
    assert record.metadata == {"custom_field": "value"}
    assert record.created_at == "2024-01-01T12:00:00"


def test_decode_rejects_wrong_types() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_metadata(b'{"run_id": "r", "lineno": "not a number"}')
    with pytest.raises(msgspec.ValidationError):
        decode_metadata(b'{"message": "no run id"}')
    with pytest.raises(msgspec.DecodeError):
        decode_metadata(b'{"run_id": "torn')


def test_levels_order_and_error_levels() -> None:
    assert list(LEVELS) == ["debug", "info", "warning", "error", "exception"]
    values = list(LEVELS.values())
    assert values == sorted(values)
    assert {"error", "exception"} == ERROR_LEVELS


# ---------------------------------------------------------------------- TraceData


def test_trace_data_fields() -> None:
    data = TraceData()
    assert data.stdout == ""
    assert data.stderr == ""
    assert data.meta == []
    assert data.spans == []
    assert data.run_id is None
    assert set(TraceData.__struct_fields__) >= {"stdout", "stderr", "meta", "spans"}


def test_trace_data_with_records() -> None:
    records = [Metadata(run_id="r1", message="a"), Metadata(run_id="r1", message="b")]
    data = TraceData(stdout="a\n", stderr="b\n", meta=records)
    assert data.stdout == "a\n"
    assert data.stderr == "b\n"
    assert data.meta[0].message == "a"
    assert data.run_id == "r1"


def test_trace_data_json_round_trip() -> None:
    data = TraceData(stdout="out\n", stderr="", meta=[full_record()])
    back = msgspec.json.decode(msgspec.json.encode(data), type=TraceData)
    assert back.meta == data.meta
    assert back.stdout == "out\n"


def test_run_summary_status_and_duration() -> None:
    ok = RunSummary(
        run_id="r", start="2026-01-01T00:00:00+00:00", end="2026-01-01T00:00:02.5+00:00"
    )
    assert ok.status == "ok"
    assert ok.duration_s == 2.5
    assert RunSummary(run_id="r", errors=1).status == "error"
    assert RunSummary(run_id="r").duration_s is None
