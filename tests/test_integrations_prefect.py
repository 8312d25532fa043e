"""flowtrail.integrations.prefect against the real Prefect package and its temporary local
server (one per module: it takes seconds to start): a flow with a subflow, a task retry
that recovers, a task failure that does not and logging inside; spans (names, kinds,
parents, states, attempts, run ids) and records read back from a real SQLite store."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as otel_trace

from flowtrail.context import current_run
from flowtrail.handlers.sqlite import SQLiteHandler
from flowtrail.integrations import prefect as traced
from flowtrail.integrations._common import MissingEngine
from flowtrail.pipeline import flush_all
from flowtrail.records import Span
from test_cli import cli

try:
    from prefect import flow, get_run_logger, task
    from prefect.testing.utilities import prefect_test_harness
except ImportError:  # pragma: no cover - the message says what to install
    pytest.fail("these tests need Prefect: pip install -e '.[test]' (or 'prefect')")

std_log = logging.getLogger("etl.prefect")
CALLS: dict[str, int] = {}


@task(retries=2, retry_delay_seconds=0)
def fetch(rows: int) -> int:
    CALLS["fetch"] = CALLS.get("fetch", 0) + 1
    get_run_logger().info(f"fetch attempt {CALLS['fetch']}")
    std_log.warning("stdlib record in fetch")
    if CALLS["fetch"] == 1:
        raise ConnectionError("api busy")
    return rows * 2


@task
def publish() -> None:
    get_run_logger().info("publishing")
    raise PermissionError("bucket is read-only")


@flow
def ingest(rows: int) -> int:
    return fetch(rows)


@flow
def nightly() -> int:
    get_run_logger().info("nightly start")
    total = ingest(3)
    try:
        publish()
    except PermissionError:
        get_run_logger().warning("publish failed; keeping the data")
    return total


@task
def part(i: int) -> int:
    get_run_logger().info(f"part {i}")
    std_log.warning(f"stdlib part {i}")
    return i


@task
async def async_part(i: int) -> int:
    get_run_logger().info(f"async part {i}")
    return i


@flow
def fan_out() -> list[int]:
    futures = [part.submit(i) for i in range(3)]  # run in Prefect's thread pool
    return [future.result() for future in futures]


@flow
async def async_fan_out() -> list[int]:
    return list(await asyncio.gather(*(async_part(i) for i in range(2))))


@pytest.fixture(scope="module")
def server() -> Iterator[None]:
    with prefect_test_harness():
        yield


@pytest.fixture
def store(tmp_path: Path, server: None) -> Iterator[SQLiteHandler]:
    path = tmp_path / "traces.db"
    traced.instrument(handlers=[{"type": "sqlite", "path": str(path)}])
    try:
        yield SQLiteHandler(path=str(path))
    finally:
        traced.uninstrument()


@pytest.mark.slow
def test_flow_runs_task_runs_states_and_attempts(store: SQLiteHandler, tmp_path: Path) -> None:
    CALLS.clear()
    assert nightly() == 6
    # Nothing of the runs stays current afterwards, in flowtrail or in OpenTelemetry.
    assert current_run.get() is None
    assert not otel_trace.get_current_span().get_span_context().is_valid
    flush_all(10.0)
    runs = {r.run_id: r for r in store.runs()}
    (top,) = [r for r in runs.values() if r.parent_run_id is None]
    data = store.find_trace_with_id(top.run_id)
    spans: list[Span] = sorted(data.spans, key=lambda s: s.start_ns)
    names = [(s.kind, s.name) for s in spans]
    assert names == [
        ("workflow", "nightly"),
        ("workflow", "ingest"),
        ("stage", "fetch"),
        ("attempt", "fetch"),
        ("attempt", "fetch"),
        ("stage", "publish"),
    ]
    assert len({s.span_id for s in spans}) == len(spans)
    root, sub, fetch_span, first, second, publish_span = spans
    # Nesting and run ids: the subflow is a run of its own, child of the flow's run.
    assert root.parent_span_id is None and root.run_id == top.run_id
    assert sub.parent_span_id == root.span_id
    assert sub.run_id != root.run_id and sub.parent_run_id == root.run_id
    assert fetch_span.parent_span_id == sub.span_id and fetch_span.run_id == sub.run_id
    assert publish_span.parent_span_id == root.span_id
    assert root.attributes["prefect.run.id"] == root.run_id
    assert len({s.trace_id for s in spans}) == 1
    # States, retries and the failure.
    assert fetch_span.attributes["prefect.state"] == "Completed"
    assert fetch_span.attributes["prefect.attempts"] == 2
    states = [e.name for e in fetch_span.events if e.name != "log"]
    assert states == ["Running", "exception", "Retrying", "Completed"]
    assert [(a.attributes["attempt"], a.status) for a in (first, second)] == [
        (1, "error"),
        (2, "ok"),
    ]
    assert first.status_message == "ConnectionError: api busy"
    assert {first.parent_span_id, second.parent_span_id} == {fetch_span.span_id}
    assert publish_span.status == "error"
    assert publish_span.attributes["prefect.state"] == "Failed"
    assert "bucket is read-only" in (publish_span.status_message or "")
    assert root.status == "ok" and root.attributes["prefect.state"] == "Completed"
    # Run loggers and stdlib records in their run's span.
    records = list(data.meta)
    by_message: dict[str, list[Any]] = {}
    for record in records:
        by_message.setdefault(record.message, []).append(record)
    assert [r.span_id for r in by_message["fetch attempt 1"]] == [fetch_span.span_id]
    assert [r.span_id for r in by_message["stdlib record in fetch"]] == [fetch_span.span_id] * 2
    assert [r.span_id for r in by_message["nightly start"]] == [root.span_id]
    failed = [r for r in records if r.exception_type == "PermissionError"]
    assert [r.span_id for r in failed] == [publish_span.span_id]
    finished = [r for r in records if r.message.startswith("Finished in state Failed")]
    assert [r.span_id for r in finished] == [publish_span.span_id]
    assert top.status == "error"
    out = cli("show", top.run_id, "--store", f"sqlite:///{store.config.path}", cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert any(line.startswith("→ workflow.nightly [") for line in lines)
    assert any(line.startswith("  → workflow.ingest ") for line in lines)
    assert any(
        line.startswith("      ← attempt.fetch") and "✗ ConnectionError: api busy" in line
        for line in lines
    )


@pytest.mark.slow
def test_tasks_in_threads_and_async_tasks(store: SQLiteHandler) -> None:
    assert fan_out() == [0, 1, 2]
    assert asyncio.run(async_fan_out()) == [0, 1]
    flush_all(10.0)
    for flow_name, task_name, count in (("fan-out", "part", 3), ("async-fan-out", "async_part", 2)):
        (run,) = [r for r in store.runs() if r.workflow_name == flow_name]
        data = store.find_trace_with_id(run.run_id)
        (root,) = [s for s in data.spans if s.kind == "workflow"]
        tasks = [s for s in data.spans if s.kind == "stage"]
        assert [s.name for s in tasks] == [task_name] * count
        assert {s.parent_span_id for s in tasks} == {root.span_id}
        by_message = {r.message: r.span_id for r in data.meta}
        for i in range(count):
            prefix = "part" if task_name == "part" else "async part"
            (mine,) = [s for s in tasks if by_message[f"{prefix} {i}"] == s.span_id]
            if task_name == "part":  # stdlib records from Prefect's worker threads too
                assert by_message[f"stdlib part {i}"] == mine.span_id


def test_uninstrumented_runs_write_nothing(server: None, tmp_path: Path) -> None:
    path = tmp_path / "off.db"
    traced.instrument(handlers=[{"type": "sqlite", "path": str(path)}])
    assert traced.instrumented()
    traced.uninstrument()
    assert not traced.instrumented()
    CALLS.clear()
    CALLS["fetch"] = 1  # no failure this time
    assert ingest(2) == 4
    flush_all(10.0)
    assert not path.exists()


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prefect.telemetry.run_telemetry", None)
    with pytest.raises(MissingEngine, match=r"pip install 'flowtrail\[prefect\]'"):
        traced.instrument()
