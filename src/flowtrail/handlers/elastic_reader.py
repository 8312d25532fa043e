"""Reading an Elasticsearch / OpenSearch store back, with the work done by the cluster:
filters are queries, summaries are aggregations, and a run's records are read a page at a
time (``search_after``), so no command ever downloads an index.

`ElasticReader` is the reading half of `flowtrail.handlers.elastic.ElasticHandler`; it
asks the cluster through the handler's ``request_json`` (which fails over between hosts).
Its answers are those of the SQLite store for the same records: records in the order
written (time stamp, then the order they were sent), runs newest first, a run's status
by `flowtrail.status.run_status` from its error records, failing spans and open spans.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import msgspec

from flowtrail.config import DEFAULT_LOG_FORMAT_FILE
from flowtrail.delivery import DeliveryError
from flowtrail.formats import bulk
from flowtrail.formats.line import compile_line_format
from flowtrail.handlers.base import StoreReader
from flowtrail.handlers.query import (
    RecordCounts,
    check_level,
    level_names,
    select_runs,
    with_span_facts,
    with_statuses,
    without_log_events,
)
from flowtrail.lifecycle import INTERRUPTED
from flowtrail.metrics import (
    Metrics,
    SpanStats,
    percentile_in_window,
    rank_window,
    summarize_metrics,
)
from flowtrail.records import ERROR_LEVELS, Metadata, RunSummary, Span, TraceData
from flowtrail.status import OPEN_SPAN_STATUS, RecordFacts, SpanFacts, split_open
from flowtrail.timeparse import parse_time_filter

#: Hits per page of a read.
PAGE = 2000
#: Buckets per page of a composite aggregation.
BUCKETS = 1000
# ``seq`` is unique in practice (nanoseconds at sending plus the place in the batch).
_RECORD_SORT = [{"datetime": "asc"}, {"seq": "asc"}]
_RECORD_SORT_DESC = [{"datetime": "desc"}, {"seq": "desc"}]
_SPAN_SORT = [{"start_ns": "asc"}, {"span_id": "asc"}, {"trace_id": "asc"}]
#: Groups of at most this many spans get exact percentiles (``index.max_result_window``).
RANKED = 10_000
#: Searches per ``_msearch`` request.
MSEARCH = 200
_NAME_AGGS: dict[str, Any] = {
    "duration": {"stats": {"field": "duration_ms"}},
    "errors": {"filter": {"term": {"status": "error"}}},
    "mem_start": {"max": {"field": "memory_start_mb"}},
    "mem_end": {"max": {"field": "memory_end_mb"}},
    "tdigest": {"percentiles": {"field": "duration_ms", "percents": [50, 95]}},
    "first": {"top_hits": {"size": 1, "sort": [{"start_ns": "asc"}], "_source": ["start_ns"]}},
}
# Nanoseconds are read from a document: a ``min``/``max`` (and osmem's terms keys) of a
# long is a double, off by up to 256 ns.
_RUN_AGGS: dict[str, Any] = {
    "start": {"top_hits": {"size": 1, "sort": [{"start_ns": "asc"}], "_source": ["start_ns"]}},
    "end": {"top_hits": {"size": 1, "sort": [{"end_ns": "desc"}], "_source": ["end_ns"]}},
}
_OPEN = {"bool": {"filter": [{"term": {"status": OPEN_SPAN_STATUS}}, {"term": {"end_ns": 0}}]}}
_FINISHED = {"bool": {"must_not": [_OPEN]}}


class _Hit(msgspec.Struct):
    source: msgspec.Raw = msgspec.field(name="_source", default=msgspec.Raw(b"{}"))
    sort: list[Any] | None = None


class _Hits(msgspec.Struct):
    hits: list[_Hit] = msgspec.field(default_factory=list)


class _Answer(msgspec.Struct):
    hits: _Hits = msgspec.field(default_factory=_Hits)
    aggregations: dict[str, Any] | None = None


_answer = msgspec.json.Decoder(_Answer)
_metadata = msgspec.json.Decoder(Metadata)
_span = msgspec.json.Decoder(Span)
_decode = msgspec.json.decode


def record_from_source(raw: bytes | msgspec.Raw) -> Metadata:
    """A record from its document (a sanitised one gets its metadata back)."""
    data = bytes(raw)
    record = _metadata.decode(data)
    if b'"metadata_text"' in data:
        text = _decode(data).get("metadata_text")
        if text:
            record = msgspec.structs.replace(record, metadata=_decode(text))
    return record


def _terms(field: str, values: Sequence[str]) -> dict[str, Any]:
    return {"terms": {field: list(values)}}


def _run_query(run_id: str, include_children: bool) -> dict[str, Any]:
    if not include_children:
        return {"term": {"run_id": run_id}}
    return {
        "bool": {
            "should": [{"term": {"run_id": run_id}}, {"term": {"parent_run_id": run_id}}],
            "minimum_should_match": 1,
        }
    }


def _wildcard_text(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
    return f"*{escaped}*"


def _estimate(values: dict[str, Any], q: int) -> float:
    """The percentile ``q`` of a ``percentiles`` aggregation's values."""
    for key, value in values.items():
        if float(key) == q:
            return float(value)
    raise KeyError(q)


def _top(aggs: dict[str, Any], name: str) -> Any:
    hits = aggs.get(name, {}).get("hits", {}).get("hits", [])
    return hits[0]["_source"] if hits else None


def _bucket_key(aggs: dict[str, Any], name: str) -> Any:
    buckets = aggs.get(name, {}).get("buckets", [])
    return buckets[0]["key"] if buckets else None


class ElasticReader(StoreReader):
    """The reading side of the Elasticsearch handler; see the module docstring."""

    # Given by the handler.
    config: Any

    @property
    def spans_index(self) -> str:
        raise NotImplementedError

    def request(self, method: str, path: str, body: Any = b"") -> Any:
        raise NotImplementedError

    def request_json(self, method: str, path: str, body: Any = b"") -> Any:
        raise NotImplementedError

    def destination(self) -> tuple[str, ...]:
        raise NotImplementedError

    # ------------------------------------------------------------------ plumbing
    @property
    def records_target(self) -> str:
        return bulk.records_target(self.config.index, self.spans_index)

    @property
    def spans_target(self) -> str:
        return bulk.index_pattern(self.spans_index)

    def _ready(self) -> None:
        """Before a read: flush this process's writers to this destination and make what
        they wrote searchable (a refresh; at most twice a second)."""
        from flowtrail.pipeline import all_pipelines

        mine = self.destination()
        for pipeline in all_pipelines():
            exporter = pipeline.exporter
            if isinstance(exporter, ElasticReader) and exporter.destination() == mine:
                pipeline.flush(10.0)
        now = time.monotonic()
        if now - self.__dict__.get("_refreshed", -1.0) < 0.5:
            return
        try:
            self.request_json(
                "POST",
                f"/{quote(self.records_target, safe=',*-')},{quote(self.spans_target, safe='*-')}"
                "/_refresh?ignore_unavailable=true&allow_no_indices=true",
            )
        except DeliveryError:
            pass  # read what is searchable
        self.__dict__["_refreshed"] = time.monotonic()

    def _search(self, target: str, body: dict[str, Any]) -> _Answer:
        path = f"/{quote(target, safe=',*-')}/_search?ignore_unavailable=true&allow_no_indices=true"
        return _answer.decode(self.request("POST", path, body).body)

    def _raw_search(self, target: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/{quote(target, safe=',*-')}/_search?ignore_unavailable=true&allow_no_indices=true"
        return self.request_json("POST", path, body)

    def _scan(
        self,
        target: str,
        query: dict[str, Any],
        sort: list[Any],
        fields: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[msgspec.Raw]:
        """The ``_source`` of each matching document in ``sort`` order, a page at a time."""
        after: list[Any] | None = None
        left = limit
        while left is None or left > 0:
            size = PAGE if left is None else min(PAGE, left)
            body: dict[str, Any] = {"query": query, "sort": sort, "size": size}
            if fields is not None:
                body["_source"] = list(fields)
            if after is not None:
                body["search_after"] = after
            hits = self._search(target, body).hits.hits
            for hit in hits:
                yield hit.source
            if left is not None:
                left -= len(hits)
            if len(hits) < size:
                return
            after = hits[-1].sort

    def _records(self, query: dict[str, Any], **options: Any) -> Iterator[Metadata]:
        for raw in self._scan(self.records_target, query, _RECORD_SORT, **options):
            yield record_from_source(raw)

    def _spans(self, query: dict[str, Any], **options: Any) -> list[Span]:
        return [
            _span.decode(raw) for raw in self._scan(self.spans_target, query, _SPAN_SORT, **options)
        ]

    def _composite(
        self,
        target: str,
        query: dict[str, Any],
        aggs: dict[str, Any],
        sources: Sequence[str] = ("run_id",),
    ) -> Iterator[Any]:
        """Every bucket of a composite aggregation by run id, or by the ``sources`` fields
        (paged; a bucket's key names a run id ``run``, another field by its name)."""
        after: dict[str, Any] | None = None
        while True:
            composite: dict[str, Any] = {
                "size": BUCKETS,
                "sources": [
                    {"run" if field == "run_id" else field: {"terms": {"field": field}}}
                    for field in sources
                ],
            }
            if after is not None:
                composite["after"] = after
            body = {
                "size": 0,
                "query": query,
                "aggs": {"runs": {"composite": composite, "aggs": aggs}},
            }
            answer = self._raw_search(target, body)
            runs = (answer.get("aggregations") or {}).get("runs") or {}
            buckets = runs.get("buckets") or []
            yield from buckets
            after = runs.get("after_key")
            if len(buckets) < BUCKETS or not after:
                return

    def check_store(self) -> str | None:
        """Why this store cannot be read (the cluster cannot be reached or refuses, or
        holds no flowtrail index), or None."""
        where = f"{self.describe()}"
        targets = f"{quote(self.records_target, safe=',*-')},{quote(self.spans_target, safe='*-')}"
        try:
            found = self.request_json(
                "GET", f"/{targets}/_mapping?ignore_unavailable=true&allow_no_indices=true"
            )
        except DeliveryError as exc:
            return f"cannot read {where}: {exc}"
        if not found:
            return f"no store at {where}: no index {self.config.index!r} there" + self._others()
        return None

    def _others(self) -> str:
        """The flowtrail record indices the cluster has (those that map ``seq`` and
        ``run_id``), to name in the error of an index that is not there."""
        found = []
        try:
            mappings = self.request_json("GET", "/_mapping/field/seq,run_id")
            for name, entry in mappings.items():
                fields = entry.get("mappings") or {}
                if "seq" in fields and "run_id" in fields and not name.startswith("."):
                    found.append(name)
        except (DeliveryError, AttributeError, TypeError, ValueError):
            return ""
        found.sort()
        if not found:
            return ""
        shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        return f" (flowtrail indices there: {shown})"

    def describe(self) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ one run
    def find_trace_with_id(
        self,
        run_id: str,
        force_raise: bool = True,
        *,
        include_children: bool = True,
        text: bool = True,
    ) -> TraceData:
        self._ready()
        query = _run_query(run_id, include_children)
        meta = list(self._records(query))
        spans, still_open = split_open(self._spans(query))
        if text:
            line = compile_line_format(DEFAULT_LOG_FORMAT_FILE)
            data = TraceData(
                stdout="".join(line(r) + "\n" for r in meta if not r.error_flag),
                stderr="".join(line(r) + "\n" for r in meta if r.error_flag),
                meta=meta,
                spans=spans,
                open_spans=still_open,
            )
        else:
            data = TraceData(meta=meta, spans=spans, open_spans=still_open)
        return self.found(run_id, data, force_raise)

    def iter_records(
        self,
        run_id: str,
        *,
        include_children: bool = False,
        level: str | None = None,
        fields: Iterable[str] | None = None,
    ) -> Iterator[Metadata]:
        self._ready()
        clauses: list[Any] = [_run_query(run_id, include_children)]
        names = level_names(level)
        if names:
            clauses.append(_terms("level", names))
        if fields is not None:
            fields = sorted({"run_id", *fields})
            if "metadata" in fields:
                fields = None  # whole sources: see `run_spans`
        yield from self._records({"bool": {"filter": clauses}}, fields=fields)

    def run_spans(
        self,
        run_id: str,
        *,
        include_children: bool = False,
        all_events: bool = True,
        fields: Iterable[str] | None = None,
    ) -> list[Span]:
        self._ready()
        # Spans are read whole (``fields`` is not passed on): servers differ in how they
        # filter a source whose attribute names hold dots (osmem nests them).
        spans = [
            without_log_events(span) for span in self._spans(_run_query(run_id, include_children))
        ]
        if all_events:
            return spans
        return [
            s if s.status == "error" or not s.events else msgspec.structs.replace(s, events=[])
            for s in spans
        ]

    def record_counts(self, run_id: str, *, include_children: bool = False) -> RecordCounts:
        self._ready()
        body = {
            "size": 0,
            "track_total_hits": True,
            "query": _run_query(run_id, include_children),
            "aggs": {
                "first": {"top_hits": {"size": 1, "sort": _RECORD_SORT}},
                "last": {"top_hits": {"size": 1, "sort": _RECORD_SORT_DESC}},
                "errors": {
                    "filter": {"term": {"error_flag": True}},
                    "aggs": {"first": {"top_hits": {"size": 1, "sort": _RECORD_SORT}}},
                },
            },
        }
        answer = self._raw_search(self.records_target, body)
        aggs = answer.get("aggregations") or {}
        total = answer.get("hits", {}).get("total", 0)
        if isinstance(total, dict):
            total = total.get("value", 0)

        def record(source: Any) -> Metadata | None:
            return None if source is None else record_from_source(msgspec.json.encode(source))

        errors = aggs.get("errors", {})
        return RecordCounts(
            records=int(total),
            error_records=int(errors.get("doc_count", 0)),
            first=record(_top(aggs, "first")),
            last=record(_top(aggs, "last")),
            first_error=record(_top(errors, "first")) if errors.get("doc_count") else None,
        )

    # ------------------------------------------------------------------ many runs
    def find_traces(self) -> Iterator[TraceData]:
        for summary in self.runs():
            yield self.find_trace_with_id(summary.run_id, include_children=False)

    def search(
        self,
        text: str | None = None,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        level: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int | None = 1000,
        user: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[Metadata]:
        self._ready()
        clauses: list[Any] = []
        for field, value in (("run_id", run_id), ("workflow_name", workflow), ("user_id", user)):
            if value is not None:
                clauses.append({"term": {field: value}})
        for tag in tags or ():
            clauses.append({"term": {"tags": tag}})
        minimum = check_level(level)
        if minimum is not None:
            clauses.append(_terms("level", level_names(level) or []))
        low = parse_time_filter(since, name="since") if since is not None else None
        high = parse_time_filter(until, name="until") if until is not None else None
        if low is not None or high is not None:
            bounds: dict[str, Any] = {}
            if low is not None:
                bounds["gte"] = low.isoformat()
            if high is not None:
                bounds["lte"] = high.isoformat()
            clauses.append({"range": {"datetime": bounds}})
        if text:
            pattern = _wildcard_text(text)
            clauses.append(
                {
                    "bool": {
                        "should": [
                            {"wildcard": {"message.lower": {"value": pattern}}},
                            {"wildcard": {"exception_message.lower": {"value": pattern}}},
                            {"match_phrase": {"message": text}},
                            {"match_phrase": {"exception_message": text}},
                        ],
                        "minimum_should_match": 1,
                    }
                }
            )
        query = {"bool": {"filter": clauses}} if clauses else {"match_all": {}}
        found = self._records(query, limit=limit)
        if not text:
            return list(found)
        needle = text.lower()
        # The phrase queries find long messages the keyword sub-field does not hold; only
        # those that hold the text as it is typed are kept.
        return [
            r
            for r in found
            if needle in r.message.lower() or needle in (r.exception_message or "").lower()
        ]

    def spans(
        self,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        trace_id: str | None = None,
        limit: int | None = None,
    ) -> list[Span]:
        """Finished spans, oldest first, filtered by run, workflow or trace."""
        self._ready()
        clauses: list[Any] = [_FINISHED]
        for field, value in (
            ("run_id", run_id),
            ("workflow_name", workflow),
            ("trace_id", trace_id),
        ):
            if value is not None:
                clauses.append({"term": {field: value}})
        return self._spans({"bool": {"filter": clauses}}, limit=limit)

    def span_metrics(
        self,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[Metrics, frozenset[str]] | None:
        """`StoreReader.span_metrics` by aggregations: per span kind and name the count,
        errors, min, max, sum and peak memory; per run its first start and last end; the
        p50 and p95 are read exactly, a span at each rank of a ``_msearch`` (the
        cluster's TDigest estimate for a name with more than `RANKED` spans)."""
        self._ready()
        clauses: list[Any] = [_FINISHED]
        if run_id is not None:
            clauses.append({"term": {"run_id": run_id}})
        elif workflow is not None:
            clauses.append({"term": {"workflow_name": workflow}})
        bounds = {
            edge: moment.isoformat()
            for edge, moment in (("gte", since), ("lte", until))
            if moment is not None
        }
        if bounds:
            clauses.append({"range": {"start_time.at": bounds}})
        query = {"bool": {"filter": clauses}}
        target = self.spans_target
        groups = list(self._composite(target, query, _NAME_AGGS, sources=("kind", "name")))
        if not groups:
            return None
        runs: dict[str, tuple[int, int]] = {
            bucket["key"]["run"]: (_top(bucket, "start")["start_ns"], _top(bucket, "end")["end_ns"])
            for bucket in self._composite(target, query, _RUN_AGGS)
        }
        ranked = self._ranked_durations(query, groups)
        by_name: list[SpanStats] = []
        kinds: dict[str, int] = {}
        firsts: dict[str, int] = {}
        for bucket in groups:
            kind, name = bucket["key"]["kind"], bucket["key"]["name"]
            stats = bucket["duration"]
            count, errors = int(stats["count"]), int(bucket["errors"]["doc_count"])
            kinds[kind] = kinds.get(kind, 0) + count
            start = _top(bucket, "first")["start_ns"]
            firsts[kind] = min(firsts.get(kind, start), start)
            estimate = bucket["tdigest"]["values"]
            p50, p95 = (ranked.get((kind, name, q), _estimate(estimate, q)) for q in (50, 95))
            peaks = [bucket[m]["value"] for m in ("mem_start", "mem_end")]
            peaks = [value for value in peaks if value is not None]
            by_name.append(
                SpanStats(
                    kind=kind,
                    name=name,
                    count=count,
                    errors=errors,
                    success_rate=(count - errors) / count,
                    min_ms=stats["min"],
                    max_ms=stats["max"],
                    mean_ms=stats["sum"] / count,
                    p50_ms=p50,
                    p95_ms=p95,
                    total_ms=stats["sum"],
                    peak_memory_mb=max(peaks) if peaks else None,
                )
            )
        # The kinds in the order their first span started, as `aggregate` counts them.
        kinds = {kind: kinds[kind] for kind in sorted(kinds, key=lambda k: (firsts[k], k))}
        by_name.sort(key=lambda stats: (stats.kind, stats.name))
        metrics = summarize_metrics(
            by_name,
            kinds,
            {run: (end - start) / 1e6 for run, (start, end) in runs.items()},
            min(start for start, _ in runs.values()),
            max(end for _, end in runs.values()),
        )
        return metrics, frozenset(runs)

    def _ranked_durations(
        self, query: dict[str, Any], groups: list[Any]
    ) -> dict[tuple[str, str, int], float]:
        """The exact p50 and p95 of each group of at most `RANKED` spans from the one or
        two durations at the ranks each percentile lies between (one search each, all in
        ``_msearch`` requests). A search that fails leaves the estimate."""
        asks: list[tuple[str, str, int, int, int]] = []
        lines: list[bytes] = []
        header = msgspec.json.encode(
            {"index": self.spans_target, "ignore_unavailable": True, "allow_no_indices": True}
        )
        for bucket in groups:
            kind, name = bucket["key"]["kind"], bucket["key"]["name"]
            count = int(bucket["duration"]["count"])
            if count > RANKED:
                continue
            group = {
                "bool": {"filter": [query, {"term": {"kind": kind}}, {"term": {"name": name}}]}
            }
            for q in (50, 95):
                low, high = rank_window(count, q)
                asks.append((kind, name, q, count, low))
                body = {
                    "query": group,
                    "sort": [{"duration_ms": "asc"}],
                    "from": low,
                    "size": high - low + 1,
                    "_source": False,
                    "track_total_hits": False,
                }
                lines += [header, msgspec.json.encode(body)]
        found: dict[tuple[str, str, int], float] = {}
        for first in range(0, len(asks), MSEARCH):
            chunk = lines[2 * first : 2 * (first + MSEARCH)]
            answer = self.request_json("POST", "/_msearch", b"\n".join(chunk) + b"\n")
            responses = answer.get("responses", [])
            for (kind, name, q, count, low), response in zip(
                asks[first : first + MSEARCH], responses, strict=False
            ):
                hits = (response.get("hits") or {}).get("hits") or []
                window = [float(hit["sort"][0]) for hit in hits if hit.get("sort")]
                value = percentile_in_window(window, low, count, q)
                if value is not None:
                    found[(kind, name, q)] = value
        return found

    def run_ids(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        """The ids of the runs whose id starts with ``prefix``, sorted (an aggregation)."""
        self._ready()
        query = {"prefix": {"run_id": prefix}} if prefix else {"match_all": {}}
        found: set[str] = set()
        for target in (self.records_target, self.spans_target):
            # Buckets come in id order: the first ``limit`` of each index are enough.
            for taken, bucket in enumerate(self._composite(target, query, {}), 1):
                found.add(bucket["key"]["run"])
                if limit is not None and taken >= limit:
                    break
        ordered = sorted(found)
        return ordered[:limit] if limit is not None else ordered

    def runs(self, *, workflow: str | None = None, limit: int | None = None) -> list[RunSummary]:
        self._ready()
        summaries: dict[str, RunSummary] = {}
        max_key = {"size": 1, "order": {"_key": "desc"}}
        record_aggs = {
            "parent": {"terms": {"field": "parent_run_id", **max_key}},
            "workflow": {"terms": {"field": "workflow_name", **max_key}},
            "first": {"top_hits": {"size": 1, "sort": _RECORD_SORT, "_source": ["datetime"]}},
            "last": {"top_hits": {"size": 1, "sort": _RECORD_SORT_DESC, "_source": ["datetime"]}},
            "warnings": {"filter": {"term": {"level": "warning"}}},
            "errors": {"filter": _terms("level", sorted(ERROR_LEVELS))},
        }
        for bucket in self._composite(self.records_target, {"match_all": {}}, record_aggs):
            run = bucket["key"]["run"]
            first, last = _top(bucket, "first"), _top(bucket, "last")
            summaries[run] = RunSummary(
                run_id=run,
                parent_run_id=_bucket_key(bucket, "parent"),
                workflow_name=_bucket_key(bucket, "workflow"),
                start=first["datetime"] if first else None,
                end=last["datetime"] if last else None,
                records=bucket["doc_count"],
                warnings=bucket["warnings"]["doc_count"],
                errors=bucket["errors"]["doc_count"],
            )
        span_aggs = {
            "parent": {"terms": {"field": "parent_run_id", **max_key}},
            "workflow": {"terms": {"field": "workflow_name", **max_key}},
            "start": {"terms": {"field": "start_time", "size": 1, "order": {"_key": "asc"}}},
            "end": {"terms": {"field": "end_time", **max_key}},
            "finished": {"filter": _FINISHED},
            "errors": {"filter": {"term": {"status": "error"}}},
            "roots": {
                "filter": {"bool": {"must_not": [{"exists": {"field": "parent_span_id"}}]}},
                "aggs": {"failed": {"filter": {"term": {"status": "error"}}}},
            },
        }
        failing: list[str] = []
        for bucket in self._composite(self.spans_target, {"match_all": {}}, span_aggs):
            run = bucket["key"]["run"]
            summary = summaries.get(run) or RunSummary(
                run_id=run, parent_run_id=_bucket_key(bucket, "parent")
            )
            start, end = _bucket_key(bucket, "start"), _bucket_key(bucket, "end")
            finished = bucket["finished"]["doc_count"]
            roots = bucket["roots"]
            root_status = None
            if roots["doc_count"]:
                root_status = "error" if roots["failed"]["doc_count"] else "ok"
            summaries[run] = with_span_facts(
                summary,
                workflow_name=_bucket_key(bucket, "workflow"),
                start=start,
                end=end,
                spans=finished,
                span_errors=bucket["errors"]["doc_count"],
                span_status=root_status,
            )
            if bucket["errors"]["doc_count"]:
                failing.append(run)
        error_records, failing_spans, still_open = self._status_facts(failing)
        found = with_statuses(summaries, error_records, failing_spans, still_open)
        return select_runs(found, workflow, limit)

    def _status_facts(
        self, failing_runs: list[str]
    ) -> tuple[dict[str, list[RecordFacts]], dict[str, list[SpanFacts]], dict[str, list[Span]]]:
        """What `run_status` needs of every run: the error records, the spans of the runs
        that have a span in error, and the open spans."""
        records: dict[str, list[RecordFacts]] = {}
        fields = ["run_id", "span_id", "level", "message", "exception_type"]
        fields += ["exception_message", f"metadata.{INTERRUPTED}"]
        for record in self._records({"term": {"error_flag": True}}, fields=fields):
            signal = record.metadata.get(INTERRUPTED)
            records.setdefault(record.run_id, []).append(
                RecordFacts(
                    record.span_id,
                    record.level,
                    record.message,
                    record.exception_type,
                    record.exception_message,
                    {INTERRUPTED: signal} if signal else {},
                )
            )
        spans: dict[str, list[SpanFacts]] = {}
        for start in range(0, len(failing_runs), 500):
            chunk = failing_runs[start : start + 500]
            query = {"bool": {"filter": [_terms("run_id", chunk), _FINISHED]}}
            for span in self._spans(query):
                spans.setdefault(span.run_id, []).append(
                    SpanFacts(
                        span.span_id,
                        span.parent_span_id,
                        span.kind,
                        span.name,
                        span.start_ns,
                        span.status,
                        span.status_message,
                        span.attributes if span.status == "error" else {},
                    )
                )
        still_open: dict[str, list[Span]] = {}
        for span in self._spans(
            _OPEN,
            fields=[
                "run_id",
                "trace_id",
                "span_id",
                "name",
                "status",
                "end_ns",
                "process",
                "hostname",
            ],
        ):
            still_open.setdefault(span.run_id, []).append(span)
        return records, spans, still_open


__all__ = ["ElasticReader", "record_from_source"]
