"""What ``flowtrail tail`` prints of a run that is being written: each record and each span
end once, in the order written, and whether the run has ended."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

from flowtrail.formats.tree import duration_text, iso_ns
from flowtrail.records import TraceData
from flowtrail.status import INTERRUPTED, RUNNING, run_status, writer_alive

#: Seconds without anything new, every span ended, after which a run counts as ended (a
#: new top-level span is stored within about a second of its start: see
#: `flowtrail.spans.announce_open_spans` and the pipelines' ``flush_interval``).
QUIET_S = 2.0


def record_line(record: Any) -> str:
    """``2026-11-21 09:59:17 INFO     message``."""
    line = f"{record.datetime[:19].replace('T', ' ')} {record.level.upper():<9} {record.message}"
    if record.exception_type and record.exception_type not in record.message:
        line += f"\n    ! {record.exception_type}: {record.exception_message}"
    return line


def span_end_line(span: Any) -> str:
    """``← stage.validate (15.2ms) ✗ ValueError: ...``."""
    mark = "✗" if span.status == "error" else "✓"
    line = f"← {span.kind}.{span.name} ({duration_text(span.duration_ms)}) {mark}"
    if span.status == "error" and span.status_message:
        line += f" {span.status_message}"
    return line


def _record_key(record: Any) -> tuple[Any, ...]:
    return (
        record.datetime,
        record.process,
        record.thread,
        record.hostname,
        record.level,
        record.message,
    )


class RunFollower:
    """Remembers what was printed of one run. A reader returns a run's records in time
    order, so a batch another process sends late lands among those already printed:
    records are remembered by what they are (their time, writer, level and message,
    counted, so that equal records each print once); span ends by id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.records_seen: Counter[tuple[Any, ...]] = Counter()
        self.spans_seen: set[str] = set()

    def new_lines(self, data: TraceData) -> list[str]:
        """The lines of what came since the last call, in the order written."""
        seen = self.records_seen
        now_seen: Counter[tuple[Any, ...]] = Counter()
        fresh: list[tuple[int, int, str]] = []
        for record in data.meta:
            if record.run_id != self.run_id:
                continue
            key = _record_key(record)
            now_seen[key] += 1
            if now_seen[key] > seen[key]:
                fresh.append((iso_ns(record.datetime), 0, record_line(record)))
        self.records_seen = now_seen
        for span in data.spans:
            if span.run_id == self.run_id and span.span_id not in self.spans_seen:
                self.spans_seen.add(span.span_id)
                fresh.append((span.end_ns, 1, span_end_line(span)))
        # A poll sees what one writer wrote in order; records and span ends are merged by
        # time (a record inside a span comes before its end).
        fresh.sort(key=lambda item: (item[0], item[1]))
        return [line for _, _, line in fresh]

    def ended(self, data: TraceData, now: datetime | None = None) -> str | None:
        """The run's status text once it has ended, else None: a signal stopped it, or it
        has spans, none is open, and the processes that wrote them have exited or nothing
        was written for `QUIET_S` seconds."""
        state = run_status(data.meta, data.spans, data.open_spans)
        if state.status == RUNNING:
            return None
        if state.status == INTERRUPTED:
            return state.text
        if not data.spans:
            return None
        writers = {(span.hostname, span.process) for span in data.spans}
        if not any(writer_alive(host, pid) for host, pid in writers):
            return state.text  # every process that wrote its spans has exited
        last = max([s.end_ns for s in data.spans] + [iso_ns(r.datetime) for r in data.meta[-1:]])
        moment = now or datetime.now(timezone.utc)
        if moment.timestamp() * 1e9 - last < QUIET_S * 1e9:
            return None
        return state.text
