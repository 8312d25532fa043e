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
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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
    errors = sum(1 for span in spans if span.status == "error")
    run_durations = None
    if len(by_run) > 1:
        fake = [
            Span(
                run_id=run, trace_id="", span_id=run, name="run", duration_ms=run_duration_ms(group)
            )
            for run, group in by_run.items()
        ]
        run_durations = _stats("run", "run", fake)
    return Metrics(
        span_count=len(spans),
        error_count=errors,
        success_rate=(len(spans) - errors) / len(spans) if spans else 1.0,
        total_duration_ms=run_duration_ms(spans)
        if len(by_run) <= 1
        else sum(run_duration_ms(group) for group in by_run.values()),
        peak_memory_mb=_peak(spans),
        kinds=kinds,
        by_name=[_stats(kind, name, group) for (kind, name), group in sorted(groups.items())],
        runs=len(by_run),
        run_durations=run_durations,
    )


def metrics_dict(metrics: Metrics) -> dict[str, Any]:
    """Plain data of `Metrics`, with seed 004's ``node_count``."""
    data = msgspec.to_builtins(metrics)
    data["node_count"] = metrics.node_count
    return data
