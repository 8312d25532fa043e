"""``flowtrail show`` of a run of any size: the tree of spans with their logs, printed as
the records are read, and the filters that choose what is shown.

A run's spans are held in memory (100,000 spans are some 90 MB); its records are not:
they come from the store's `iter_records` in the order they were written and are printed
under their span as the walk of the tree reaches them. A record is held back only while
its span has not been printed yet (spans that run side by side in threads), so a run
whose spans run one after another is printed holding a handful of records at a time.

The lines are the ones `flowtrail.formats.tree.render_tree` makes (it is the same tree,
built from a list); the summary lines come from the spans and the store's
`RecordCounts`, so they are known before the first record is read.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import timezone
from operator import attrgetter
from typing import Any

import msgspec

from flowtrail.formats.tree import (
    ERROR_MARK,
    OK_MARK,
    _attributes,
    _log_lines,
    _raised_at,
    duration_text,
    status_text,
)
from flowtrail.handlers.query import RecordCounts, check_level
from flowtrail.metrics import aggregate
from flowtrail.records import ERROR_LEVELS, LEVELS, Metadata, Span, parse_iso
from flowtrail.status import RunStatus, run_status

_START_NS = attrgetter("start_ns")

#: The span fields the summary reads (a store may leave the others out).
SUMMARY_FIELDS = (
    "run_id",
    "trace_id",
    "span_id",
    "name",
    "kind",
    "parent_span_id",
    "start_ns",
    "end_ns",
    "duration_ms",
    "status",
    "status_message",
    "events",
    "memory_start_mb",
    "memory_end_mb",
    "workflow_name",
    # The run's status reads these: the interrupted marker, and whether an open
    # span's writer is alive.
    "attributes",
    "hostname",
    "process",
)
#: The span fields the tree reads.
TREE_FIELDS = (*SUMMARY_FIELDS, "start_time", "end_time")

#: The record fields the tree reads.
RECORD_TREE_FIELDS = (
    "run_id",
    "level",
    "message",
    "error_flag",
    "datetime",
    "filename",
    "lineno",
    "trace_id",
    "span_id",
    "exception_type",
    "exception_message",
)
#: The record fields ``--format text`` reads.
RECORD_TEXT_FIELDS = (*RECORD_TREE_FIELDS, "job_name", "stage_name", "stack_trace")

#: How many of the slowest spans the summary names.
SLOWEST = 5


class ShowFilter(msgspec.Struct, kw_only=True, frozen=True):
    """What ``show`` prints of a run: records at or above ``level``; only the spans named
    ``span`` (``name`` or ``kind.name``) with what happened inside them; with ``errors``
    only the spans that failed with their logs (and error records anywhere); spans down
    to ``depth`` levels; at most ``limit`` records. Spans on the way to a chosen span are
    printed too, so that it is seen where it ran."""

    level: str | None = None
    span: str | None = None
    errors: bool = False
    depth: int | None = None
    limit: int | None = None

    @property
    def active(self) -> bool:
        """Whether anything is filtered out."""
        return any(
            (self.level, self.span, self.errors, self.depth is not None, self.limit is not None)
        )

    def describe(self) -> str:
        """The filters as the options that set them."""
        parts = [f"--level {self.level}"] if self.level else []
        parts += [f"--span {self.span}"] if self.span else []
        parts += ["--errors"] if self.errors else []
        parts += [f"--depth {self.depth}"] if self.depth is not None else []
        parts += [f"--limit {self.limit}"] if self.limit is not None else []
        return " ".join(parts)


class Selection:
    """Which spans are shown and which records, for one run and one `ShowFilter`."""

    def __init__(self, spans: list[Span], options: ShowFilter) -> None:
        self.options = options
        self.by_id = {span.span_id: span for span in spans}
        self.parent = {
            span.span_id: span.parent_span_id if span.parent_span_id in self.by_id else None
            for span in spans
        }
        self.min_level = check_level(options.level) or 0
        self.failed: set[str] = set()
        self.depths: dict[str, int] = {}
        if options.depth is not None:
            self.depths = {span_id: self.depth(span_id) for span_id in self.by_id}
        shown: set[str] | None = None  # None: every span
        self.inside: set[str] | None = None  # spans whose records are shown (None: all)
        if options.span:
            wanted = options.span
            chosen = {
                s.span_id for s in spans if wanted in (s.name, f"{s.kind}.{s.name}", s.span_id)
            }
            below = self._with_descendants(spans, chosen)
            self.inside = below
            shown = below | self._ancestors(chosen)
        if options.errors:
            failed = {s.span_id for s in spans if s.status == "error"}
            self.failed = failed
            errors_shown = failed | self._ancestors(failed)
            shown = errors_shown if shown is None else shown & errors_shown
        if options.depth is not None:
            deep = {sid for sid, depth in self.depths.items() if depth <= options.depth}
            shown = deep if shown is None else shown & deep
        self.shown = shown
        #: Whether any record or span is left out (else records go straight to their span).
        self.filtering = bool(
            shown is not None or self.inside is not None or self.min_level or options.errors
        )

    def _ancestors(self, ids: set[str]) -> set[str]:
        found: set[str] = set()
        for span_id in ids:
            parent = self.parent.get(span_id)
            while parent is not None and parent not in found:
                found.add(parent)
                parent = self.parent.get(parent)
        return found

    def _with_descendants(self, spans: list[Span], ids: set[str]) -> set[str]:
        found = set(ids)
        for span in spans:  # oldest first: a parent is met before its children
            if self.parent[span.span_id] in found:
                found.add(span.span_id)
        # A child that started before its parent (clocks of two processes) is caught here.
        changed = True
        while changed:
            changed = False
            for span_id, parent in self.parent.items():
                if parent in found and span_id not in found:
                    found.add(span_id)
                    changed = True
        return found

    def depth(self, span_id: str | None) -> int:
        """1 for a top-level span, 0 outside any span."""
        depth = 0
        while span_id is not None:
            depth += 1
            span_id = self.parent.get(span_id)
        return depth

    def span_shown(self, span: Span) -> bool:
        return self.shown is None or span.span_id in self.shown

    def owner(self, record: Metadata) -> str | None:
        """The span a record is printed under (None: outside any span)."""
        return record.span_id if record.span_id in self.by_id else None

    def record_shown(self, record: Metadata, owner: str | None) -> bool:
        options = self.options
        if self.min_level and LEVELS.get(record.level, 0) < self.min_level:
            return False
        if self.inside is not None and owner not in self.inside:
            return False
        if (
            options.errors
            and owner not in self.failed
            and not (record.error_flag or record.level in ERROR_LEVELS)
        ):
            return False
        return options.depth is None or owner is None or self.depths[owner] <= options.depth

    def place(self, owner: str | None) -> str | None:
        """The nearest shown span at or above ``owner`` (an error record in a span that
        is not shown is printed under the nearest one that is)."""
        while owner is not None and self.shown is not None and owner not in self.shown:
            owner = self.parent.get(owner)
        return owner


def _zone_key(spans: list[Span]) -> Any:
    """A function that turns an ISO time into a text that orders as time against the
    spans' times (in the zone they share, else UTC)."""
    zones = {span.start_time[26:] for span in spans}
    zone = zones.pop() if len(zones) == 1 else "+00:00"
    try:
        tz = parse_iso(f"2000-01-01T00:00:00.000000{zone}").tzinfo or timezone.utc
    except ValueError:
        tz = timezone.utc

    def key(text: str) -> str:
        if text[26:] == zone:
            return text
        try:
            moment = parse_iso(text)
        except (TypeError, ValueError):
            return text
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(tz).isoformat(timespec="microseconds")

    key.zone = zone  # type: ignore[attr-defined]
    return key


_END = "\uffff"  # orders after every time


def tree_lines(
    spans: list[Span],
    records: Iterable[Metadata],
    *,
    run_id: str,
    counts: RecordCounts,
    options: ShowFilter | None = None,
    summary: bool = True,
    state: RunStatus | None = None,
) -> Iterator[str]:
    """The lines (without newlines) of ``show``: header, tree of spans with their logs
    (``records`` read as the walk reaches them), then the summary (``state``: the run's
    status, `flowtrail.status.run_status`)."""
    options = options or ShowFilter()
    selection = Selection(spans, options)
    trace_id = spans[0].trace_id if spans else (counts.first.trace_id if counts.first else None)
    yield f"Workflow Trace: {trace_id or '-'}"
    yield f"Run: {run_id}"
    key = _zone_key(spans)
    shown_spans = [s for s in spans if selection.span_shown(s)]
    children: dict[str | None, list[Span]] = {}
    for span in sorted(shown_spans, key=_START_NS):  # stable: the reader's order on ties
        children.setdefault(selection.place(selection.parent[span.span_id]), []).append(span)

    source = iter(records)
    pending: dict[str | None, deque[tuple[str, Metadata, str | None]]] = {}
    done: set[str] = set()
    head: list[Any] = [None]  # the next record read, not yet queued: (key, record, owner)
    printed = [0]
    limit = options.limit

    by_id, zone = selection.by_id, key.zone
    filtering = selection.filtering

    def read_until(until: str) -> None:
        """Route every record up to time ``until`` to the queue of its span."""
        item = head[0]
        if item is not None:
            if item[0] > until:
                return
            head[0] = None
            owner = None if item[2] in done else item[2]
            pending.setdefault(owner, deque()).append(item)
        # The loop every record goes through once: kept to local names and no calls.
        for record in source:
            moment = record.datetime
            if moment[26:] != zone:
                moment = key(moment)
            span_id = record.span_id
            owner = span_id if span_id in by_id else None
            if filtering:
                if not selection.record_shown(record, owner):
                    continue
                owner = selection.place(owner)
            if owner in done:
                owner = None  # written after its span ended: shown at the top level
            if moment > until:
                head[0] = (moment, record, owner)
                return
            queue = pending.get(owner)
            if queue is None:
                queue = pending[owner] = deque()
            queue.append((moment, record, owner))

    def logs(owner: str | None, until: str, pad: str) -> list[str]:
        queue = pending.get(owner)
        lines: list[str] = []
        while queue and queue[0][0] <= until:
            if limit is not None and printed[0] >= limit:
                break
            printed[0] += 1
            record = queue.popleft()[1]
            lines.append(f"{pad}[{record.level.upper()}] {record.message}")
            if record.exception_type:
                lines.extend(_log_lines(record, pad)[1:])
        return lines

    stack: list[tuple[str | None, deque[Span], int]] = [(None, deque(children.get(None, ())), 0)]
    stopped = False
    while stack:
        if limit is not None and printed[0] >= limit:
            stopped = True
            break
        owner, kids, depth = stack[-1]
        pad = "  " * depth
        if kids:
            child = kids[0]
            start = key(child.start_time)
            read_until(start)
            yield from logs(owner, start, pad)
            if limit is not None and printed[0] >= limit and pending.get(owner):
                continue
            kids.popleft()
            when = f" [{child.start_time[:19].replace('T', ' ')}]" if owner is None else ""
            yield f"{pad}→ {child.kind}.{child.name}{when}{_attributes(child)}"
            stack.append((child.span_id, deque(children.get(child.span_id, ())), depth + 1))
            continue
        until = _END if owner is None else key(selection.by_id[owner].end_time)
        read_until(until)
        yield from logs(owner, _END, pad)
        if limit is not None and printed[0] >= limit and pending.get(owner):
            continue
        stack.pop()
        if owner is not None:
            done.add(owner)
            pending.pop(owner, None)
            span = selection.by_id[owner]
            mark = ERROR_MARK if span.status == "error" else OK_MARK
            pad = "  " * (depth - 1)
            end = f"{pad}← {span.kind}.{span.name} ({duration_text(span.duration_ms)}) {mark}"
            if span.status == "error" and span.status_message:
                end += f" {span.status_message}"
            yield end
    if stopped:
        yield f"… stopped after {limit} record(s) (--limit); the summary is of the whole run"
    if summary:
        yield ""
        yield from summary_lines(spans, counts, options=options, printed=printed[0], state=state)


def summary_lines(
    spans: list[Span],
    counts: RecordCounts,
    *,
    options: ShowFilter | None = None,
    printed: int | None = None,
    state: RunStatus | None = None,
) -> Iterator[str]:
    """The summary of a run: status (``state``, from `flowtrail.status.run_status`; the
    same lines as `flowtrail.formats.tree.render_summary`), duration, spans, failures,
    the slowest spans, the first failure (where it was raised) and the first error
    record."""
    if state is None:
        state = run_status([counts.first_error] if counts.first_error else [], spans)
    yield "Summary:"
    yield f"- Status: {status_text(state)}"
    if not spans:
        yield f"- Records: {counts.records}"
        yield f"- Error Records: {counts.error_records}"
        if state.first_failure:
            yield f"- First Failure: {state.first_failure}"
    else:
        metrics = aggregate(spans)
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(metrics.kinds.items()))
        nodes = [s for s in spans if s.kind != "workflow"]
        nodes_ok = sum(1 for s in nodes if s.status != "error")
        failed_spans = sum(1 for s in spans if s.status == "error")
        yield f"- Total Duration: {duration_text(metrics.total_duration_ms)}"
        yield f"- Spans: {metrics.span_count} ({kinds})"
        yield (
            f"- Nodes Executed: {len(nodes)} (spans below the workflow, retried attempts included)"
        )
        yield f"- Records: {counts.records}"
        yield (
            f"- Failures: {state.failures} ({failed_spans} span(s) ended in error, "
            f"{counts.error_records} error record(s))"
        )
        if nodes:
            yield (
                f"- Success Rate: {nodes_ok / len(nodes):.0%} of nodes ended ok "
                f"({nodes_ok} of {len(nodes)})"
            )
        if metrics.peak_memory_mb is not None:
            yield f"- Peak Memory: {metrics.peak_memory_mb:.1f} MB"
        slowest = heapq.nlargest(
            SLOWEST, (s for s in spans if s.kind != "workflow"), key=lambda s: s.duration_ms
        )
        if slowest:
            first = slowest[0]
            yield f"- Slowest: {first.kind}.{first.name} ({duration_text(first.duration_ms)})"
            for span in slowest[1:]:
                yield f"    then {span.kind}.{span.name} ({duration_text(span.duration_ms)})"
        failed = next((s for s in spans if s.span_id == state.failed_span_id), None)
        if failed is not None:
            yield (
                f"- First Failure: {failed.kind}.{failed.name}: {failed.status_message or 'error'}"
            )
            yield from (f"    {line}" for line in _raised_at(failed))
        elif state.first_failure:
            yield f"- First Failure: {state.first_failure}"
    if counts.first_error is not None:
        record = counts.first_error
        where = f" ({record.filename}:{record.lineno})" if record.filename else ""
        yield f"- First Error Record: [{record.level.upper()}] {record.message}{where}"
    if options is not None and options.active and printed is not None:
        yield f"- Shown: {printed} of {counts.records} record(s) ({options.describe()})"


def record_lines(
    records: Iterable[Metadata],
    selection: Selection,
    *,
    run_id: str,
    counts: RecordCounts,
    workflow: str | None,
    state: RunStatus | None = None,
) -> Iterator[str]:
    """``show --format text`` (and ``show`` of a run without spans): one line a record
    (with its stack under an error), between a header and the first error."""
    options = selection.options
    first, last = counts.first, counts.last
    status = f"  status={state.text}" if state is not None else ""
    yield (
        f"Run {run_id}  workflow={workflow or '-'}{status}  records={counts.records}  "
        f"errors={counts.error_records}"
    )
    yield f"From {first.datetime if first else '-'} to {last.datetime if last else '-'}"
    yield ""
    printed = 0
    for record in records:
        owner = selection.owner(record)
        if not selection.record_shown(record, owner):
            continue
        if options.limit is not None and printed >= options.limit:
            yield f"… stopped after {options.limit} record(s) (--limit)"
            break
        printed += 1
        yield record_line(record)
        if record.stack_trace and record.level in ERROR_LEVELS:
            yield from (f"    {text}" for text in record.stack_trace.rstrip().splitlines())
    if counts.first_error is not None:
        yield ""
        yield f"{counts.error_records} error record(s); first: {counts.first_error.message}"
    if options.active:
        yield f"Shown: {printed} of {counts.records} record(s) ({options.describe()})"


def record_line(record: Metadata) -> str:
    """One record as a line: time, level, message, job / stage, file and line."""
    where = " / ".join(x for x in (record.job_name, record.stage_name) if x)
    where = f" ({where})" if where else ""
    moment = record.datetime[:19].replace("T", " ") if record.datetime else "-"
    return (
        f"{moment} {record.level.upper():<9} {record.message}{where}  "
        f"[{record.filename}:{record.lineno}]"
    )
