"""The seeds' monitoring and migration forms (issue 7, point 10): ``handler.log_buffer``,
``FileTrace``/``SQLiteTrace``/``ConsoleTrace`` taking ``url=``, ``stderr.txt`` in a run
folder from its first write, and ``find_trace_with_id`` finding a workflow by its parent
run id and refusing a run id the store does not hold; read back through the real CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import flowtrail
from conftest import ROOT, run_python
from flowtrail import (
    ConsoleHandler,
    FileHandler,
    MemoryHandler,
    SQLiteHandler,
    TraceData,
    TraceNotFound,
    get_trace,
)


@pytest.fixture(autouse=True)
def close_pipelines():
    yield
    flowtrail.shutdown(10.0)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "flowtrail", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def store_of(kind: str, root: Path) -> tuple[FileHandler | SQLiteHandler, str]:
    if kind == "file":
        return FileHandler(path=str(root / "traces"), flush_interval=60), f"file://{root}/traces"
    return SQLiteHandler(path=str(root / "t.db"), flush_interval=60), str(root / "t.db")


# ---------------------------------------------------------------------- log_buffer
@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_log_buffer_is_what_waits_in_the_handlers_queue(kind: str, tmp_path: Path) -> None:
    handler, _ = store_of(kind, tmp_path)
    assert handler.log_buffer == []  # nothing written yet: no pipeline is started for it
    trace = get_trace("buffered", handlers=[handler])
    for i in range(5):
        trace.info(f"waiting {i}")
    # The worker writes every 60 s (flush_interval): the five records wait in its queue.
    pending = handler.log_buffer
    assert len(pending) == 5
    assert [r.message for r in pending] == [f"waiting {i}" for i in range(5)]
    pending.clear()  # a copy: clearing it takes nothing out of the queue
    assert len(handler.log_buffer) == 5
    assert handler.log_buffer is not handler.log_buffer
    assert handler.flush()
    assert len(handler.log_buffer) == 0
    stored = handler.find_trace_with_id("buffered")
    assert [r.message for r in stored.meta] == [f"waiting {i}" for i in range(5)]


def test_log_buffer_of_a_handler_added_to_a_stdlib_logger(tmp_path: Path) -> None:
    """Seeds 002/003: a handler added to a logger, then ``len(handler.log_buffer)``."""
    handler = SQLiteHandler(run_id="direct-123", path=str(tmp_path / "d.db"), flush_interval=60)
    logger = logging.getLogger("test-log-buffer")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.info("Direct handler test")
        logger.error("Error message")
        assert len(handler.log_buffer) == 2
        handler.flush()
        assert len(handler.log_buffer) == 0
    finally:
        logger.removeHandler(handler)
        handler.close()
    messages = [r.message for r in handler.find_trace_with_id("direct-123").meta]
    assert messages == ["Direct handler test", "Error message"]


def test_log_buffer_of_handlers_written_on_the_callers_thread_is_empty() -> None:
    memory = MemoryHandler()
    get_trace("sync", handlers=[memory]).info("written at once")
    assert memory.log_buffer == [] and memory.messages == ["written at once"]
    assert len(ConsoleHandler().log_buffer) == 0


# ---------------------------------------------------------------------- fronts
MIGRATION = """
from urllib.parse import urlparse
from flowtrail import ConsoleTrace, FileTrace, SQLiteTrace

trace = FileTrace(url="file://./logs", run_id="workflow-123", parent_run_id=None, extras={})
trace.info("Workflow started")
trace.warning("Retrying failed operation")
trace.error("Job failed: connection timeout")
trace.close()
print("file store:", trace.store.config.path, len(FileTrace.find_trace_with_id(
    "workflow-123", path="file://./logs").meta), len(trace.find_trace_with_id("workflow-123").meta))

trace = SQLiteTrace(url="sqlite://./logs/traces.db", run_id="workflow-123", extras={})
trace.info("sqlite started")
trace.close()
parsed = SQLiteTrace(url=urlparse("sqlite:///logs/other.db?table=runs"), run_id="w-2")
parsed.info("to the runs table")
parsed.close()
print("sqlite store:", trace.store.config.path, parsed.store.config.path,
      parsed.store.config.table_name,
      len(list(SQLiteTrace.find_traces(path="sqlite://./logs/traces.db"))))

console = ConsoleTrace(run_id="workflow-123", extras={})
console.info("console only")
console.close()
print("console handlers:", [type(h).__name__ for h in console.handlers])
"""


def test_seed_migration_forms_write_where_their_url_says(tmp_path: Path) -> None:
    result = run_python(MIGRATION, tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "file store: ./logs 3 3" in out
    assert "sqlite store: ./logs/traces.db logs/other.db runs 1" in out
    assert "console handlers: ['ConsoleHandler']" in out
    assert "console only" in out  # printed by the console handler
    assert "Job failed: connection timeout" in result.stderr  # errors go to stderr
    folder = tmp_path / "logs" / "run_id=workflow-123"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.txt", "stderr.txt", "stdout.txt"]
    assert len((folder / "metadata.txt").read_text().splitlines()) == 3
    assert "Job failed" in (folder / "stderr.txt").read_text()
    assert (tmp_path / "logs" / "traces.db").is_file()
    assert (tmp_path / "logs" / "other.db").is_file()
    # The same URLs read back through the CLI, each record once.
    shown = cli(
        "show", "workflow-123", "--store", "file://./logs", "--format", "text", cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert "records=3" in shown.stdout and shown.stdout.count("Workflow started") == 1
    shown = cli(
        "show",
        "workflow-123",
        "--store",
        "sqlite://./logs/traces.db",
        "--format",
        "text",
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert "records=1" in shown.stdout and "sqlite started" in shown.stdout


def test_fronts_refuse_the_wrong_url(tmp_path: Path) -> None:
    from flowtrail import ConfigError, ConsoleTrace, FileTrace, SQLiteTrace

    with pytest.raises(ConfigError, match="FileTrace got url 'sqlite://x.db'"):
        FileTrace(url="sqlite://x.db", run_id="r")
    with pytest.raises(ConfigError, match="SQLiteTrace got url 'file://logs'"):
        SQLiteTrace(url="file://logs", run_id="r")
    with pytest.raises(ConfigError, match="console only"):
        ConsoleTrace(url="file://logs", run_id="r")
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------------- stderr.txt
def test_stderr_file_is_in_the_run_folder_from_the_first_write(tmp_path: Path) -> None:
    code = """
from flowtrail import FileHandler, get_trace
trace = get_trace("quiet-run", handlers=[FileHandler(path="./logs/traces")])
trace.info("nothing went wrong")
assert trace.flush()
"""
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "logs" / "traces" / "run_id=quiet-run"
    assert (folder / "stderr.txt").read_bytes() == b""
    assert "nothing went wrong" in (folder / "stdout.txt").read_text()
    assert len((folder / "metadata.txt").read_bytes().splitlines()) == 1
    shown = cli("show", "quiet-run", "--store", str(tmp_path / "logs" / "traces"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("nothing went wrong") == 1


# ---------------------------------------------------------------------- find_trace_with_id
WORKFLOW = """
import sys
from flowtrail import FileHandler, SQLiteHandler, get_trace
store = FileHandler(path="./store") if sys.argv[1] == "file" else SQLiteHandler(path="./s.db")
parent = get_trace("wf-parent", handlers=[store])
parent.info("workflow start")
for job in ("job-a", "job-b"):
    child = get_trace(f"{job}-run", parent_run_id="wf-parent", handlers=[store])
    child.info(f"{job} ran")
    child.flush()
parent.info("workflow end")
assert parent.flush()
"""


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_find_trace_with_id_of_a_parent_includes_its_child_runs(kind: str, tmp_path: Path) -> None:
    result = run_python(WORKFLOW.replace("sys.argv[1]", repr(kind)), tmp_path)
    assert result.returncode == 0, result.stderr
    store = FileHandler(path=str(tmp_path / "store")) if kind == "file" else None
    store = store or SQLiteHandler(path=str(tmp_path / "s.db"))
    data = store.find_trace_with_id("wf-parent")
    messages = [r.message for r in data.meta]
    assert sorted(messages) == sorted(["workflow start", "job-a ran", "job-b ran", "workflow end"])
    assert len(messages) == len(set(messages)) == 4  # each record once
    own = store.find_trace_with_id("wf-parent", include_children=False)
    assert [r.message for r in own.meta] == ["workflow start", "workflow end"]
    assert [r.message for r in store.find_trace_with_id("job-a-run").meta] == ["job-a ran"]

    with pytest.raises(TraceNotFound) as raised:
        store.find_trace_with_id("no-such-run")
    assert isinstance(raised.value, LookupError)
    assert raised.value.run_id == "no-such-run"
    where = "store" if kind == "file" else "s.db"
    assert "'no-such-run'" in str(raised.value) and where in str(raised.value)
    empty = store.find_trace_with_id("no-such-run", force_raise=False)
    assert isinstance(empty, TraceData) and empty.meta == [] and empty.spans == []
    assert empty.stdout == "" and empty.stderr == ""

    url = str(tmp_path / "store") if kind == "file" else str(tmp_path / "s.db")
    shown = cli("show", "wf-parent", "--store", url, "--format", "text", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "records=4" in shown.stdout and shown.stdout.count("job-b ran") == 1
    missing = cli("show", "no-such-run", "--store", url, cwd=tmp_path)
    assert missing.returncode == 2  # an unknown run id is a usage error
    assert "no run 'no-such-run' in " in missing.stderr and where in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_parent_id_used_only_by_child_runs_is_found(tmp_path: Path) -> None:
    """A migrating user looks a workflow up by the parent id its stages were given, even
    when nothing was logged under the parent id itself."""
    store = SQLiteHandler(path=str(tmp_path / "s.db"))
    for stage in ("one", "two"):
        trace = get_trace(f"stage-{stage}", parent_run_id="only-parent", handlers=[store])
        trace.info(f"stage {stage}")
        trace.flush()
    found = store.find_trace_with_id("only-parent")
    assert sorted(r.message for r in found.meta) == ["stage one", "stage two"]


def test_front_arguments_are_keywords_as_in_the_seeds() -> None:
    from flowtrail import ConsoleTrace, FileTrace

    with pytest.raises(TypeError):
        ConsoleTrace("workflow-123")  # type: ignore[misc]
    with pytest.raises(TypeError):
        FileTrace("file://./logs", "workflow-123")  # type: ignore[misc]
    trace = ConsoleTrace(run_id="workflow-123", parent_run_id="parent-456", extras={})
    assert (trace.run_id, trace.parent_run_id) == ("workflow-123", "parent-456")
