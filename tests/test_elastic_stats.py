"""``flowtrail stats`` on Elasticsearch is computed by the cluster (aggregations, and a
``_msearch`` for the spans at each percentile's ranks) and gives the SQLite store's
answers for the same spans: per kind and name the count, errors, min, max, mean, exact
p50/p95 and peak memory; the runs' durations and statuses; time ranges in any zone. On
Elasticsearch 7.9 and on osmem (OpenSearch)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowtrail import ElasticHandler, SQLiteHandler
from flowtrail.cli import main
from flowtrail.handlers import elastic_reader
from flowtrail.metrics import Metrics, aggregate
from flowtrail.pipeline import flush_all
from flowtrail.records import Span

BASE = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)
PARIS = timezone(timedelta(hours=1))


def _span(run: int, index: int, kind: str, name: str, start_s: float, duration_ms: float, **kw):
    start = BASE + timedelta(seconds=start_s)
    start_ns = int(start.timestamp() * 1e9) + index * 1000
    zone = PARIS if run % 2 else timezone.utc  # the same moments written in two zones
    return Span(
        run_id=f"stat-{run:02d}",
        trace_id=f"{run:032x}",
        span_id=f"{run:04x}{index:012x}",
        name=name,
        kind=kind,
        start_time=start.astimezone(zone).isoformat(timespec="microseconds"),
        end_time=(start + timedelta(milliseconds=duration_ms)).astimezone(zone).isoformat(),
        start_ns=start_ns,
        end_ns=start_ns + int(duration_ms * 1e6),
        duration_ms=duration_ms,
        workflow_name="stat-wf",
        **kw,
    )


def dataset() -> list[Span]:
    """Twelve runs an hour apart: a workflow span, 2-7 loads, a train that fails in
    every third run; random durations with ties; memory on some spans only."""
    rng = random.Random(7)
    spans: list[Span] = []
    for run in range(12):
        start = run * 3600.0
        index = 0
        root = f"{run:04x}{0:012x}"
        for load in range(2 + run % 6):
            index += 1
            spans.append(
                _span(run, index, "stage", "load", start + load, float(rng.choice([5, 7, 7, 40]))),
            )
            spans[-1] = _with_parent(spans[-1], root)
        index += 1
        failed = run % 3 == 0
        spans.append(
            _with_parent(
                _span(
                    run,
                    index,
                    "job",
                    "train",
                    start + 10,
                    rng.uniform(100, 900),
                    status="error" if failed else "ok",
                    status_message="diverged" if failed else None,
                    memory_start_mb=100.0 + run,
                    memory_end_mb=150.5 + run * 2,
                ),
                root,
            )
        )
        spans.append(_span(run, 0, "workflow", "stat-wf", start, 20_000.0 + run * 10))
    return spans


def _with_parent(span: Span, parent: str) -> Span:
    import msgspec

    return msgspec.structs.replace(span, parent_span_id=parent)


@pytest.fixture
def stores(search_url: str, tmp_path: Path):
    index = f"st-{uuid.uuid4().hex[:10]}"
    sqlite = SQLiteHandler(path=str(tmp_path / "same.db"), flush_interval=0.01)
    elastic = ElasticHandler(hosts=[search_url], index=index, flush_interval=0.01)
    spans = dataset()
    sqlite.export(spans)
    elastic.export(spans)
    flush_all(30)
    return sqlite, elastic, f"elasticsearch+{search_url}/{index}"


def _close(a: Metrics, b: Metrics) -> None:
    """Equal, sums to the last bits (the cluster adds in another order)."""
    assert a.span_count == b.span_count and a.error_count == b.error_count
    assert a.kinds == b.kinds and list(a.kinds) == list(b.kinds)
    assert a.runs == b.runs
    assert a.peak_memory_mb == b.peak_memory_mb
    assert a.total_duration_ms == pytest.approx(b.total_duration_ms, rel=1e-12)
    pairs = list(zip(a.by_name, b.by_name, strict=True))
    if a.run_durations or b.run_durations:
        assert a.run_durations is not None and b.run_durations is not None
        pairs.append((a.run_durations, b.run_durations))
    for x, y in pairs:
        assert (x.kind, x.name, x.count, x.errors) == (y.kind, y.name, y.count, y.errors)
        assert (x.min_ms, x.max_ms, x.p50_ms, x.p95_ms) == pytest.approx(
            (y.min_ms, y.max_ms, y.p50_ms, y.p95_ms), rel=1e-12
        ), x.name
        assert x.mean_ms == pytest.approx(y.mean_ms, rel=1e-12)
        assert x.peak_memory_mb == y.peak_memory_mb
        assert x.success_rate == y.success_rate


def test_stats_are_aggregated_by_the_cluster_with_the_sqlite_answers(stores, monkeypatch) -> None:
    sqlite, elastic, _ = stores

    # The cluster does the work: no span is read, and no percentile is an estimate.
    def no_reading(*args, **kwargs):
        raise AssertionError("stats read the spans")

    monkeypatch.setattr(type(elastic), "_spans", no_reading)
    monkeypatch.setattr(elastic_reader, "_estimate", lambda values, q: float("nan"))
    cases = [
        {"workflow": "stat-wf"},
        {"run_id": "stat-03"},
        {"run_id": "stat-04"},
        {"workflow": "stat-wf", "since": BASE + timedelta(hours=4, minutes=30)},
        {"workflow": "stat-wf", "until": BASE + timedelta(hours=2)},  # runs 0-2, at 02:00 incl.
        {
            "workflow": "stat-wf",
            "since": (BASE + timedelta(hours=3)).astimezone(PARIS),
            "until": BASE + timedelta(hours=8, seconds=3),
        },
    ]
    for case in cases:
        want = sqlite.span_metrics(**case)
        got = elastic.span_metrics(**case)
        assert want is not None and got is not None, case
        _close(got[0], want[0])
        assert got[1] == want[1], case
    # The since/until cases really cut: the zones differ between runs, and every bound
    # keeps some runs and drops others.
    runs_of = [sqlite.span_metrics(**case)[1] for case in cases[3:]]
    assert [len(runs) for runs in runs_of] == [7, 3, 6]
    assert elastic.span_metrics(workflow="no-such") is None
    assert elastic.span_metrics(workflow="stat-wf", since=BASE + timedelta(days=2)) is None


def test_exact_percentiles_of_every_group_size(search_url: str, monkeypatch) -> None:
    """Groups of 1 to 21 spans: the cluster's p50/p95 are the interpolated ones."""
    monkeypatch.setattr(elastic_reader, "_estimate", lambda values, q: float("nan"))
    elastic = ElasticHandler(hosts=[search_url], index=f"st-{uuid.uuid4().hex[:10]}")
    rng = random.Random(3)
    spans = [
        _span(0, size * 100 + i, "stage", f"size-{size:02d}", i, round(rng.uniform(1, 50), 3))
        for size in range(1, 22)
        for i in range(size)
    ]
    elastic.export(spans)
    found = elastic.span_metrics(run_id="stat-00")
    assert found is not None
    want = aggregate(spans)
    _close(found[0], want)


def _cli_json(args: list[str]) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_stats_command_gives_the_sqlite_answers(stores) -> None:
    sqlite, _, url = stores
    for args in (
        ["stats", "--workflow", "stat-wf"],
        ["stats", "--run", "stat-06"],
        ["stats", "--workflow", "stat-wf", "--since", "2026-11-30T12:30:00+00:00"],
        ["stats"],
    ):
        want = _cli_json([*args, "--store", f"sqlite:///{sqlite.config.path}"])
        got = _cli_json([*args, "--store", url])
        assert got.keys() == want.keys()
        assert got["run_statuses"] == want["run_statuses"]
        assert got["runs"] == want["runs"] and got["kinds"] == want["kinds"]
        for x, y in zip(got["by_name"], want["by_name"], strict=True):
            assert (x["kind"], x["name"]) == (y["kind"], y["name"])
            numbers = sorted(set(x) - {"kind", "name", "peak_memory_mb"})
            assert x["peak_memory_mb"] == y["peak_memory_mb"]
            assert [x[k] for k in numbers] == pytest.approx([y[k] for k in numbers], rel=1e-12)
    text = CliRunner().invoke(main, ["stats", "--workflow", "stat-wf", "--store", url]).output
    assert "Statistics of workflow stat-wf (12 runs): " in text
    assert "Run statuses: 8 ok, 4 error" in text


def test_a_group_too_large_to_rank_gets_the_clusters_estimate(search_url, monkeypatch) -> None:
    """Above `RANKED` spans a name's p50/p95 are the cluster's TDigest estimate (the
    ranks are past ``index.max_result_window``): close, and never missing."""
    monkeypatch.setattr(elastic_reader, "RANKED", 50)
    elastic = ElasticHandler(hosts=[search_url], index=f"st-{uuid.uuid4().hex[:10]}")
    spans = [_span(0, i, "stage", "many", i, float(i % 100)) for i in range(400)]
    spans += [_span(0, 1000 + i, "stage", "few", i, float(i)) for i in range(30)]
    elastic.export(spans)
    found = elastic.span_metrics(run_id="stat-00")
    assert found is not None
    got = {s.name: s for s in found[0].by_name}
    want = {s.name: s for s in aggregate(spans).by_name}
    assert (got["few"].p50_ms, got["few"].p95_ms) == (want["few"].p50_ms, want["few"].p95_ms)
    assert got["many"].p50_ms == pytest.approx(want["many"].p50_ms, abs=2.0)
    assert got["many"].p95_ms == pytest.approx(want["many"].p95_ms, abs=2.0)
    assert got["many"].count == 400 and got["many"].max_ms == 99.0
