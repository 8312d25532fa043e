"""The examples of seeds 000/001, copied verbatim with only the import line changed from
``ddeutil.workflow.traces`` to ``flowtrail``, followed by checks of what they stored."""

from __future__ import annotations

import inspect
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

import flowtrail
from flowtrail.handlers.sqlite import SQLiteHandler as StoreReader

THIS_FILE = Path(__file__).name


@pytest.fixture(autouse=True)
def close_pipelines():
    """Stop the workers after each test: relative store paths such as ``./logs/traces``
    are shared between tests' working directories by the process-wide pipelines."""
    yield
    flowtrail.shutdown(10.0)


def line_in(function: Callable[..., object], snippet: str) -> int:
    """The line number of the one line of ``function`` that contains ``snippet``."""
    lines, start = inspect.getsourcelines(function)
    found = [
        start + index
        for index, text in enumerate(lines)
        if snippet in text and "line_in(" not in text
    ]
    assert len(found) == 1, (snippet, found)
    return found[0]


def default_store() -> StoreReader:
    return StoreReader(path="./logs/flowtrail.db")


def test_basic_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from flowtrail import get_trace

    # Get trace manager with default handlers
    trace = get_trace(run_id="workflow-123")

    # Log messages
    trace.info("Workflow started")
    trace.debug("Processing stage dependencies")
    trace.warning("Retrying failed operation")
    trace.error("Job failed: connection timeout")
    trace.exception("Critical error occurred")

    stored = default_store().find_trace_with_id("workflow-123")
    assert [(r.level, r.message) for r in stored.meta] == [
        ("info", "Workflow started"),
        ("debug", "Processing stage dependencies"),
        ("warning", "Retrying failed operation"),
        ("error", "Job failed: connection timeout"),
        ("exception", "Critical error occurred"),
    ]
    assert [r.error_flag for r in stored.meta] == [False, False, False, True, True]
    assert [r.mode for r in stored.meta] == ["stdout"] * 3 + ["stderr"] * 2
    assert {r.filename for r in stored.meta} == {THIS_FILE}
    line = line_in(test_basic_usage, 'trace.info("Workflow started")')
    assert [r.lineno for r in stored.meta] == [line, line + 1, line + 2, line + 3, line + 4]
    assert {r.run_id for r in stored.meta} == {"workflow-123"}
    assert {r.process for r in stored.meta} == {os.getpid()}
    # no active exception: the exception record carries no exception fields
    assert stored.meta[-1].exception_type is None
    assert "Workflow started" in stored.stdout
    assert "Critical error occurred" in stored.stderr
    # the default handlers also print
    out = capsys.readouterr()
    assert "Workflow started" in out.out
    assert "Job failed: connection timeout" in out.err
    assert "Job failed: connection timeout" not in out.out


def test_metadata_fields_example() -> None:
    from flowtrail import Metadata

    # Metadata includes:
    # - Basic info: run_id, parent_run_id, level, message, datetime
    # - System info: process, thread, filename, lineno, cut_id
    # - Observability: workflow_name, stage_name, job_name
    # - Performance: duration_ms, memory_usage_mb, cpu_usage_percent
    # - Distributed tracing: trace_id, span_id, parent_span_id
    # - Error context: exception_type, exception_message, stack_trace
    # - Business context: user_id, tenant_id, environment
    # - System context: hostname, ip_address, python_version
    # - Custom: tags, metadata
    listed = [
        "run_id", "parent_run_id", "level", "message", "datetime",
        "process", "thread", "filename", "lineno", "cut_id",
        "workflow_name", "stage_name", "job_name",
        "duration_ms", "memory_usage_mb", "cpu_usage_percent",
        "trace_id", "span_id", "parent_span_id",
        "exception_type", "exception_message", "stack_trace",
        "user_id", "tenant_id", "environment",
        "hostname", "ip_address", "python_version",
        "tags", "metadata",
    ]  # fmt: skip
    assert set(listed) <= set(Metadata.__struct_fields__)


def test_console_handler(capsys: pytest.CaptureFixture[str]) -> None:
    from flowtrail import ConsoleHandler, Trace

    # fmt: off
    handler = ConsoleHandler(type="console")
    trace = Trace(
        run_id="workflow-123",
        handlers=[handler]
    )
    trace.info("Console logging initialized")
    # fmt: on

    line = line_in(test_console_handler, 'trace.info("Console logging initialized")')
    out = capsys.readouterr()
    assert out.err == ""
    printed = out.out.splitlines()
    assert len(printed) == 1
    assert "Console logging initialized" in printed[0]
    assert "[info" in printed[0]
    assert "(workflow-123)" in printed[0]
    assert printed[0].endswith(f"({THIS_FILE}:{line})")
    # a console-only trace stores nothing
    assert not Path("logs").exists()


def write_file_handler_example() -> None:
    from flowtrail import FileHandler, Trace

    # fmt: off
    # Create file handler
    handler = FileHandler(
        type="file",
        path="./logs/traces",
        format="{datetime} ({process:5d}, {thread:5d}) ({cut_id}) {message:120s} ({filename}:{lineno})"  # noqa: E501
    )

    trace = Trace(
        run_id="workflow-123",
        parent_run_id="parent-456",
        handlers=[handler]
    )

    # Log messages
    trace.info("Workflow started")
    trace.warning("Retrying failed operation")

    # Messages are automatically saved to:
    # ./logs/traces/run_id=workflow-123/
    #   ├── stdout.txt
    #   ├── stderr.txt
    #   └── metadata.txt
    # fmt: on


def test_file_handler_usage() -> None:
    write_file_handler_example()
    from flowtrail import FileHandler

    data = FileHandler(type="file", path="./logs/traces").find_trace_with_id("workflow-123")
    folder = Path("logs/traces/run_id=workflow-123")
    assert (folder / "stdout.txt").is_file()
    assert (folder / "metadata.txt").is_file()
    assert [(r.level, r.message) for r in data.meta] == [
        ("info", "Workflow started"),
        ("warning", "Retrying failed operation"),
    ]
    assert {r.parent_run_id for r in data.meta} == {"parent-456"}
    assert {r.cut_id for r in data.meta} == {"parent-456 -> workflow-123"}
    assert data.stderr == ""
    lines = (folder / "stdout.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first = lines[0]
    # "{datetime} ({process:5d}, {thread:5d}) ({cut_id}) {message:120s} ({filename}:{lineno})"
    assert first.startswith(data.meta[0].datetime[:10])
    assert f"({os.getpid():5d}, " in first
    assert "(parent-456 -> workflow-123) Workflow started" in first
    assert f"{'Workflow started':120s} ({THIS_FILE}:" in first
    line = line_in(write_file_handler_example, 'trace.info("Workflow started")')
    assert first.endswith(f"({THIS_FILE}:{line})")
    assert [r.lineno for r in data.meta] == [line, line + 1]


def test_trace_discovery(capsys: pytest.CaptureFixture[str]) -> None:
    write_file_handler_example()
    capsys.readouterr()

    from flowtrail import FileHandler

    handler = FileHandler(type="file", path="./logs/traces")

    # Find all traces
    for trace_data in handler.find_traces():
        print(f"Run ID: {trace_data.meta[0].run_id if trace_data.meta else 'Unknown'}")
        print(f"Stdout: {trace_data.stdout}")
        print(f"Stderr: {trace_data.stderr}")

    # Find specific trace by run ID
    trace_data = handler.find_trace_with_id("workflow-123")
    print(f"Metadata entries: {len(trace_data.meta)}")

    out = capsys.readouterr().out
    assert "Run ID: workflow-123" in out
    assert "Stdout: " in out and "Workflow started" in out
    assert "Metadata entries: 2" in out
    assert "Unknown" not in out


def test_sqlite_handler() -> None:
    from flowtrail import SQLiteHandler, Trace

    # fmt: off
    handler = SQLiteHandler(
        type="sqlite",
        path="./logs/workflow_traces.db",
        table_name="traces"
    )

    trace = Trace(
        run_id="workflow-789",
        handlers=[handler]
    )
    trace.info("SQLite trace initialized")

    # Traces are stored in SQLite with comprehensive schema including
    # all metadata fields for querying and analysis
    # fmt: on
    data = handler.find_trace_with_id("workflow-789")
    assert [r.message for r in data.meta] == ["SQLite trace initialized"]
    assert data.meta[0].lineno == line_in(test_sqlite_handler, "trace.info(")
    assert data.meta[0].filename == THIS_FILE

    conn = sqlite3.connect("./logs/workflow_traces.db")
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(traces)")}
        rows = conn.execute("SELECT run_id, level, message, error_flag FROM traces").fetchall()
    finally:
        conn.close()
    seed_columns = {
        "id", "run_id", "parent_run_id", "level", "message", "error_flag", "datetime",
        "process", "thread", "filename", "lineno", "cut_id", "workflow_name", "stage_name",
        "job_name", "duration_ms", "memory_usage_mb", "cpu_usage_percent", "trace_id",
        "span_id", "parent_span_id", "exception_type", "exception_message", "stack_trace",
        "error_code", "user_id", "tenant_id", "environment", "hostname", "ip_address",
        "python_version", "package_version", "tags", "metadata", "created_at",
    }  # fmt: skip
    assert seed_columns <= columns
    assert rows == [("workflow-789", "info", "SQLite trace initialized", 0)]


def test_message_formatting(capsys: pytest.CaptureFixture[str]) -> None:
    from flowtrail import Message

    # Parse message with prefix
    msg = Message.from_str("[WORKFLOW]: Starting execution")
    print(msg.name)  # "WORKFLOW"
    print(msg.message)  # "Starting execution"

    # Prepare with emoji
    formatted = msg.prepare({"log_add_emoji": True})
    print(formatted)  # "🏃 [WORKFLOW]: Starting execution"

    assert capsys.readouterr().out.splitlines() == [
        "WORKFLOW",
        "Starting execution",
        "🏃 [WORKFLOW]: Starting execution",
    ]


def test_async_logging() -> None:
    import asyncio  # noqa: I001
    from flowtrail import get_trace

    # fmt: off
    async def async_workflow():
        trace = get_trace("async-workflow-123")

        await trace.amit("Async workflow started", level="info")
        await trace.amit("Processing async operation", level="debug")
        await trace.amit("Async operation failed", level="error")

    asyncio.run(async_workflow())
    # fmt: on

    line = line_in(test_async_logging, 'await trace.amit("Async operation failed"')
    stored = default_store().find_trace_with_id("async-workflow-123")
    assert [(r.level, r.message) for r in stored.meta] == [
        ("info", "Async workflow started"),
        ("debug", "Processing async operation"),
        ("error", "Async operation failed"),
    ]
    assert [r.lineno for r in stored.meta] == [line - 2, line - 1, line]
    assert {r.filename for r in stored.meta} == {THIS_FILE}


def read_rows(db: str, run_id: str) -> list[tuple[str, str]]:
    """Read the store with plain sqlite3: this does not flush flowtrail's pipelines."""
    if not Path(db).exists():
        return []
    conn = sqlite3.connect(db)
    try:
        try:
            return conn.execute(
                "SELECT level, message FROM traces WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []
    finally:
        conn.close()


def test_buffered_logging() -> None:
    from flowtrail import get_trace

    # Use context manager for buffered logging
    with get_trace("workflow-123") as trace:
        # All logs are buffered and flushed at exit
        trace.info("Workflow started")
        trace.debug("Processing stage 1")
        trace.info("Processing stage 2")
        trace.info("Workflow completed")

    # All logs are automatically flushed when exiting the context
    assert read_rows("logs/flowtrail.db", "workflow-123") == [
        ("info", "Workflow started"),
        ("debug", "Processing stage 1"),
        ("info", "Processing stage 2"),
        ("info", "Workflow completed"),
    ]


def test_dynamic_trace_creation() -> None:
    from flowtrail import get_trace

    # Automatically selects handlers based on configuration
    # fmt: off
    trace = get_trace(
        run_id="workflow-123",
        parent_run_id="parent-456",
        extras={"custom_config": "value"}
    )

    # Configuration determines handler types:
    # - Console handler for immediate output
    # - File handler for persistent storage
    # - SQLite handler for database storage
    # - REST API handler for external services
    # - Elasticsearch handler for distributed logging
    # fmt: on

    assert trace.run_id == "workflow-123"
    assert trace.parent_run_id == "parent-456"
    assert [type(h).__name__ for h in trace.handlers] == ["ConsoleHandler", "SQLiteHandler"]
    trace.info("configured by default")
    stored = default_store().find_trace_with_id("workflow-123")
    assert [r.message for r in stored.meta] == ["configured by default"]
    assert stored.meta[0].parent_run_id == "parent-456"
    assert stored.meta[0].cut_id == "parent-456 -> workflow-123"
