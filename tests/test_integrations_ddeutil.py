"""flowtrail.integrations.ddeutil against the real ddeutil-workflow package: a workflow
with two jobs (one fanned out by a matrix), a parallel stage, a stage retry that recovers,
a stage that fails for good and logging inside, written to a real SQLite store and read
back; ddeutil's own records and WORKFLOW_LOG_* settings."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from flowtrail.handlers.sqlite import SQLiteHandler
from flowtrail.integrations import ddeutil as traced
from flowtrail.integrations._common import MissingEngine
from flowtrail.pipeline import flush_all
from flowtrail.records import Span
from test_cli import cli

try:
    import ddeutil.workflow.job as dd_job
    import ddeutil.workflow.stages as dd_stages
    import ddeutil.workflow.traces as dd_traces
    import ddeutil.workflow.workflow as dd_workflow
    from ddeutil.workflow import Workflow
except ImportError:  # pragma: no cover - the message says what to install
    pytest.fail("these tests need ddeutil-workflow: pip install -e '.[test]'")

FLAKY = """\
import logging, pathlib
logging.getLogger("etl.ddeutil").info("loading rows")
marker = pathlib.Path("attempted")
if not marker.exists():
    marker.write_text("1")
    raise ConnectionError("database busy")
rows = 3
"""


def make_workflow(name: str = "nightly-etl") -> Any:
    return Workflow.model_validate(
        {
            "name": name,
            "jobs": {
                "extract": {
                    "stages": [
                        {"name": "hello", "echo": "start extract"},
                        {"name": "flaky load", "id": "load", "retry": 2, "run": FLAKY},
                    ]
                },
                "fanout": {
                    "strategy": {"matrix": {"part": [1, 2]}, "max-parallel": 2},
                    "stages": [{"name": "part", "echo": "part ${{ matrix.part }}"}],
                },
                "publish": {
                    "needs": ["extract"],
                    "stages": [
                        {
                            "name": "copies",
                            "parallel": {
                                "a": [{"name": "copy a", "echo": "copy to a"}],
                                "b": [{"name": "copy b", "echo": "copy to b"}],
                            },
                        },
                        {"name": "upload", "raise": "bucket is read-only"},
                    ],
                },
            },
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    path = tmp_path / "traces.db"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    traced.instrument(handlers=[{"type": "sqlite", "path": str(path)}])
    try:
        yield SQLiteHandler(path=str(path))
    finally:
        traced.uninstrument()
        root.setLevel(level)


def spans_by_name(spans: list[Span]) -> dict[str, list[Span]]:
    found: dict[str, list[Span]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        found.setdefault(f"{span.kind}.{span.name}", []).append(span)
    return found


@pytest.fixture
def finished_run(store: SQLiteHandler) -> tuple[Any, SQLiteHandler, list[Span], list[Any]]:
    result = make_workflow().execute({}, max_job_parallel=2)
    flush_all(10.0)
    data = store.find_trace_with_id(result.run_id)
    return result, store, list(data.spans), list(data.meta)


def test_workflow_jobs_stages_and_attempts(finished_run: Any) -> None:
    result, store, spans, records = finished_run
    assert result.status.name == "FAILED"
    names = spans_by_name(spans)
    assert sorted(names) == [
        "attempt.flaky load",
        "job.extract",
        "job.fanout",
        "job.publish",
        "stage.copies",
        "stage.copy a",
        "stage.copy b",
        "stage.flaky load",
        "stage.hello",
        "stage.part",
        "stage.upload",
        "workflow.nightly-etl",
    ]
    # Each span once: 1 workflow, 3 jobs, 8 stages (part twice), 2 attempts.
    assert len(spans) == len({s.span_id for s in spans}) == 14
    (workflow,) = names["workflow.nightly-etl"]
    jobs = {name[4:]: found[0] for name, found in names.items() if name.startswith("job.")}
    stage = {name[6:]: found for name, found in names.items() if name.startswith("stage.")}
    # Nesting, across ddeutil's thread pools for jobs, matrix strategies and branches.
    assert workflow.parent_span_id is None
    assert {j.parent_span_id for j in jobs.values()} == {workflow.span_id}
    assert [s.parent_span_id for s in stage["part"]] == [jobs["fanout"].span_id] * 2
    assert len({s.thread for s in stage["part"]} | {jobs["fanout"].thread}) >= 2
    assert {stage["hello"][0].parent_span_id, stage["flaky load"][0].parent_span_id} == {
        jobs["extract"].span_id
    }
    assert {stage["copy a"][0].parent_span_id, stage["copy b"][0].parent_span_id} == {
        stage["copies"][0].span_id
    }
    assert len({s.trace_id for s in spans}) == 1
    # ddeutil's run ids: the workflow's is the result's; jobs and stages are its children.
    assert workflow.run_id == result.run_id and workflow.parent_run_id is None
    children = [s for s in spans if s is not workflow]
    assert {s.parent_run_id for s in children} == {result.run_id}
    assert len({s.run_id for s in children if s.kind in ("job", "stage")}) == 11
    # The retry that recovers, and the failure that does not.
    attempts = names["attempt.flaky load"]
    (flaky,) = stage["flaky load"]
    assert [a.attributes["attempt"] for a in attempts] == [1, 2]
    assert [a.status for a in attempts] == ["error", "ok"]
    assert attempts[0].status_message == "ConnectionError: database busy"
    assert [a.parent_span_id for a in attempts] == [flaky.span_id] * 2
    assert (flaky.status, flaky.attributes["attempts"]) == ("ok", 2)
    assert all(a.run_id == flaky.run_id for a in attempts)
    (upload,) = stage["upload"]
    assert upload.status == "error" and "bucket is read-only" in (upload.status_message or "")
    assert jobs["publish"].status == workflow.status == "error"
    assert workflow.attributes["ddeutil.status"] == "FAILED"
    assert "'publish', was failed" in (workflow.status_message or "")
    assert jobs["extract"].status == jobs["fanout"].status == "ok"
    assert [s.attributes["ddeutil.status"] for s in stage["copies"]] == ["SUCCESS"]
    # ddeutil's own records and stdlib logs, in the spans they were written in.
    by_message = {r.message: r for r in records}
    loading = [r for r in records if r.message == "loading rows"]
    assert [r.span_id for r in loading] == [a.span_id for a in attempts]
    assert {r.run_id for r in loading} == {flaky.run_id}
    echo = by_message["[STAGE]: Message: ( start extract )"]
    assert (echo.span_id, echo.run_id, echo.filename) == (
        stage["hello"][0].span_id,
        stage["hello"][0].run_id,
        "stages.py",
    )
    assert echo.parent_run_id == result.run_id
    retry = [r for r in records if r.message.startswith("[STAGE]: Retry count: 1")]
    assert [(r.level, r.span_id) for r in retry] == [("warning", flaky.span_id)]
    assert any(r.message.startswith("[WORKFLOW]: Execute Job: 'publish'") for r in records)
    # Written once each: no record id repeated in the store.
    keys = [(r.run_id, r.datetime, r.message, r.thread) for r in records]
    assert len(keys) == len(set(keys))
    summary = {run.run_id: run for run in store.runs()}[result.run_id]
    assert summary.status == "error"


def test_async_stages(store: SQLiteHandler) -> None:
    import asyncio

    flaky = dd_stages.PyStage.model_validate({"name": "async flaky", "retry": 1, "run": FLAKY})
    boom = dd_stages.RaiseStage.model_validate({"name": "async boom", "raise": "no disk"})

    async def run() -> list[Any]:
        return [await flaky.axecute({}, run_id="parent-run"), await boom.axecute({})]

    results = asyncio.run(run())
    assert [r.status.name for r in results] == ["SUCCESS", "FAILED"]
    flush_all(10.0)
    spans = store.find_trace_with_id(results[0].run_id).spans
    names = spans_by_name(spans)
    (stage,) = names["stage.async flaky"]
    attempts = names["attempt.async flaky"]
    assert (stage.status, stage.parent_run_id) == ("ok", "parent-run")
    assert [(a.status, a.parent_span_id) for a in attempts] == [
        ("error", stage.span_id),
        ("ok", stage.span_id),
    ]
    (failed,) = store.find_trace_with_id(results[1].run_id).spans
    assert (failed.name, failed.status) == ("async boom", "error")


def test_show_prints_the_whole_workflow(finished_run: Any, tmp_path: Path) -> None:
    result, _, _, _ = finished_run
    out = cli("show", result.run_id, "--store", f"sqlite:///{tmp_path / 'traces.db'}", cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert any(line.startswith("→ workflow.nightly-etl [") for line in lines)
    assert any(line.startswith("  → job.extract") for line in lines)
    assert any(line.startswith("    → stage.flaky load") for line in lines)
    assert any(
        line.startswith("      ← attempt.flaky load") and "✗ ConnectionError" in line
        for line in lines
    )
    assert any(line.startswith("← workflow.nightly-etl (") and "✗" in line for line in lines)
    assert any(line.startswith("- First Failure: stage.upload") for line in lines)


def test_ddeutil_settings_used_when_flowtrail_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-ddeutil.db"
    monkeypatch.setenv("WORKFLOW_LOG_TRACE_HANDLERS", f'[{{"type": "sqlite", "path": "{path}"}}]')
    monkeypatch.setenv("WORKFLOW_LOG_TIMEZONE", "Asia/Bangkok")
    monkeypatch.setenv("WORKFLOW_LOG_DEBUG_MODE", "false")
    traced.instrument()
    try:
        result = Workflow.model_validate(
            {"name": "tz", "jobs": {"one": {"stages": [{"name": "s", "echo": "hi"}]}}}
        ).execute({})
    finally:
        traced.uninstrument()
    flush_all(10.0)
    data = SQLiteHandler(path=str(path)).find_trace_with_id(result.run_id)
    assert data.meta and data.spans
    assert {r.datetime[-6:] for r in data.meta} == {"+07:00"}
    assert "debug" not in {r.level for r in data.meta}
    # flowtrail's own setting wins over ddeutil's.
    monkeypatch.setenv("FLOWTRAIL_LOG_TZ", "UTC")
    assert "log_tz" not in traced.settings_from_ddeutil({})
    assert traced.settings_from_ddeutil({})["trace_handlers"] == [
        {"type": "sqlite", "path": str(path)}
    ]
    assert "trace_handlers" not in traced.settings_from_ddeutil({"handlers": []})


def test_uninstrument_puts_everything_back(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    watched = [
        (dd_workflow.Workflow, "_execute"),
        (dd_job.Job, "_execute"),
        (dd_job.Job, "process"),
        (dd_stages.BaseStage, "_execute"),
        (dd_stages.BaseRetryStage, "_execute"),
        (dd_stages.PyStage, "process"),
        (dd_traces.Trace, "emit"),
    ]
    originals = {key: vars(key[0])[key[1]] for key in watched}
    traced.instrument(handlers=[{"type": "sqlite", "path": str(tmp_path / "t.db")}])
    assert dd_workflow.ThreadPoolExecutor is traced.ContextThreadPool
    make_workflow("again").execute({})
    assert vars(dd_stages.PyStage)["process"] is not originals[dd_stages.PyStage, "process"]
    traced.uninstrument()
    assert {key: vars(key[0])[key[1]] for key in watched} == originals
    for module in (dd_workflow, dd_job, dd_stages):
        assert module.ThreadPoolExecutor is ThreadPoolExecutor
    flush_all(10.0)
    before = len(SQLiteHandler(path=str(tmp_path / "t.db")).run_ids())
    make_workflow("after").execute({})
    flush_all(10.0)
    assert len(SQLiteHandler(path=str(tmp_path / "t.db")).run_ids()) == before


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ddeutil.workflow.workflow", None)
    with pytest.raises(MissingEngine, match=r"pip install 'flowtrail\[ddeutil\]'"):
        traced.instrument()
    assert not traced.instrumented()
