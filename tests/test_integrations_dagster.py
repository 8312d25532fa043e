"""flowtrail.integrations.dagster against the real Dagster package: a job of three ops
(a retry that recovers, a failure that does not, logging inside) run in process and with
the multiprocess executor (steps in their own processes), and an asset graph; spans,
parents, statuses, attempts and records read back from a real SQLite store."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from flowtrail.handlers.sqlite import SQLiteHandler
from flowtrail.integrations._common import MissingEngine
from flowtrail.pipeline import flush_all
from flowtrail.records import Span
from test_cli import cli

try:
    import dagster as dg
except ImportError:  # pragma: no cover - the message says what to install
    pytest.fail("these tests need Dagster: pip install -e '.[test]' (or 'dagster')")


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("dagster")
    os.environ["DAGSTER_FLOW_DIR"] = str(folder)
    # Step processes of the multiprocess executor import dagster_flow too.
    python_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "tests"), *([python_path] if python_path else [])]
    )
    sys.modules.pop("dagster_flow", None)
    module = importlib.import_module("dagster_flow")
    try:
        yield module
    finally:
        module.traced.uninstrument()
        os.environ.pop("DAGSTER_FLOW_DIR", None)
        if python_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = python_path


def read_run(flow: Any, run_id: str) -> tuple[SQLiteHandler, list[Span], list[Any]]:
    flush_all(10.0)
    store = SQLiteHandler(path=str(flow.FOLDER / "traces.db"))
    data = store.find_trace_with_id(run_id)
    return store, list(data.spans), list(data.meta)


def check_etl_run(store: SQLiteHandler, run_id: str, spans: list[Span], records: list) -> None:
    """What every run of the etl job must look like, whatever the executor."""
    assert len(spans) == len({s.span_id for s in spans}) == 5
    by_kind = sorted((s.kind, s.name, s.status) for s in spans)
    assert by_kind == [
        ("stage", "extract", "ok"),
        ("stage", "load", "error"),
        ("stage", "transform", "error"),
        ("stage", "transform", "ok"),
        ("workflow", "etl" if "etl" in {s.name for s in spans} else "etl_processes", "error"),
    ]
    (run,) = [s for s in spans if s.kind == "workflow"]
    steps = sorted((s for s in spans if s.kind == "stage"), key=lambda s: s.start_ns)
    assert run.parent_span_id is None and run.run_id == run_id
    assert {s.parent_span_id for s in steps} == {run.span_id}
    assert {s.trace_id for s in spans} == {run.trace_id}
    transform = [s for s in steps if s.name == "transform"]
    assert [s.attributes["dagster.attempt"] for s in transform] == [1, 2]
    assert [s.attributes["dagster.status"] for s in transform] == ["UP_FOR_RETRY", "SUCCESS"]
    assert transform[0].status_message == "ConnectionError: warehouse busy"
    (load,) = [s for s in steps if s.name == "load"]
    assert load.status_message == "PermissionError: table is read-only"
    assert "steps failed: ['load']" in (run.status_message or "").lower()
    # context.log and stdlib records in their step's span.
    span_of: dict[str, list[str | None]] = {}
    for record in records:
        span_of.setdefault(record.message, []).append(record.span_id)
    extract = next(s for s in steps if s.name == "extract")
    assert span_of["extracting 3 rows"] == [extract.span_id]
    assert span_of["extract uses the stdlib logger"] == [extract.span_id]
    assert span_of["transform attempt 1"] == [transform[0].span_id]
    assert span_of["transform attempt 2"] == [transform[1].span_id]
    assert span_of["loading 3 rows"] == [load.span_id]
    errors = [r for r in records if r.exception_type]
    assert [(r.exception_type, r.span_id) for r in errors] == [
        ("ConnectionError", transform[0].span_id),
        ("PermissionError", load.span_id),
    ]
    assert "raise PermissionError" in (errors[1].stack_trace or "")
    summary = {r.run_id: r for r in store.runs()}[run_id]
    assert (summary.status, summary.retried) == ("error", 1)


def test_job_in_process(flow: Any, tmp_path: Path) -> None:
    result = flow.etl.execute_in_process(raise_on_error=False)
    assert not result.success
    store, spans, records = read_run(flow, result.run_id)
    check_etl_run(store, result.run_id, spans, records)
    out = cli(
        "show", result.run_id, "--store", f"sqlite:///{flow.FOLDER / 'traces.db'}", cwd=tmp_path
    ).stdout
    lines = out.splitlines()
    assert any(line.startswith("→ workflow.etl [") for line in lines)
    assert any(line.startswith("  → stage.extract [dagster.step_key=extract") for line in lines)
    assert "    [INFO] extracting 3 rows" in lines
    assert any(
        line.startswith("  ← stage.transform (") and "✗ ConnectionError" in line for line in lines
    )
    assert "- Status: error" in lines


@pytest.mark.slow
def test_job_with_steps_in_their_own_processes(flow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Step processes find dagster_flow from the working directory Dagster hands them.
    monkeypatch.chdir(ROOT / "tests")
    with dg.instance_for_test() as instance:
        result = dg.execute_job(
            dg.reconstructable(flow.etl_processes), instance=instance, raise_on_error=False
        )
    assert not result.success
    store, spans, records = read_run(flow, result.run_id)
    check_etl_run(store, result.run_id, spans, records)
    pids = {s.process for s in spans if s.kind == "stage"}
    assert os.getpid() not in pids and len(pids) >= 3  # one process per step attempt


def test_assets(flow: Any) -> None:
    result = dg.materialize([flow.raw_orders, flow.order_totals])
    assert result.success
    _, spans, records = read_run(flow, result.run_id)
    names = sorted((s.kind, s.name, s.status) for s in spans)
    assert names == [
        ("stage", "order_totals", "ok"),
        ("stage", "raw_orders", "ok"),
        ("workflow", "__ephemeral_asset_job__", "ok"),
    ]
    steps = {s.name: s for s in spans if s.kind == "stage"}
    assert [e.name for e in steps["raw_orders"].events].count("asset_materialization") == 1
    span_of = {r.message: r.span_id for r in records}
    assert span_of["summing orders"] == steps["order_totals"].span_id


def test_uninstrument_and_missing_package(flow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.instance import DagsterInstance

    from flowtrail.integrations import dagster as traced

    assert any(
        isinstance(h, traced.FlowtrailDagsterHandler)
        for h in DagsterInstance.ephemeral().get_handlers()
    )
    traced.uninstrument()
    try:
        assert not any(
            isinstance(h, traced.FlowtrailDagsterHandler)
            for h in DagsterInstance.ephemeral().get_handlers()
        )
        monkeypatch.setitem(sys.modules, "dagster._core.instance", None)
        with pytest.raises(MissingEngine, match=r"pip install 'flowtrail\[dagster\]'"):
            traced.instrument()
    finally:
        monkeypatch.undo()
        traced.instrument(handlers=[{"type": "sqlite", "path": str(flow.FOLDER / "traces.db")}])
