"""Filters and summaries shared by the stores' readers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import msgspec

from flowtrail.records import (
    ERROR_LEVELS,
    LEVELS,
    SPAN_FIELDS,
    Metadata,
    RunSummary,
    Span,
    SpanEvent,
    parse_iso,
)
from flowtrail.status import RecordFacts, SpanFacts, run_status
from flowtrail.timeparse import parse_time_filter

_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def parse_time(value: Any) -> datetime:
    """An aware datetime from a datetime or an ISO-8601 string (naive means UTC)."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = parse_iso(str(value))
        except ValueError:
            return _EARLIEST
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def time_in_range(text: str | None, since: datetime | None, until: datetime | None) -> bool:
    """Whether the time stamp ``text`` is at or after ``since`` and at or before ``until``
    (either may be None); a missing time stamp is in no bounded range."""
    if since is None and until is None:
        return True
    if not text:
        return False
    moment = parse_time(text)
    return (since is None or moment >= since) and (until is None or moment <= until)


def sort_by_time(records: list[Metadata]) -> list[Metadata]:
    """Records in time order (stable). ISO strings with one zone offset sort as text;
    mixed offsets are compared as instants."""
    if len({record.datetime[26:] for record in records}) <= 1:
        records.sort(key=lambda record: record.datetime)
    else:
        records.sort(key=lambda record: parse_time(record.datetime))
    return records


def check_level(level: str | None) -> int | None:
    """The severity of a level name, or ValueError listing the names."""
    if level is None:
        return None
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}") from None


class RecordFilter:
    """A predicate over records: text (case-insensitive, in the message or the exception),
    run, workflow, minimum level, a time range (see `flowtrail.timeparse`; a bad time
    raises `TimeFilterError`), the ``user_id`` and tags (a record must have each)."""

    def __init__(
        self,
        text: str | None = None,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        level: str | None = None,
        since: Any = None,
        until: Any = None,
        user: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        self.text = text.lower() if text else None
        self.run_id = run_id
        self.workflow = workflow
        self.min_level = check_level(level)
        self.since = parse_time_filter(since, name="since") if since is not None else None
        self.until = parse_time_filter(until, name="until") if until is not None else None
        self.user = user
        self.tags = tuple(tags or ())

    def __call__(self, record: Metadata) -> bool:
        if self.run_id is not None and record.run_id != self.run_id:
            return False
        if self.workflow is not None and record.workflow_name != self.workflow:
            return False
        if self.user is not None and record.user_id != self.user:
            return False
        if self.tags and not all(tag in record.tags for tag in self.tags):
            return False
        if self.min_level is not None and LEVELS.get(record.level, 0) < self.min_level:
            return False
        if self.text is not None:
            haystack = record.message.lower()
            if (
                self.text not in haystack
                and self.text not in (record.exception_message or "").lower()
            ):
                return False
        if self.since is not None or self.until is not None:
            moment = parse_time(record.datetime)
            if self.since is not None and moment < self.since:
                return False
            if self.until is not None and moment > self.until:
                return False
        return True


def at_or_above(records: Iterable[Metadata], level: str | None) -> Iterator[Metadata]:
    """``records`` at or above ``level`` (all of them when it is None), lazily."""
    minimum = check_level(level) or 0
    if not minimum:
        return iter(records)
    return (record for record in records if LEVELS.get(record.level, 0) >= minimum)


def summarize(
    records: Iterable[Metadata], spans: Sequence[Span] = (), open_spans: Sequence[Span] = ()
) -> RunSummary:
    """The summary of one run's records, finished spans and open spans (its status by
    `flowtrail.status.run_status`); the records are read once, one at a time, and only
    the error records are kept (a run of any size is summed up without holding it)."""
    first = None
    count = warnings = errors = 0
    earliest = latest = None
    workflow = None
    error_records: list[Metadata] = []
    for record in records:
        if first is None:
            first = record
        count += 1
        level = record.level
        if level == "warning":
            warnings += 1
        elif level in ERROR_LEVELS:
            errors += 1
            error_records.append(record)
        moment = record.datetime
        if earliest is None or moment < earliest:
            earliest = moment
        if latest is None or moment > latest:
            latest = moment
        if workflow is None:
            workflow = record.workflow_name
    some_span = spans[0] if spans else open_spans[0] if open_spans else None
    times = [t for t in (earliest, latest) if t is not None]
    times += [s.start_time for s in spans] + [s.end_time for s in spans]
    times += [s.start_time for s in open_spans]
    workflow = workflow or next(
        (s.workflow_name for s in (*spans, *open_spans) if s.workflow_name), None
    )
    ids = {span.span_id for span in spans}
    top = [span for span in spans if span.parent_span_id not in ids]
    status = run_status(error_records, spans, open_spans)
    return RunSummary(
        run_id=first.run_id if first else some_span.run_id,  # type: ignore[union-attr]
        parent_run_id=first.parent_run_id if first else some_span.parent_run_id,  # type: ignore[union-attr]
        workflow_name=workflow,
        start=min(times) if times else None,
        end=max(times) if times else None,
        records=count,
        warnings=warnings,
        errors=errors,
        spans=len(spans),
        span_errors=sum(1 for s in spans if s.status == "error"),
        span_status=("error" if any(s.status == "error" for s in top) else "ok") if spans else None,
        status=status.status,
        retried=status.retried,
        failures=status.failures,
        interrupted_by=status.interrupted_by,
    )


class RecordCounts(msgspec.Struct, kw_only=True):
    """What a summary needs of a run's records without reading them all into memory:
    how many, how many have the error flag, and the first, last and first error record."""

    records: int = 0
    error_records: int = 0
    first: Metadata | None = None
    last: Metadata | None = None
    first_error: Metadata | None = None

    def add(self, record: Metadata) -> None:
        """Count one more record (in the order they were written)."""
        self.records += 1
        if self.first is None:
            self.first = record
        self.last = record
        if record.error_flag:
            self.error_records += 1
            if self.first_error is None:
                self.first_error = record


class _EventName(msgspec.Struct):
    name: str = ""


#: One empty list for the spans that have no events left (spans are frozen).
_NO_EVENTS: list[SpanEvent] = []
_event_names = msgspec.json.Decoder(list[_EventName]).decode
_events = msgspec.json.Decoder(list[SpanEvent]).decode


def with_span_facts(
    summary: RunSummary,
    *,
    workflow_name: str | None,
    start: str | None,
    end: str | None,
    spans: int,
    span_errors: int,
    span_status: str | None,
) -> RunSummary:
    """``summary`` (from a run's records) with what its finished spans add: the workflow
    name if the records had none, the earlier start and later end, and the span counts."""
    return msgspec.structs.replace(
        summary,
        workflow_name=summary.workflow_name or workflow_name,
        start=min(x for x in (summary.start, start) if x) if summary.start else start,
        end=max(x for x in (summary.end, end) if x) if summary.end else end,
        spans=spans,
        span_errors=span_errors,
        span_status=span_status if spans else None,
    )


def with_statuses(
    summaries: dict[str, RunSummary],
    error_records: Mapping[str, Sequence[RecordFacts]],
    failing_spans: Mapping[str, Sequence[SpanFacts]],
    still_open: Mapping[str, Sequence[Any]],
) -> list[RunSummary]:
    """The summaries with each run's status by the one rule (`flowtrail.status`), from
    the error records, the spans of the runs with a span in error, and the open spans."""
    found = []
    for run_id, summary in summaries.items():
        quiet = run_id not in error_records and run_id not in failing_spans
        if quiet and run_id not in still_open:
            found.append(msgspec.structs.replace(summary, status="ok"))
            continue
        status = run_status(
            error_records.get(run_id, ()),
            failing_spans.get(run_id, ()),
            still_open.get(run_id, ()),
        )
        found.append(
            msgspec.structs.replace(
                summary,
                status=status.status,
                retried=status.retried,
                failures=status.failures,
                interrupted_by=status.interrupted_by,
            )
        )
    return found


def select_runs(
    summaries: list[RunSummary], workflow: str | None, limit: int | None
) -> list[RunSummary]:
    """Newest first, of one workflow if given, at most ``limit``."""
    if workflow is not None:
        summaries = [s for s in summaries if s.workflow_name == workflow]
    summaries.sort(key=lambda s: parse_time(s.start or ""), reverse=True)
    return summaries[:limit] if limit is not None else summaries


def events_without_logs(raw: bytes | str | None) -> list[SpanEvent]:
    """A span's events from their JSON text, without its ``log`` events, reading only
    the names of the events it drops (a run's 1,000,000 log events are never built)."""
    if not raw:
        return []
    names = [event.name for event in _event_names(raw)]
    if "log" not in names:
        return _events(raw)
    if names.count("log") == len(names):
        return _NO_EVENTS
    return [event for event in _events(raw) if event.name != "log"]


#: Span fields whose values repeat from span to span of a run.
_SHARED = [
    SPAN_FIELDS.index(name)
    for name in (
        "run_id",
        "trace_id",
        "name",
        "kind",
        "parent_run_id",
        "workflow_name",
        "job_name",
        "stage_name",
        "hostname",
        "status",
    )
]
_ATTRIBUTES = SPAN_FIELDS.index("attributes")
_EVENTS = SPAN_FIELDS.index("events")
_STATUS = SPAN_FIELDS.index("status")
_SAMPLED = SPAN_FIELDS.index("sampled")
_decode_json = msgspec.json.decode


def partial_loader(
    cls: type[Any], fields: Iterable[str] | None, build: Callable[[list[Any]], Any]
) -> tuple[tuple[str, ...], Callable[[Sequence[Any]], Any]]:
    """For a reader that reads only ``fields`` of struct ``cls`` (None: all; required
    fields are always read): the fields read, in ``cls``'s order, and a function from a
    row of their values to ``build`` of the full values list (defaults for the others;
    None for fields made by a factory, which ``build`` must fill)."""
    names = cls.__struct_fields__
    wanted = set(names if fields is None else fields)
    template: list[Any] = []
    for info in msgspec.structs.fields(cls):
        if info.required:
            wanted.add(info.name)
        template.append(info.default if info.default is not msgspec.NODEFAULT else None)
    chosen = tuple(name for name in names if name in wanted)
    if len(chosen) == len(names):
        return chosen, lambda row: build(list(row))
    positions = [names.index(name) for name in chosen]

    def load(row: Sequence[Any]) -> Any:
        values = template.copy()
        for index, value in zip(positions, row, strict=True):
            values[index] = value
        return build(values)

    return chosen, load


class SpanLoader:
    r"""Builds `Span`\ s from their stored values, for a reader that holds a whole run's
    spans:

    - only ``fields`` are read (`fields`, in `SPAN_FIELDS` order; the others keep their
      defaults): a summary needs a few, the JSON document all;
    - ``log`` events are left out (they repeat the run's records) and never built; with
      ``all_events=False`` only failed spans keep their events (they tell where the span
      failed);
    - the names that repeat from span to span (run, trace, workflow, job, host) are
      shared with the spans built before, so 100,000 spans hold each once.

    A row holds the values of `fields` in order: the attributes as JSON text or a dict,
    the events as JSON text or bytes.
    """

    def __init__(self, fields: Iterable[str] | None = None, *, all_events: bool = True) -> None:
        self.fields, self._load = partial_loader(Span, fields, self._build)
        positions = {SPAN_FIELDS.index(name) for name in self.fields}
        self._shared = [i for i in _SHARED if i in positions]
        self._all_events = all_events
        shared: dict[Any, Any] = {}
        self._share = shared.setdefault

    def __call__(self, row: Sequence[Any]) -> Span:
        return self._load(row)

    def _build(self, values: list[Any]) -> Span:
        share = self._share
        for index in self._shared:
            value = values[index]
            if value is not None:
                values[index] = share(value, value)
        attributes = values[_ATTRIBUTES]
        if attributes.__class__ is not dict:
            values[_ATTRIBUTES] = _decode_json(attributes) if attributes else {}
        raw = values[_EVENTS]
        if raw and (self._all_events or values[_STATUS] == "error"):
            values[_EVENTS] = events_without_logs(raw)
        else:
            values[_EVENTS] = _NO_EVENTS
        values[_SAMPLED] = bool(values[_SAMPLED])
        return Span(*values)


def without_log_events(span: Span) -> Span:
    """``span`` without its ``log`` events: they repeat the run's records (each record
    written in a span is attached to it as an event), so a reader that has the records
    need not hold them twice."""
    events = span.events
    if not events or not any(event.name == "log" for event in events):
        return span
    return msgspec.structs.replace(span, events=[e for e in events if e.name != "log"])


def level_names(level: str | None) -> list[str] | None:
    """The level names at or above ``level`` (None: no filter)."""
    minimum = check_level(level)
    if minimum is None:
        return None
    return [name for name, value in LEVELS.items() if value >= minimum]


def merge_counts(a: RecordCounts, b: RecordCounts) -> RecordCounts:
    """The counts of two runs read together (a parent and its child runs)."""

    def pick(x: Metadata | None, y: Metadata | None, last: bool = False) -> Metadata | None:
        if x is None or y is None:
            return x or y
        later = parse_time(y.datetime) > parse_time(x.datetime)
        return y if later == last else x

    return RecordCounts(
        records=a.records + b.records,
        error_records=a.error_records + b.error_records,
        first=pick(a.first, b.first),
        last=pick(a.last, b.last, last=True),
        first_error=pick(a.first_error, b.first_error),
    )
