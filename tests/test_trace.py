"""The front: `get_trace`/`Trace` records, caller location, time stamps, exceptions and
the buffering ``with`` block."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import sqlite3
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import flowtrail
from conftest import run_python
from flowtrail import (
    FileHandler,
    FlowtrailLogHandler,
    MemoryHandler,
    Metadata,
    SQLiteHandler,
    Trace,
    get_trace,
)

THIS_FILE = Path(__file__).name
CLOSE_ENOUGH = timedelta(seconds=5)


@pytest.fixture(autouse=True)
def close_pipelines():
    """Stop the workers after each test (relative store paths are process-wide)."""
    yield
    flowtrail.shutdown(10.0)


def here() -> int:
    """The line number of the caller's next line."""
    return sys._getframe(1).f_lineno + 1


def memory_trace(run_id: str = "run-1", **kwargs) -> tuple[Trace, MemoryHandler]:
    memory = MemoryHandler()
    return get_trace(run_id, handlers=[memory], **kwargs), memory


# ---------------------------------------------------------------------- record content


def test_record_basic_fields() -> None:
    trace, memory = memory_trace("workflow-123", parent_run_id=None)
    trace.info("hello")
    trace.error("failed")
    info, error = memory.records
    assert isinstance(info, Metadata)
    assert (info.run_id, info.level, info.message) == ("workflow-123", "info", "hello")
    assert (info.error_flag, info.mode) == (False, "stdout")
    assert (error.error_flag, error.mode) == (True, "stderr")
    assert info.parent_run_id is None
    assert info.cut_id == "workflow-123"
    assert info.process == os.getpid()
    assert info.thread != 0
    assert info.python_version == platform.python_version()
    assert info.hostname
    assert len(info.trace_id) == 32 and int(info.trace_id, 16) >= 0
    assert info.trace_id == error.trace_id == trace.trace_id
    assert info.created_at == info.datetime


def test_run_id_is_generated_when_missing() -> None:
    first = get_trace(handlers=[MemoryHandler()])
    second = get_trace(handlers=[MemoryHandler()])
    assert first.run_id and second.run_id and first.run_id != second.run_id


def test_parent_run_id_and_cut_id() -> None:
    trace, memory = memory_trace("child-run", parent_run_id="parent-run")
    trace.info("x")
    record = memory.records[0]
    assert record.parent_run_id == "parent-run"
    assert record.cut_id == "parent-run -> child-run"


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", "a\\b", "nul\x00byte", ".."])
def test_unsafe_run_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        get_trace(bad, handlers=[MemoryHandler()])


def test_non_string_messages_are_converted() -> None:
    trace, memory = memory_trace()
    trace.info(42)
    trace.info({"a": 1})
    assert memory.messages == ["42", "{'a': 1}"]


def test_extras_put_seed_002_context_fields_on_every_record() -> None:
    extras = {
        "workflow_name": "data-processing-pipeline",
        "stage_name": "data-validation",
        "job_name": "validate-customer-data",
        "trace_id": "trace-123",
        "span_id": "span-456",
        "parent_span_id": "parent-span-789",
        "duration_ms": 150.5,
        "memory_usage_mb": 256.0,
        "cpu_usage_percent": 25.5,
        "error_code": "VALIDATION_ERROR",
        "user_id": "user-123",
        "tenant_id": "tenant-456",
        "environment": "production",
        "package_version": "1.2.3",
        "tags": ["service:workflow", "team:data-engineering"],
        "metadata": {"custom_field": "value"},
    }
    trace, memory = memory_trace("workflow-123", parent_run_id="parent-456", extras=extras)
    trace.info("one")
    trace.warning("two")
    for record in memory.records:
        for key, value in extras.items():
            assert getattr(record, key) == value, key


def test_extras_may_set_hostname_and_ip_address() -> None:
    """Seed 002's document has ``hostname`` and ``ip_address``; they are run fields that
    `CONTEXT_FIELDS` accepts from extras."""
    trace, memory = memory_trace(
        "workflow-123", extras={"hostname": "server-01", "ip_address": "192.168.1.100"}
    )
    trace.info("x")
    assert memory.records[0].hostname == "server-01"
    assert memory.records[0].ip_address == "192.168.1.100"


def test_invalid_record_field_in_extras_is_a_config_error() -> None:
    with pytest.raises(flowtrail.ConfigError, match="duration_ms"):
        get_trace("r", handlers=[MemoryHandler()], extras={"duration_ms": "slow"})


def test_log_level_setting_filters_records() -> None:
    trace, memory = memory_trace(log_level="warning")
    trace.debug("d")
    trace.info("i")
    trace.warning("w")
    trace.error("e")
    trace.exception("x")
    assert [r.level for r in memory.records] == ["warning", "error", "exception"]


def test_emit_with_each_level_and_unknown_level() -> None:
    trace, memory = memory_trace()
    for level in flowtrail.LEVELS:
        trace.emit(f"at {level}", level)
    assert [r.level for r in memory.records] == list(flowtrail.LEVELS)
    with pytest.raises(ValueError, match="verbose"):
        trace.emit("x", "verbose")


def test_async_methods_record_their_levels() -> None:
    trace, memory = memory_trace()

    async def job() -> None:
        await trace.adebug("d")
        await trace.ainfo("i")
        await trace.awarning("w")
        await trace.aerror("e")
        await trace.aexception("x")
        await trace.amit("m", level="warning")
        await trace.amit("default level")

    asyncio.run(job())
    assert [(r.level, r.message) for r in memory.records] == [
        ("debug", "d"),
        ("info", "i"),
        ("warning", "w"),
        ("error", "e"),
        ("exception", "x"),
        ("warning", "m"),
        ("info", "default level"),
    ]


# ---------------------------------------------------------------------- caller location


def test_caller_location_at_module_level_of_a_script(tmp_path: Path) -> None:
    script = tmp_path / "job_script.py"
    script.write_text(
        textwrap.dedent(
            """\
            import json
            from flowtrail import MemoryHandler, get_trace

            memory = MemoryHandler()
            trace = get_trace("script-run", handlers=[memory])
            trace.info("from module level")  # THE CALL
            record = memory.records[0]
            print(json.dumps([record.filename, record.lineno]))
            """
        )
    )
    expected = 1 + script.read_text().splitlines().index(
        'trace.info("from module level")  # THE CALL'
    )
    result = run_python(
        "import runpy; runpy.run_path('job_script.py', run_name='__main__')", tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == ["job_script.py", expected]


def test_caller_location_in_a_function() -> None:
    trace, memory = memory_trace()

    def stage() -> int:
        line = here()
        trace.info("in a function")
        return line

    line = stage()
    assert (memory.records[0].filename, memory.records[0].lineno) == (THIS_FILE, line)


def test_caller_location_of_each_method() -> None:
    trace, memory = memory_trace()
    lines = []
    for method in (trace.debug, trace.info, trace.warning, trace.error, trace.exception):
        lines.append(here())
        method("x")
    assert [(r.filename, r.lineno) for r in memory.records] == [(THIS_FILE, n) for n in lines]


def test_caller_location_through_emit() -> None:
    trace, memory = memory_trace()
    line = here()
    trace.emit("via emit", "warning")
    assert (memory.records[0].filename, memory.records[0].lineno) == (THIS_FILE, line)


def test_caller_location_in_async_def() -> None:
    trace, memory = memory_trace()

    async def job() -> list[int]:
        lines = [here()]
        await trace.ainfo("ainfo")
        lines.append(here())
        await trace.amit("amit", level="error")
        lines.append(here())
        await trace.aexception("aexception")
        await asyncio.sleep(0)
        lines.append(here())
        await trace.amit("after a suspension")
        return lines

    lines = asyncio.run(job())
    assert [(r.filename, r.lineno) for r in memory.records] == [(THIS_FILE, n) for n in lines]


def test_caller_location_through_the_stdlib_bridge() -> None:
    memory = MemoryHandler()
    logger = logging.getLogger("test_trace.bridge_location")
    logger.setLevel(logging.DEBUG)
    bridge = FlowtrailLogHandler()
    logger.addHandler(bridge)
    try:
        with get_trace("bridged", handlers=[memory]):
            line = here()
            logger.info("from stdlib")
    finally:
        logger.removeHandler(bridge)
    record = memory.records[0]
    assert (record.run_id, record.filename, record.lineno) == ("bridged", THIS_FILE, line)


def test_frame_layer_two_reports_the_caller_of_a_wrapper() -> None:
    trace, memory = memory_trace(logs_trace_frame_layer=2)

    def log(message: str) -> None:
        trace.info(message)

    line = here()
    log("wrapped")
    assert (memory.records[0].filename, memory.records[0].lineno) == (THIS_FILE, line)


def test_frame_layer_beyond_the_stack_does_not_fail() -> None:
    trace, memory = memory_trace(logs_trace_frame_layer=10_000)
    trace.info("deep")
    assert memory.messages == ["deep"]
    assert memory.records[0].filename


# ---------------------------------------------------------------------- time


def test_datetime_is_aware_utc_and_now() -> None:
    trace, memory = memory_trace()
    trace.info("now")
    record = memory.records[0]
    stamp = datetime.fromisoformat(record.datetime)
    assert stamp.tzinfo is not None
    assert stamp.utcoffset() == timedelta(0)
    assert record.datetime.endswith("+00:00")
    assert abs(datetime.now(timezone.utc) - stamp) < CLOSE_ENOUGH
    assert datetime.fromisoformat(record.created_at) == stamp


def test_datetime_in_log_tz_is_the_same_instant() -> None:
    utc_trace, utc_memory = memory_trace("utc-run")
    bkk_trace, bkk_memory = memory_trace("bkk-run", log_tz="Asia/Bangkok")
    utc_trace.info("utc")
    bkk_trace.info("bangkok")
    utc_stamp = datetime.fromisoformat(utc_memory.records[0].datetime)
    bkk_text = bkk_memory.records[0].datetime
    bkk_stamp = datetime.fromisoformat(bkk_text)
    assert bkk_text.endswith("+07:00")
    assert bkk_stamp.utcoffset() == timedelta(hours=7)
    assert abs(bkk_stamp - utc_stamp) < CLOSE_ENOUGH
    assert abs(datetime.now(timezone.utc) - bkk_stamp) < CLOSE_ENOUGH


def test_time_stamps_increase() -> None:
    trace, memory = memory_trace()
    for index in range(200):
        trace.info(str(index))
    stamps = [datetime.fromisoformat(r.datetime) for r in memory.records]
    assert stamps == sorted(stamps)


def test_local_time_is_never_labelled_utc(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """\
        import json, time
        from datetime import datetime, timezone
        from flowtrail import MemoryHandler, get_trace

        memory = MemoryHandler()
        get_trace("utc", handlers=[memory]).info("a")
        get_trace("ny", handlers=[memory], log_tz="America/New_York").info("b")
        print(json.dumps({
            "records": [r.datetime for r in memory.records],
            "now": datetime.now(timezone.utc).isoformat(),
            "local_offset": time.localtime().tm_gmtoff,
        }))
        """
    )
    result = run_python(code, tmp_path, env={"TZ": "America/New_York"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.splitlines()[-1])
    assert data["local_offset"] in (-4 * 3600, -5 * 3600), "TZ was not applied to the child"
    now = datetime.fromisoformat(data["now"])
    utc_text, ny_text = data["records"]
    utc_stamp, ny_stamp = datetime.fromisoformat(utc_text), datetime.fromisoformat(ny_text)
    assert utc_text.endswith("+00:00")
    assert abs(utc_stamp - now) < CLOSE_ENOUGH  # local wall time labelled +00:00 is 4-5 h off
    expected_offset = ZoneInfo("America/New_York").utcoffset(now.replace(tzinfo=None))
    assert ny_stamp.utcoffset() == expected_offset
    assert abs(ny_stamp - now) < CLOSE_ENOUGH


# ---------------------------------------------------------------------- exceptions


def test_exception_inside_except_records_the_exception() -> None:
    trace, memory = memory_trace()
    try:
        raise ValueError("bad value 42")  # the raising line
    except ValueError:
        trace.exception("it failed")
    record = memory.records[0]
    assert record.level == "exception"
    assert record.error_flag is True and record.mode == "stderr"
    assert record.message == "it failed"
    assert record.exception_type == "ValueError"
    assert record.exception_message == "bad value 42"
    assert record.stack_trace.startswith("Traceback (most recent call last):")
    assert 'raise ValueError("bad value 42")  # the raising line' in record.stack_trace
    assert THIS_FILE in record.stack_trace
    assert record.stack_trace.rstrip().endswith("ValueError: bad value 42")


def test_exception_with_a_chained_cause() -> None:
    trace, memory = memory_trace()
    try:
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError:
        trace.exception("chained")
    record = memory.records[0]
    assert record.exception_type == "RuntimeError"
    assert "KeyError" in record.stack_trace
    assert "direct cause" in record.stack_trace


def test_exception_outside_except_has_no_exception_fields() -> None:
    trace, memory = memory_trace()
    trace.exception("no active exception")
    record = memory.records[0]
    assert record.level == "exception"
    assert (record.exception_type, record.exception_message, record.stack_trace) == (
        None,
        None,
        None,
    )


def test_other_levels_inside_except_carry_no_exception() -> None:
    trace, memory = memory_trace()
    try:
        raise ValueError("x")
    except ValueError:
        trace.error("plain error")
    assert memory.records[0].exception_type is None


def test_aexception_records_the_exception() -> None:
    trace, memory = memory_trace()

    async def job() -> None:
        try:
            raise KeyError("k")
        except KeyError:
            await trace.aexception("async failure")

    asyncio.run(job())
    assert memory.records[0].exception_type == "KeyError"
    assert "raise KeyError" in memory.records[0].stack_trace


def test_exception_in_with_block_is_recorded_and_reraised(tmp_path: Path) -> None:
    memory = MemoryHandler()
    store = tmp_path / "store"
    handlers = [memory, FileHandler(path=str(store))]
    with pytest.raises(ZeroDivisionError), get_trace("boom-run", handlers=handlers) as trace:
        trace.info("before")
        1 / 0  # noqa: B018
    assert memory.messages[0] == "before"
    record = memory.records[-1]
    assert record.level == "exception"
    assert record.exception_type == "ZeroDivisionError"
    assert record.exception_message == "division by zero"
    assert "ZeroDivisionError" in record.message
    assert "1 / 0" in record.stack_trace
    assert record.filename == THIS_FILE
    # both are in the store once the block is left, without another flush
    stored = FileHandler(path=str(store)).find_trace_with_id("boom-run")
    assert [r.level for r in stored.meta] == ["info", "exception"]
    assert stored.meta[-1].exception_type == "ZeroDivisionError"
    assert "division by zero" in stored.stderr
    assert flowtrail.active_trace() is None


# ---------------------------------------------------------------------- buffering


def read_metadata_file(store: Path, run_id: str) -> list[str]:
    """Read the file store directly: this does not flush flowtrail's pipelines."""
    path = store / f"run_id={run_id}" / "metadata.txt"
    if not path.exists():
        return []
    return [json.loads(line)["message"] for line in path.read_text().splitlines() if line]


def read_sqlite(db: Path, run_id: str) -> list[str]:
    """Read the SQLite store directly: this does not flush flowtrail's pipelines."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [
            row[0]
            for row in conn.execute(
                "SELECT message FROM traces WHERE run_id = ? ORDER BY id", (run_id,)
            )
        ]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_with_block_buffers_until_it_ends(tmp_path: Path) -> None:
    store, db = tmp_path / "files", tmp_path / "db" / "traces.db"
    handlers = [FileHandler(path=str(store)), SQLiteHandler(path=str(db))]
    with get_trace("buffered", handlers=handlers) as trace:
        assert flowtrail.active_trace() is trace
        trace.info("one")
        trace.warning("two")
        trace.error("three")
        # held on the trace, not yet handed to the pipelines
        assert [r.message for r in trace._buffer] == ["one", "two", "three"]
        assert all(p.pending() == 0 for p in trace.pipelines())
        assert all(p.stats.exported == 0 for p in trace.pipelines())
        flowtrail.flush_all(10.0)  # flushing the pipelines does not write held records
        assert read_metadata_file(store, "buffered") == []
        assert read_sqlite(db, "buffered") == []
    # written and flushed when the block ends
    assert read_metadata_file(store, "buffered") == ["one", "two", "three"]
    assert read_sqlite(db, "buffered") == ["one", "two", "three"]
    assert flowtrail.active_trace() is None


def test_records_after_the_block_are_not_buffered(tmp_path: Path) -> None:
    store = tmp_path / "files"
    with get_trace("after-block", handlers=[FileHandler(path=str(store))]) as trace:
        trace.info("inside")
    trace.info("after")
    assert trace._buffer is None
    # the record went to the pipeline: flushing the pipelines (not the trace) writes it
    assert flowtrail.flush_all(10.0)
    assert read_metadata_file(store, "after-block") == ["inside", "after"]
    # a reader sees it too
    data = FileHandler(path=str(store)).find_trace_with_id("after-block")
    assert [r.message for r in data.meta] == ["inside", "after"]


def test_synchronous_handlers_are_buffered_too() -> None:
    """ "All logs are buffered and flushed at exit" (seed 000): the memory and console
    handlers get the block's records when it ends, then records go through at once."""
    memory = MemoryHandler()
    with get_trace("sync-run", handlers=[memory]) as trace:
        trace.info("held")
        assert memory.messages == []
    assert memory.messages == ["held"]
    trace.info("after the block")
    assert memory.messages == ["held", "after the block"]


def test_with_block_reused_buffers_again(tmp_path: Path) -> None:
    store = tmp_path / "files"
    trace = get_trace("twice", handlers=[FileHandler(path=str(store))])
    with trace:
        trace.info("first block")
    with trace:
        trace.info("second block")
        assert read_metadata_file(store, "twice") == ["first block"]
    assert read_metadata_file(store, "twice") == ["first block", "second block"]


def test_trace_flush_writes_buffered_records(tmp_path: Path) -> None:
    store = tmp_path / "files"
    with get_trace("flushed", handlers=[FileHandler(path=str(store))]) as trace:
        trace.info("held")
        assert trace.flush(10.0) is True
        assert read_metadata_file(store, "flushed") == ["held"]
        trace.info("held again")
    assert read_metadata_file(store, "flushed") == ["held", "held again"]


def test_with_blocks_in_threads_and_tasks_are_separate() -> None:
    memory = MemoryHandler()

    async def job(name: str) -> str | None:
        with get_trace(name, handlers=[memory]) as trace:
            await asyncio.sleep(0.01)
            active = flowtrail.active_trace()
            trace.info(name)
            return active.run_id if active else None

    async def main() -> list[str | None]:
        return list(await asyncio.gather(job("task-a"), job("task-b")))

    assert asyncio.run(main()) == ["task-a", "task-b"]
    assert sorted((r.run_id, r.message) for r in memory.records) == [
        ("task-a", "task-a"),
        ("task-b", "task-b"),
    ]


def test_a_long_with_block_hands_records_on_past_the_buffer_limit(tmp_path: Path) -> None:
    from flowtrail.trace import _BUFFER_LIMIT

    store = tmp_path / "files"
    with get_trace("long-block", handlers=[FileHandler(path=str(store))]) as trace:
        for index in range(_BUFFER_LIMIT + 5):
            trace.debug(str(index))
        assert len(trace._buffer) == 5  # the rest went on to the pipeline
    assert len(read_metadata_file(store, "long-block")) == _BUFFER_LIMIT + 5


def test_close_flushes(tmp_path: Path) -> None:
    store = tmp_path / "files"
    trace = get_trace("closing", handlers=[FileHandler(path=str(store))])
    trace.info("x")
    assert trace.close(10.0) is True
    assert read_metadata_file(store, "closing") == ["x"]
