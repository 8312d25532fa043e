"""Aggregation of spans (seed 004's metrics): per span kind and name, the count, min, max,
mean, p50 and p95 of durations, errors, success rate and peak memory; for one run and
across the runs of a workflow."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from flowtrail.records import Span


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by linear interpolation between the
    closest ranks (NumPy's default method). ``values`` need not be sorted."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    low, _ = rank_window(len(ordered), q)
    found = percentile_in_window(ordered[low : low + 2], low, len(ordered), q)
    assert found is not None
    return found


def rank_window(count: int, q: float) -> tuple[int, int]:
    """The ranks (0-based, in ascending order) of the one or two values that the ``q``-th
    percentile of ``count`` values interpolates between."""
    position = (count - 1) * q / 100.0
    return math.floor(position), math.ceil(position)


def percentile_in_window(window: Sequence[float], low: int, count: int, q: float) -> float | None:
    """The ``q``-th percentile of ``count`` values from ``window``, the values at ranks
    ``low``, ``low + 1``, ... in ascending order (as `percentile` computes it); None when
    the window does not hold the ranks it needs. Lets a store read two values, not all."""
    position = (count - 1) * q / 100.0
    first, last = rank_window(count, q)
    if first < low or last - low >= len(window):
        return None
    below = window[first - low]
    if first == last:
        return below
    return below + (window[last - low] - below) * (position - first)


class SpanStats(msgspec.Struct, kw_only=True):
    """Statistics of the spans of one kind and name."""

    kind: str
    name: str
    count: int
    errors: int
    success_rate: float
    min_ms: float
    max_ms: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    total_ms: float
    peak_memory_mb: float | None = None


class Metrics(msgspec.Struct, kw_only=True):
    """Metrics of a set of spans (one run, or many runs of a workflow)."""

    span_count: int
    error_count: int
    success_rate: float
    total_duration_ms: float
    peak_memory_mb: float | None
    kinds: dict[str, int]
    by_name: list[SpanStats]
    runs: int = 1
    run_durations: SpanStats | None = None

    @property
    def node_count(self) -> int:
        """Spans that are not the workflow itself (seed 004's "nodes executed")."""
        return self.span_count - self.kinds.get("workflow", 0)


def _peak(spans: Iterable[Span]) -> float | None:
    values = [
        value
        for span in spans
        for value in (span.memory_start_mb, span.memory_end_mb)
        if value is not None
    ]
    return max(values) if values else None


def _stats(kind: str, name: str, spans: Sequence[Span]) -> SpanStats:
    durations = [span.duration_ms for span in spans]
    errors = sum(1 for span in spans if span.status == "error")
    return SpanStats(
        kind=kind,
        name=name,
        count=len(spans),
        errors=errors,
        success_rate=(len(spans) - errors) / len(spans),
        min_ms=min(durations),
        max_ms=max(durations),
        mean_ms=sum(durations) / len(durations),
        p50_ms=percentile(durations, 50),
        p95_ms=percentile(durations, 95),
        total_ms=sum(durations),
        peak_memory_mb=_peak(spans),
    )


def roots(spans: Sequence[Span]) -> list[Span]:
    """Spans whose parent is not among ``spans`` (the top of each run's tree)."""
    ids = {span.span_id for span in spans}
    return [span for span in spans if span.parent_span_id not in ids]


def run_duration_ms(spans: Sequence[Span]) -> float:
    """Wall time of a run: from its first span start to its last span end."""
    if not spans:
        return 0.0
    return (max(s.end_ns for s in spans) - min(s.start_ns for s in spans)) / 1e6


def aggregate(spans: Sequence[Span]) -> Metrics:
    """Metrics of ``spans``; when they come from several runs, ``runs`` counts them and
    ``run_durations`` has statistics of the runs' wall times."""
    groups: dict[tuple[str, str], list[Span]] = {}
    kinds: dict[str, int] = {}
    for span in spans:
        groups.setdefault((span.kind, span.name), []).append(span)
        kinds[span.kind] = kinds.get(span.kind, 0) + 1
    by_run: dict[str, list[Span]] = {}
    for span in spans:
        by_run.setdefault(span.run_id, []).append(span)
    return summarize_metrics(
        [_stats(kind, name, group) for (kind, name), group in sorted(groups.items())],
        kinds,
        {run: run_duration_ms(group) for run, group in by_run.items()},
        min((s.start_ns for s in spans), default=None),
        max((s.end_ns for s in spans), default=None),
    )


def summarize_metrics(
    by_name: list[SpanStats],
    kinds: dict[str, int],
    run_durations_ms: dict[str, float],
    first_start_ns: int | None,
    last_end_ns: int | None,
) -> Metrics:
    """`Metrics` from the statistics of each span kind and name, the span count of each
    kind, each run's wall time, and the first start and last end of all the spans: what a
    store that aggregates where the spans are (Elasticsearch) has, without the spans."""
    count = sum(stats.count for stats in by_name)
    errors = sum(stats.errors for stats in by_name)
    peaks = [s.peak_memory_mb for s in by_name if s.peak_memory_mb is not None]
    run_durations = None
    if len(run_durations_ms) > 1:
        fake = [
            Span(run_id=run, trace_id="", span_id=run, name="run", duration_ms=duration)
            for run, duration in run_durations_ms.items()
        ]
        run_durations = _stats("run", "run", fake)
    if len(run_durations_ms) > 1:
        total = sum(run_durations_ms.values())
    elif first_start_ns is None or last_end_ns is None:
        total = 0.0
    else:
        total = (last_end_ns - first_start_ns) / 1e6
    return Metrics(
        span_count=count,
        error_count=errors,
        success_rate=(count - errors) / count if count else 1.0,
        total_duration_ms=total,
        peak_memory_mb=max(peaks) if peaks else None,
        kinds=kinds,
        by_name=by_name,
        runs=len(run_durations_ms),
        run_durations=run_durations,
    )


def metrics_dict(metrics: Metrics) -> dict[str, Any]:
    """Plain data of `Metrics`, with seed 004's ``node_count``."""
    data = msgspec.to_builtins(metrics)
    data["node_count"] = metrics.node_count
    return data
