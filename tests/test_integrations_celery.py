"""flowtrail.integrations.celery against a REAL Celery worker process (prefork, two
children) on a filesystem broker: a task sent from a traced run sends a task that
recovers after a retry and one that fails; spans, parents across processes, statuses and
records are read back from the SQLite store both processes write to."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from flowtrail.handlers.sqlite import SQLiteHandler
from flowtrail.integrations._common import MissingEngine
from flowtrail.pipeline import flush_all
from flowtrail.records import Span
from flowtrail.trace import get_trace

try:
    import celery  # noqa: F401
except ImportError:  # pragma: no cover - the message says what to install
    pytest.fail("these tests need Celery: pip install -e '.[test]' (or 'celery')")

#: The expected spans: the sender's workflow span and four task executions.
SPANS = 5


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """The app module (imported here too, so this process is instrumented) and a worker
    process started on it; stopped with SIGTERM (a warm shutdown) at the end."""
    folder = tmp_path_factory.mktemp("celery")
    os.environ["CELERY_FLOW_DIR"] = str(folder)
    sys.modules.pop("celery_flow", None)
    flow = importlib.import_module("celery_flow")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    log = open(folder / "worker.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_flow",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield flow, folder
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        flow.traced.uninstrument()
        os.environ.pop("CELERY_FLOW_DIR", None)


def wait_for_spans(store: SQLiteHandler, run_id: str, count: int, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    spans: list[Span] = []
    while time.monotonic() < deadline:
        flush_all(5.0)
        spans = list(store.find_trace_with_id(run_id, force_raise=False).spans)
        if len(spans) >= count:
            return spans
        time.sleep(0.2)
    return spans


def test_tasks_in_a_real_worker(worker: tuple[Any, Path]) -> None:
    flow, folder = worker
    db = folder / "traces.db"
    trace = get_trace("celery-etl", handlers=[{"type": "sqlite", "path": str(db)}])
    with trace.span("workflow", name="nightly") as root:
        sent = flow.pipeline.delay(3)
    flaky_id, broken_id = sent.get(timeout=90)
    assert flow.flaky.AsyncResult(flaky_id).get(timeout=90) == 6
    failed = flow.broken.AsyncResult(broken_id)
    failed.get(timeout=90, propagate=False)
    assert failed.state == "FAILURE"
    store = SQLiteHandler(path=str(db))
    spans = wait_for_spans(store, "celery-etl", SPANS)
    log_text = (folder / "worker.log").read_text(errors="replace")
    assert len(spans) == SPANS, [(s.kind, s.name) for s in spans] + [log_text[-3000:]]
    assert "flowtrail:" not in log_text  # no handler failure reported by the worker
    by_name: dict[str, list[Span]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        by_name.setdefault(span.name, []).append(span)
    (pipeline,) = by_name["celery_flow.pipeline"]
    flaky = by_name["celery_flow.flaky"]
    (broken,) = by_name["celery_flow.broken"]
    # One trace and one run, parents across processes through the message headers.
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert {s.run_id for s in spans} == {"celery-etl"}
    assert pipeline.parent_span_id == root.span_id
    assert [s.parent_span_id for s in flaky] == [pipeline.span_id] * 2
    assert broken.parent_span_id == pipeline.span_id
    assert {s.kind for s in spans if s.span_id != root.span_id} == {"task"}
    assert os.getpid() not in {s.process for s in spans if s.kind == "task"}
    # Ids, retries and states.
    assert pipeline.attributes["celery.task_id"] == sent.id
    assert {s.attributes["celery.task_id"] for s in flaky} == {flaky_id}
    assert [s.attributes["celery.retries"] for s in flaky] == [0, 1]
    assert [s.attributes["celery.state"] for s in flaky] == ["RETRY", "SUCCESS"]
    assert [s.status for s in flaky] == ["error", "ok"]
    assert flaky[0].status_message == "ConnectionError: broker busy"
    assert [e.name for e in flaky[0].events if e.name == "retry"] == ["retry"]
    assert (broken.status, broken.attributes["celery.state"]) == ("error", "FAILURE")
    assert broken.status_message == "ValueError: bad row 7"
    assert pipeline.attributes["celery.args_size"] == len(repr([3])) + len("{}")
    # Worker logs bridged, with the task's ids.
    records = list(store.find_trace_with_id("celery-etl").meta)
    span_of = {r.message: r.span_id for r in records}
    assert span_of["pipeline of 3 rows"] == pipeline.span_id
    assert [r.span_id for r in records if r.message.startswith("flaky attempt")] == [
        s.span_id for s in flaky
    ]
    assert span_of["about to fail"] == broken.span_id
    errors = [r for r in records if r.exception_type == "ValueError"]
    assert [(r.span_id, r.exception_message) for r in errors] == [(broken.span_id, "bad row 7")]
    summary = {run.run_id: run for run in store.runs()}["celery-etl"]
    assert (summary.status, summary.retried) == ("error", 1)


def test_eager_task_runs_in_the_callers_span(worker: tuple[Any, Path]) -> None:
    flow, folder = worker
    db = folder / "eager.db"
    trace = get_trace("eager-run", handlers=[{"type": "sqlite", "path": str(db)}])
    with trace.span("job", name="local") as job:
        assert flow.flaky.apply(args=(5,), retries=1).get() == 10
    flush_all(10.0)
    spans = SQLiteHandler(path=str(db)).find_trace_with_id("eager-run").spans
    (task,) = [s for s in spans if s.kind == "task"]
    assert (task.name, task.parent_span_id, task.status) == (
        "celery_flow.flaky",
        job.span_id,
        "ok",
    )


def test_sending_outside_any_trace_adds_no_headers(worker: tuple[Any, Path]) -> None:
    flow, _ = worker
    from flowtrail.integrations import celery as traced

    headers: dict[str, Any] = {"id": "t-1"}
    traced._before_publish(headers=headers)
    assert headers == {"id": "t-1"}
    trace = get_trace("x-run", handlers=[{"type": "memory"}])
    with trace.span("job", name="send") as job:
        traced._before_publish(headers=headers)
    assert headers["traceparent"] == job.traceparent()
    assert "flowtrail.run_id=x-run" in headers["baggage"]


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowtrail.integrations import celery as traced

    monkeypatch.setitem(sys.modules, "celery.signals", None)
    with pytest.raises(MissingEngine, match=r"pip install 'flowtrail\[celery\]'"):
        traced.instrument()
