"""Filters and summaries shared by the stores' readers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from flowtrail.records import ERROR_LEVELS, LEVELS, Metadata, RunSummary, Span, parse_iso
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
    run, workflow, minimum level and a time range (see `flowtrail.timeparse`; a bad
    time raises `TimeFilterError`)."""

    def __init__(
        self,
        text: str | None = None,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        level: str | None = None,
        since: Any = None,
        until: Any = None,
    ) -> None:
        self.text = text.lower() if text else None
        self.run_id = run_id
        self.workflow = workflow
        self.min_level = check_level(level)
        self.since = parse_time_filter(since, name="since") if since is not None else None
        self.until = parse_time_filter(until, name="until") if until is not None else None

    def __call__(self, record: Metadata) -> bool:
        if self.run_id is not None and record.run_id != self.run_id:
            return False
        if self.workflow is not None and record.workflow_name != self.workflow:
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


def summarize(
    records: Sequence[Metadata], spans: Sequence[Span] = (), open_spans: Sequence[Span] = ()
) -> RunSummary:
    """The summary of one run's records, finished spans and open spans (its status by
    `flowtrail.status.run_status`)."""
    from flowtrail.status import run_status

    first = records[0] if records else None
    some_span = spans[0] if spans else open_spans[0] if open_spans else None
    times = sorted(
        [r.datetime for r in records]
        + [s.start_time for s in spans]
        + [s.end_time for s in spans]
        + [s.start_time for s in open_spans]
    )
    workflow = next((r.workflow_name for r in records if r.workflow_name), None) or next(
        (s.workflow_name for s in (*spans, *open_spans) if s.workflow_name), None
    )
    ids = {span.span_id for span in spans}
    top = [span for span in spans if span.parent_span_id not in ids]
    status = run_status(records, spans, open_spans)
    return RunSummary(
        run_id=first.run_id if first else some_span.run_id,  # type: ignore[union-attr]
        parent_run_id=first.parent_run_id if first else some_span.parent_run_id,  # type: ignore[union-attr]
        workflow_name=workflow,
        start=times[0] if times else None,
        end=times[-1] if times else None,
        records=len(records),
        warnings=sum(1 for r in records if r.level == "warning"),
        errors=sum(1 for r in records if r.level in ERROR_LEVELS),
        spans=len(spans),
        span_errors=sum(1 for s in spans if s.status == "error"),
        span_status=("error" if any(s.status == "error" for s in top) else "ok") if spans else None,
        status=status.status,
        retried=status.retried,
        failures=status.failures,
        interrupted_by=status.interrupted_by,
    )
