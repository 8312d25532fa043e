"""The bridge from the `logging` module: `FlowtrailLogHandler` into the active trace, and
the seeds' direct form ``logger.addHandler(FileHandler(run_id=..., ...))``."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import flowtrail
from flowtrail import (
    FileHandler,
    FlowtrailLogHandler,
    MemoryHandler,
    SQLiteHandler,
    get_trace,
)
from flowtrail.stdlib import IGNORED_LOGGERS, level_name

THIS_FILE = Path(__file__).name
_names = itertools.count()


@pytest.fixture(autouse=True)
def close_pipelines():
    """Stop the workers after each test (relative store paths are process-wide)."""
    yield
    flowtrail.shutdown(10.0)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A fresh logger at level 1 that does not propagate; its handlers are removed after."""
    log = logging.getLogger(f"test_stdlib.logger{next(_names)}")
    log.setLevel(1)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


def here() -> int:
    return sys._getframe(1).f_lineno + 1


def read_metadata(store: Path, run_id: str) -> list[dict]:
    path = store / f"run_id={run_id}" / "metadata.txt"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# ---------------------------------------------------------------------- the bridge


def test_bridge_routes_records_into_the_active_trace(
    logger: logging.Logger, tmp_path: Path
) -> None:
    memory = MemoryHandler()
    store = tmp_path / "store"
    logger.addHandler(FlowtrailLogHandler())
    trace = get_trace(
        "bridge-run",
        parent_run_id="parent-1",
        handlers=[memory, FileHandler(path=str(store))],
        extras={"workflow_name": "wf", "tags": ["a"]},
    )
    with trace:
        logger.info("count=%d", 3)
        logger.warning("careful")
    assert [(r.run_id, r.level, r.message) for r in memory.records] == [
        ("bridge-run", "info", "count=3"),
        ("bridge-run", "warning", "careful"),
    ]
    record = memory.records[0]
    assert record.parent_run_id == "parent-1"
    assert record.trace_id == trace.trace_id
    assert record.workflow_name == "wf"
    assert record.tags == ["a"]
    assert record.metadata["logger"] == logger.name
    assert record.process == os.getpid()
    # the storing handler got them when the block ended
    stored = read_metadata(store, "bridge-run")
    assert [(r["run_id"], r["message"]) for r in stored] == [
        ("bridge-run", "count=3"),
        ("bridge-run", "careful"),
    ]


def test_bridge_outside_a_trace_is_ignored_or_uses_its_own_trace(logger: logging.Logger) -> None:
    loose = FlowtrailLogHandler()
    logger.addHandler(loose)
    logger.info("nobody listens")  # no active trace and no trace=: ignored, no error
    logger.removeHandler(loose)

    memory = MemoryHandler()
    own = get_trace("own-run", handlers=[memory])
    logger.addHandler(FlowtrailLogHandler(trace=own))
    logger.info("to my own trace")
    assert [(r.run_id, r.message) for r in memory.records] == [("own-run", "to my own trace")]


def test_active_trace_wins_over_the_handlers_own(logger: logging.Logger) -> None:
    own_memory, active_memory = MemoryHandler(), MemoryHandler()
    logger.addHandler(FlowtrailLogHandler(trace=get_trace("own", handlers=[own_memory])))
    with get_trace("active", handlers=[active_memory]):
        logger.info("inside")
    logger.info("outside")
    assert [r.run_id for r in active_memory.records] == ["active"]
    assert [r.message for r in own_memory.records] == ["outside"]


def test_bridge_follows_nested_traces(logger: logging.Logger) -> None:
    memory = MemoryHandler()
    logger.addHandler(FlowtrailLogHandler())
    with get_trace("job", handlers=[memory]):
        logger.info("in job")
        with get_trace("stage", parent_run_id="job", handlers=[memory]):
            logger.info("in stage")
        logger.info("back in job")
    # Each block hands its records over when it ends: the inner one first.
    assert [(r.run_id, r.message) for r in memory.records] == [
        ("stage", "in stage"),
        ("job", "in job"),
        ("job", "back in job"),
    ]
    assert memory.records[0].parent_run_id == "job"


LEVEL_CASES = [
    (logging.DEBUG, "debug"),
    (logging.INFO, "info"),
    (logging.WARNING, "warning"),
    (logging.ERROR, "error"),
    (logging.CRITICAL, "exception"),
    (5, "debug"),
    (25, "info"),
    (35, "warning"),
    (45, "error"),
    (60, "exception"),
]


@pytest.mark.parametrize(("levelno", "expected"), LEVEL_CASES)
def test_level_name_mapping(levelno: int, expected: str) -> None:
    assert level_name(levelno) == expected


@pytest.mark.parametrize(("levelno", "expected"), LEVEL_CASES)
def test_bridge_level_mapping(logger: logging.Logger, levelno: int, expected: str) -> None:
    memory = MemoryHandler()
    logger.addHandler(FlowtrailLogHandler())
    with get_trace("levels", handlers=[memory]):
        logger.log(levelno, "message")
    record = memory.records[0]
    assert record.level == expected
    assert record.error_flag is (expected in ("error", "exception"))
    assert record.mode == ("stderr" if record.error_flag else "stdout")


def test_bridge_respects_the_trace_log_level(logger: logging.Logger) -> None:
    memory = MemoryHandler()
    logger.addHandler(FlowtrailLogHandler())
    with get_trace("filtered", handlers=[memory], log_level="warning"):
        logger.info("dropped")
        logger.warning("kept")
    assert memory.messages == ["kept"]


def test_bridge_exc_info_gives_exception_fields(logger: logging.Logger) -> None:
    memory = MemoryHandler()
    logger.addHandler(FlowtrailLogHandler())
    with get_trace("exc", handlers=[memory]):
        try:
            raise ValueError("bad input 7")
        except ValueError:
            logger.exception("it broke")
        logger.error("with exc_info", exc_info=ValueError("passed explicitly"))
    first, second = memory.records
    assert first.exception_type == "ValueError"
    assert first.exception_message == "bad input 7"
    assert 'raise ValueError("bad input 7")' in first.stack_trace
    assert first.error_flag is True
    assert second.exception_type == "ValueError"
    assert second.exception_message == "passed explicitly"


def test_logger_exception_has_the_same_level_on_both_paths(
    logger: logging.Logger, tmp_path: Path
) -> None:
    """``logger.exception()`` is an error with a stack trace: level ``exception`` through
    the bridge as through the direct form."""
    memory = MemoryHandler()
    direct = MemoryHandler(run_id="direct")
    logger.addHandler(FlowtrailLogHandler())
    logger.addHandler(direct)
    with get_trace("bridged", handlers=[memory]):
        try:
            raise KeyError("k")
        except KeyError:
            logger.exception("failed")
    assert direct.records[0].level == "exception"
    assert memory.records[0].level == direct.records[0].level


def test_bridge_records_the_logging_call_site(logger: logging.Logger) -> None:
    memory = MemoryHandler()
    logger.addHandler(FlowtrailLogHandler())
    with get_trace("site", handlers=[memory]):
        line = here()
        logger.info("where")
    assert (memory.records[0].filename, memory.records[0].lineno) == (THIS_FILE, line)


def test_bridge_on_the_root_logger_collects_child_loggers() -> None:
    memory = MemoryHandler()
    root = logging.getLogger()
    bridge = FlowtrailLogHandler()
    old_level = root.level
    root.addHandler(bridge)
    root.setLevel(logging.DEBUG)
    try:
        with get_trace("rooted", handlers=[memory]):
            logging.getLogger("some.library").info("from a library")
    finally:
        root.removeHandler(bridge)
        root.setLevel(old_level)
    assert [(r.run_id, r.message) for r in memory.records] == [("rooted", "from a library")]
    assert memory.records[0].metadata["logger"] == "some.library"


@pytest.mark.parametrize(
    "name", ["httpx", "httpcore", "flowtrail", "flowtrail.pipeline", "httpx._client"]
)
def test_bridge_ignores_flowtrails_own_and_http_client_loggers(name: str) -> None:
    memory = MemoryHandler()
    log = logging.getLogger(name)
    bridge = FlowtrailLogHandler()
    old = (log.level, log.propagate)
    log.addHandler(bridge)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        with get_trace("ignoring", handlers=[memory]):
            log.info("must not feed back")
            log.error("must not feed back either")
    finally:
        log.removeHandler(bridge)
        log.setLevel(old[0])
        log.propagate = old[1]
    assert memory.records == []


@pytest.mark.parametrize("name", ["httpxtra", "flowtrailer", "myapp.httpx"])
def test_bridge_keeps_loggers_that_only_look_alike(name: str) -> None:
    memory = MemoryHandler()
    log = logging.getLogger(name)
    bridge = FlowtrailLogHandler()
    log.addHandler(bridge)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        with get_trace("lookalike", handlers=[memory]):
            log.info("kept")
    finally:
        log.removeHandler(bridge)
    assert memory.messages == ["kept"]


def test_ignored_loggers_list() -> None:
    assert {"httpx", "httpcore", "flowtrail"} <= set(IGNORED_LOGGERS)


# ---------------------------------------------------------------------- the direct form


def test_direct_file_handler(logger: logging.Logger, tmp_path: Path) -> None:
    store = tmp_path / "traces"
    handler = FileHandler(run_id="direct-123", path=str(store))
    logger.addHandler(handler)
    line = here()
    logger.info("Direct info")
    logger.error("Direct error %s", "with args")
    assert handler.flush() is True
    handler.close()
    stored = read_metadata(store, "direct-123")
    assert [(r["run_id"], r["level"], r["message"]) for r in stored] == [
        ("direct-123", "info", "Direct info"),
        ("direct-123", "error", "Direct error with args"),
    ]
    assert [(r["filename"], r["lineno"]) for r in stored] == [
        (THIS_FILE, line),
        (THIS_FILE, line + 1),
    ]
    assert stored[0]["metadata"]["logger"] == logger.name
    assert stored[1]["error_flag"] is True
    folder = store / "run_id=direct-123"
    assert "Direct info" in (folder / "stdout.txt").read_text()
    assert "Direct error with args" in (folder / "stderr.txt").read_text()
    data = FileHandler(path=str(store)).find_trace_with_id("direct-123")
    assert len(data.meta) == 2


def test_direct_sqlite_handler(logger: logging.Logger, tmp_path: Path) -> None:
    db = tmp_path / "direct.db"
    handler = SQLiteHandler(run_id="direct-123", path=str(db))
    logger.addHandler(handler)
    logger.debug("Direct debug")
    logger.warning("Direct warning")
    logger.critical("Direct critical")
    handler.flush()
    handler.close()
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT run_id, level, message FROM traces ORDER BY id").fetchall()
    finally:
        conn.close()
    assert rows == [
        ("direct-123", "debug", "Direct debug"),
        ("direct-123", "warning", "Direct warning"),
        ("direct-123", "exception", "Direct critical"),
    ]


@pytest.mark.parametrize(("levelno", "expected"), LEVEL_CASES)
def test_direct_level_mapping(logger: logging.Logger, levelno: int, expected: str) -> None:
    handler = MemoryHandler(run_id="direct-levels")
    logger.addHandler(handler)
    logger.log(levelno, "message")
    assert handler.records[0].level == expected
    assert handler.records[0].run_id == "direct-levels"


def test_direct_exc_info_gives_exception_fields(logger: logging.Logger, tmp_path: Path) -> None:
    store = tmp_path / "traces"
    handler = FileHandler(run_id="direct-123", path=str(store))
    logger.addHandler(handler)
    try:
        raise ZeroDivisionError("no dividing")
    except ZeroDivisionError:
        logger.exception("Direct exception")
    handler.flush()
    handler.close()
    (record,) = read_metadata(store, "direct-123")
    assert record["level"] == "exception"
    assert record["exception_type"] == "ZeroDivisionError"
    assert record["exception_message"] == "no dividing"
    assert 'raise ZeroDivisionError("no dividing")' in record["stack_trace"]


def test_direct_handler_with_parent_and_extras(logger: logging.Logger) -> None:
    handler = MemoryHandler(
        run_id="direct-123",
        parent_run_id="parent-9",
        extras={"workflow_name": "direct-test", "stage_name": "direct-stage", "tags": ["t"]},
    )
    logger.addHandler(handler)
    logger.info("with context")
    record = handler.records[0]
    assert record.parent_run_id == "parent-9"
    assert record.cut_id == "parent-9 -> direct-123"
    assert (record.workflow_name, record.stage_name, record.tags) == (
        "direct-test",
        "direct-stage",
        ["t"],
    )
    assert record.datetime.endswith("+00:00")


def test_direct_handler_without_run_id_uses_the_active_trace(logger: logging.Logger) -> None:
    handler = MemoryHandler()
    logger.addHandler(handler)
    with get_trace("active-run", handlers=[MemoryHandler()]):
        logger.info("inside")
    logger.info("outside")
    inside, outside = handler.records
    assert inside.run_id == "active-run"
    assert outside.run_id == logger.name


def test_direct_handler_respects_its_stdlib_level(logger: logging.Logger) -> None:
    handler = MemoryHandler(run_id="r")
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)
    logger.info("below")
    logger.warning("at")
    assert handler.messages == ["at"]


@pytest.mark.parametrize("name", ["httpx", "httpcore", "flowtrail", "flowtrail.pipeline"])
def test_direct_handler_ignores_flowtrails_own_and_http_client_loggers(name: str) -> None:
    """A direct handler on the root logger must not take records of flowtrail's own HTTP
    clients (a feedback loop) nor of flowtrail itself."""
    handler = MemoryHandler(run_id="direct-root")
    log = logging.getLogger(name)
    old = (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        log.info("must not feed back")
    finally:
        log.removeHandler(handler)
        log.setLevel(old[0])
        log.propagate = old[1]
    assert handler.records == []


def test_bridge_records_inside_a_span_carry_its_ids() -> None:
    memory = MemoryHandler()
    logger = logging.getLogger("bridge-span")
    handler = FlowtrailLogHandler()
    logger.addHandler(handler)
    try:
        with (
            get_trace("bridge-span", handlers=[memory]) as trace,
            trace.span("job", name="j") as job,
        ):
            logger.warning("through the bridge")
    finally:
        logger.removeHandler(handler)
    (record,) = [r for r in memory.records if r.message == "through the bridge"]
    assert (record.span_id, record.trace_id, record.job_name) == (job.span_id, job.trace_id, "j")
    assert [e.attributes["message"] for e in memory.spans[0].events] == ["through the bridge"]


def test_bridge_follows_an_open_span_without_a_with_block() -> None:
    memory = MemoryHandler()
    logger = logging.getLogger("bridge-span-only")
    handler = FlowtrailLogHandler()
    logger.addHandler(handler)
    trace = get_trace("bridge-span-only", handlers=[memory])
    try:
        logger.warning("outside any span: no trace to send it to")
        with trace.span("stage", name="s") as stage:
            logger.error("inside the span")
    finally:
        logger.removeHandler(handler)
    assert [(r.message, r.span_id, r.run_id) for r in memory.records] == [
        ("inside the span", stage.span_id, "bridge-span-only")
    ]
