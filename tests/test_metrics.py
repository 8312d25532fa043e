"""Metrics from spans (seed 004): per kind and name the count, min, max, mean, p50 and p95
of durations, errors, success rate and peak memory; for one run and across the runs of a
workflow read back from SQLite."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

import flowtrail
from flowtrail import MemoryHandler, SQLiteHandler, get_trace
from flowtrail.metrics import aggregate, metrics_dict, percentile, roots, run_duration_ms
from flowtrail.records import Span

T0 = 1_705_314_645_000_000_000  # 2024-01-15T10:30:45Z
_ids = itertools.count(0x100)


@pytest.fixture(autouse=True)
def close_pipelines():
    yield
    flowtrail.shutdown(10.0)


def make_span(
    name: str,
    kind: str,
    start_ms: float,
    duration_ms: float,
    *,
    run_id: str = "run-1",
    span_id: str | None = None,
    parent: str | None = None,
    status: str = "ok",
    memory: tuple[float | None, float | None] = (None, None),
    workflow: str = "wf",
) -> Span:
    start = T0 + int(start_ms * 1_000_000)
    return Span(
        run_id=run_id,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id=span_id or f"{next(_ids):016x}",
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=start + int(duration_ms * 1_000_000),
        duration_ms=duration_ms,
        status=status,  # type: ignore[arg-type]
        memory_start_mb=memory[0],
        memory_end_mb=memory[1],
        workflow_name=workflow,
    )


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([10, 20, 30, 40, 50], 50) == 30
    assert percentile([50, 10, 40, 20, 30], 95) == pytest.approx(48.0)
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([7.0], 95) == 7.0
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    with pytest.raises(ValueError):
        percentile([], 50)


def one_run() -> list[Span]:
    """A workflow of 300 ms with a job and five stages of known durations (one failed)."""
    return [
        make_span("wf", "workflow", 0, 300, span_id="a" * 16, memory=(20.0, 31.5)),
        make_span("extract", "job", 5, 250, span_id="b" * 16, parent="a" * 16),
        make_span("read", "stage", 10, 10, parent="b" * 16, memory=(21.0, 22.0)),
        make_span("read", "stage", 30, 20, parent="b" * 16, memory=(22.0, 40.25)),
        make_span("read", "stage", 60, 30, parent="b" * 16, status="error"),
        make_span("read", "stage", 100, 40, parent="b" * 16, memory=(None, 23.0)),
        make_span("read", "stage", 150, 50, parent="b" * 16),
    ]


def test_aggregate_one_run() -> None:
    metrics = aggregate(one_run())
    assert metrics.span_count == 7
    assert metrics.node_count == 6
    assert metrics.error_count == 1
    assert metrics.success_rate == pytest.approx(6 / 7)
    assert metrics.total_duration_ms == pytest.approx(300.0)
    assert metrics.peak_memory_mb == 40.25
    assert metrics.kinds == {"workflow": 1, "job": 1, "stage": 5}
    assert metrics.runs == 1
    assert metrics.run_durations is None

    stats = {(s.kind, s.name): s for s in metrics.by_name}
    assert set(stats) == {("workflow", "wf"), ("job", "extract"), ("stage", "read")}
    read = stats[("stage", "read")]
    assert (read.count, read.errors) == (5, 1)
    assert read.success_rate == pytest.approx(0.8)
    assert (read.min_ms, read.max_ms) == (10.0, 50.0)
    assert read.mean_ms == pytest.approx(30.0)
    assert read.p50_ms == pytest.approx(30.0)
    assert read.p95_ms == pytest.approx(48.0)
    assert read.total_ms == pytest.approx(150.0)
    assert read.peak_memory_mb == 40.25
    job = stats[("job", "extract")]
    assert (job.count, job.min_ms, job.p50_ms, job.p95_ms, job.max_ms) == (1, 250, 250, 250, 250)
    assert job.peak_memory_mb is None
    assert stats[("workflow", "wf")].peak_memory_mb == 31.5

    data = metrics_dict(metrics)
    assert data["node_count"] == 6
    assert data["by_name"][0]["kind"] == "job"  # sorted by (kind, name)


def test_aggregate_nothing() -> None:
    metrics = aggregate([])
    assert (metrics.span_count, metrics.error_count, metrics.success_rate) == (0, 0, 1.0)
    assert metrics.by_name == [] and metrics.peak_memory_mb is None
    assert run_duration_ms([]) == 0.0


def test_roots_and_run_duration() -> None:
    spans = one_run()
    assert [s.name for s in roots(spans)] == ["wf"]
    assert run_duration_ms(spans[2:]) == pytest.approx(190.0)  # 10 ms .. 200 ms


def test_metrics_of_real_spans_are_at_least_their_sleeps() -> None:
    memory = MemoryHandler()
    trace = get_trace("run-real", handlers=[memory])
    sleeps = [0.01, 0.02, 0.03]
    with trace.span("job", name="j"):
        for seconds in sleeps:
            with trace.span("stage", name="nap"):
                time.sleep(seconds)
        try:
            with trace.span("stage", name="fail"):
                raise ValueError("x")
        except ValueError:
            pass
    metrics = aggregate(memory.spans)
    stats = {(s.kind, s.name): s for s in metrics.by_name}
    nap = stats[("stage", "nap")]
    assert nap.count == 3 and nap.errors == 0
    assert nap.min_ms >= 10.0
    assert nap.max_ms >= 30.0
    assert nap.p50_ms >= 20.0
    assert nap.total_ms >= 60.0
    assert nap.mean_ms == pytest.approx(sum(s.duration_ms for s in memory.spans[:3]) / 3)
    assert stats[("job", "j")].min_ms >= 60.0
    assert stats[("stage", "fail")].success_rate == 0.0
    assert metrics.error_count == 1
    assert metrics.success_rate == pytest.approx(4 / 5)
    assert metrics.peak_memory_mb is not None and metrics.peak_memory_mb > 0


def test_across_runs_of_a_workflow_from_sqlite(tmp_path: Path) -> None:
    store = SQLiteHandler(path=str(tmp_path / "runs.db"))
    durations = {"run-a": [100.0, 10.0], "run-b": [200.0, 30.0], "run-c": [400.0, 50.0]}
    batch: list[Span] = []
    for index, (run, (total, stage)) in enumerate(durations.items()):
        root = f"{index + 1:016x}"
        batch.append(make_span("etl", "workflow", index * 1000, total, run_id=run, span_id=root))
        batch.append(
            make_span(
                "load",
                "stage",
                index * 1000 + 1,
                stage,
                run_id=run,
                parent=root,
                status="error" if run == "run-b" else "ok",
                memory=(10.0 + index, 12.0 + index),
            )
        )
    # Another workflow in the same store is left out.
    batch.append(make_span("etl", "workflow", 5000, 999, run_id="run-x", workflow="other"))
    store.export(batch)

    spans = store.spans(workflow="wf")
    assert {s.run_id for s in spans} == set(durations)
    metrics = aggregate(spans)
    assert metrics.runs == 3
    assert metrics.span_count == 6
    assert metrics.error_count == 1
    assert metrics.success_rate == pytest.approx(5 / 6)
    assert metrics.peak_memory_mb == 14.0
    assert metrics.total_duration_ms == pytest.approx(700.0)
    stats = {(s.kind, s.name): s for s in metrics.by_name}
    load = stats[("stage", "load")]
    assert (load.count, load.errors, load.min_ms, load.max_ms) == (3, 1, 10.0, 50.0)
    assert load.mean_ms == pytest.approx(30.0)
    assert load.p50_ms == pytest.approx(30.0)
    assert load.p95_ms == pytest.approx(48.0)
    assert load.success_rate == pytest.approx(2 / 3)
    etl = stats[("workflow", "etl")]
    assert (etl.min_ms, etl.p50_ms, etl.max_ms) == (100.0, 200.0, 400.0)
    assert etl.p95_ms == pytest.approx(380.0)
    runs = metrics.run_durations
    assert runs is not None
    assert runs.count == 3
    assert (runs.min_ms, runs.p50_ms, runs.max_ms) == (100.0, 200.0, 400.0)

    # One run alone.
    one = aggregate(store.spans(run_id="run-b"))
    assert (one.runs, one.span_count, one.error_count) == (1, 2, 1)
    assert one.total_duration_ms == pytest.approx(200.0)


def test_across_runs_written_by_real_traces(tmp_path: Path) -> None:
    db = str(tmp_path / "real.db")
    for run in ("real-1", "real-2"):
        trace = get_trace(
            run, handlers=[SQLiteHandler(path=db)], extras={"workflow_name": "nightly"}
        )
        with trace.span("workflow", name="nightly"), trace.span("stage", name="step"):
            time.sleep(0.01)
        trace.flush()
    store = SQLiteHandler(path=db)
    metrics = aggregate(store.spans(workflow="nightly"))
    assert metrics.runs == 2
    stats = {(s.kind, s.name): s for s in metrics.by_name}
    assert stats[("stage", "step")].count == 2
    assert stats[("stage", "step")].min_ms >= 10.0
    assert metrics.run_durations is not None and metrics.run_durations.min_ms >= 10.0
