"""The status of a run, decided in one place for every reader (``runs``, ``show``, the
JSON document, the HTML report, ``stats`` and the stores' ``runs()``).

- ``error``: the run has an error or exception record, or a span that ended in error and
  was not followed by a successful retry (the next spans under the same parent, with no
  other span between, of the same kind and name, one of which ended ``ok``; other spans
  may come between when the failed span has the `RETRIED_ATTEMPT` attribute). A failed
  attempt that was retried leaves the run ``ok`` and counts in ``retried``; so do the
  error records written inside it.
- ``interrupted``: a span started and never ended and its writer is gone (killed, crashed),
  or the process recorded that a signal stopped it (`flowtrail.lifecycle.INTERRUPTED`).
- ``running``: a span started and has not ended and its writer is alive (same host: its
  pid exists; another host: it cannot be told, so the run counts as running).
- ``ok`` otherwise.

One exception passing through nested spans is one failure: a failed span whose child
failed is the same failure, and an error record inside a failed span (or the record of
the same exception written after the span ended) is too.

A span's start is stored as an *open span*: a `Span` with status ``unset`` and
``end_ns == 0`` (see `flowtrail.spans`), completed by the finished span with the same
``span_id``. `split_open` separates them when a store is read.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NamedTuple

import msgspec

from flowtrail.lifecycle import interrupted_by
from flowtrail.records import ERROR_LEVELS

OK: Final = "ok"
ERROR: Final = "error"
INTERRUPTED: Final = "interrupted"
RUNNING: Final = "running"
#: Every status, most severe first.
STATUSES: Final = (ERROR, INTERRUPTED, RUNNING, OK)
#: The status of an open span (a span start without its end).
OPEN_SPAN_STATUS: Final = "unset"
#: Attribute of a failed span whose work was sent to be retried (its value names the
#: work, e.g. a task id): a later span of the same kind and name under the same parent
#: that ended ok is its retry even with other spans started between them.
RETRIED_ATTEMPT: Final = "attempt.of"


class RunStatus(msgspec.Struct, frozen=True):
    """How a run went: ``status`` (one of `STATUSES`), ``failures`` (distinct failures),
    ``retried`` (failed attempts followed by a successful retry), ``first_failure`` (a
    line naming it), ``interrupted_by`` (the signal, when one was recorded) and
    ``open_spans`` (spans started and not ended)."""

    status: str = OK
    failures: int = 0
    retried: int = 0
    first_failure: str | None = None
    interrupted_by: str | None = None
    open_spans: int = 0
    #: The span of the first failure, when it is a span.
    failed_span_id: str | None = None

    @property
    def text(self) -> str:
        """``ok``, ``ok (retried)``, ``error``, ``interrupted (SIGTERM)`` ..."""
        if self.status == OK and self.retried:
            return "ok (retried)"
        if self.status == INTERRUPTED and self.interrupted_by:
            return f"interrupted ({self.interrupted_by})"
        return self.status


class SpanFacts(NamedTuple):
    """What the status needs of a span (a `Span` has these attributes too)."""

    span_id: str
    parent_span_id: str | None
    kind: str
    name: str
    start_ns: int
    status: str
    status_message: str | None
    attributes: dict[str, Any]


class RecordFacts(NamedTuple):
    """What the status needs of an error record (a `Metadata` has these attributes)."""

    span_id: str | None
    level: str
    message: str
    exception_type: str | None
    exception_message: str | None
    metadata: dict[str, Any]


def is_open(span: Any) -> bool:
    """Whether ``span`` is an open span (its start, written before it ended)."""
    return span.status == OPEN_SPAN_STATUS and not span.end_ns


def split_open(spans: Iterable[Any]) -> tuple[list[Any], list[Any]]:
    """``(finished, still_open)``: the finished spans, and the open spans whose end is not
    among ``spans``."""
    finished: list[Any] = []
    opened: list[Any] = []
    for span in spans:
        (opened if is_open(span) else finished).append(span)
    if not opened:
        return finished, opened
    ended = {span.span_id for span in finished}
    return finished, [span for span in opened if span.span_id not in ended]


_HOST: list[str | None] = [None]


def _this_host() -> str:
    host = _HOST[0]
    if host is None:
        from flowtrail.context import host_info

        host = _HOST[0] = host_info().hostname or socket.gethostname()
    return host


def writer_alive(hostname: str | None, pid: int) -> bool:
    """Whether the process ``pid`` on ``hostname`` may still be writing: on this host,
    whether it exists (and is not a zombie); on another host it cannot be told (True)."""
    if hostname and hostname != _this_host():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def run_status(
    records: Iterable[Any],
    spans: Sequence[Any],
    open_spans: Iterable[Any] = (),
    *,
    alive: Callable[[str | None, int], bool] = writer_alive,
) -> RunStatus:
    """The status of one run from its records (only error records matter), its finished
    spans and its open spans (see the module docstring for the rule)."""
    by_id = {span.span_id: span for span in spans}
    # Retries: a span that ended in error and a later one of the same kind and name under
    # the same parent that ended ok.
    retried: set[str] = set()
    errors = [span for span in spans if span.status == ERROR and interrupted_by(span) is None]
    if errors:
        # A retry is the next span under the same parent, of the same kind and name: a
        # failed attempt is retried when the attempts right after it (no other span
        # between) include one that ended ok. A loop that runs a stage of the same name
        # again later, after other stages, is not a retry.
        parents = {span.parent_span_id for span in errors}
        siblings: dict[str | None, list[Any]] = {}
        for span in spans:
            if span.parent_span_id in parents:
                siblings.setdefault(span.parent_span_id, []).append(span)
        for group in siblings.values():
            group.sort(key=lambda span: span.start_ns)
            for index, span in enumerate(group):
                if span.status != ERROR or interrupted_by(span) is not None:
                    continue
                # A span marked as an attempt that was sent again (a task retried through
                # a queue) may have other spans between it and its retry.
                interleaved = bool(span.attributes) and RETRIED_ATTEMPT in span.attributes
                for later in group[index + 1 :]:
                    if (later.kind, later.name) != (span.kind, span.name):
                        if interleaved:
                            continue
                        break
                    if later.status == OK:
                        retried.add(span.span_id)
                        break

    def chain(span_id: str | None) -> Iterable[str]:
        seen = 0
        while span_id is not None and seen < 10_000:
            yield span_id
            span = by_id.get(span_id)
            span_id = span.parent_span_id if span is not None else None
            seen += 1

    def forgiven(span_id: str | None) -> bool:
        return bool(retried) and any(i in retried for i in chain(span_id))

    signal: str | None = None
    failed: dict[str, Any] = {}
    for span in spans:
        if span.status != ERROR:
            continue
        cut = interrupted_by(span)
        if cut is not None:
            signal = signal or cut
        elif not forgiven(span.span_id):
            failed[span.span_id] = span
    # One failure per exception: a failed span with a failed child is that child's failure.
    parents = {span.parent_span_id for span in failed.values()}
    leaves = [span for span in failed.values() if span.span_id not in parents]
    messages = {span.status_message for span in failed.values() if span.status_message}
    failures = len(leaves)
    first: str | None = None
    first_span: str | None = None
    if leaves:
        top = min(leaves, key=lambda s: s.start_ns)
        first = f"{top.kind}.{top.name}: {top.status_message or 'error'}"
        first_span = top.span_id
    for record in records:
        if record.level not in ERROR_LEVELS:
            continue
        cut = interrupted_by(record)
        if cut is not None:
            signal = signal or cut
            continue
        ids = list(chain(record.span_id))
        if retried and any(i in retried for i in ids):
            continue
        if any(i in failed for i in ids):
            continue
        if record.exception_type and f"{record.exception_type}: {record.exception_message}" in (
            messages
        ):
            continue  # the same exception, recorded again after its span ended
        failures += 1
        if first is None:
            first = record.message
    still_open = [span for span in open_spans if span.span_id not in by_id]
    if failures:
        status = ERROR
    elif signal is not None:
        status = INTERRUPTED
    elif still_open:
        writers = {(getattr(s, "hostname", None), getattr(s, "process", 0)) for s in still_open}
        status = RUNNING if any(alive(host, pid) for host, pid in writers) else INTERRUPTED
    else:
        status = OK
    return RunStatus(
        status=status,
        failures=failures,
        retried=len(retried),
        first_failure=first,
        interrupted_by=signal,
        open_spans=len(still_open),
        failed_span_id=first_span,
    )
