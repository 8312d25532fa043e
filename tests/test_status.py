"""The run status rule (`flowtrail.status.run_status`) on hand-made spans and records: what
counts as a retry, one failure per exception, signals, open spans and their writers."""

from __future__ import annotations

import os
import subprocess
import sys

from flowtrail.lifecycle import INTERRUPTED
from flowtrail.records import Metadata, Span
from flowtrail.status import RETRIED_ATTEMPT, run_status, split_open, writer_alive


def span(span_id: str, parent: str | None, name: str, start: int, status: str = "ok", **kw) -> Span:
    return Span(
        run_id="r",
        trace_id="t" * 32,
        span_id=span_id,
        name=name,
        kind=kw.pop("kind", "stage"),
        parent_span_id=parent,
        start_ns=start,
        end_ns=start + 1 if status != "unset" else 0,
        status=status,  # type: ignore[arg-type]
        status_message=kw.pop("message", "ValueError: x" if status == "error" else None),
        **kw,
    )


def record(level: str, span_id: str | None = None, **kw) -> Metadata:
    return Metadata(run_id="r", level=level, span_id=span_id, error_flag=level != "info", **kw)


def test_a_retry_is_the_same_kind_name_and_parent_started_later() -> None:
    job = span("j", None, "job", 0, kind="job")
    first = span("a1", "j", "validate", 1, "error")
    second = span("a2", "j", "validate", 2)
    inside = record("exception", "a1", exception_type="ValueError", exception_message="x")
    state = run_status([inside], [job, first, second])
    assert (state.status, state.retried, state.failures, state.text) == ("ok", 1, 0, "ok (retried)")
    # An ok span of the same name under another parent, or earlier, is no retry.
    other = span("o", None, "validate", 3)
    earlier = span("e", "j", "validate", 0)
    assert run_status([], [job, first, other, earlier]).status == "error"


def test_an_attempt_sent_again_is_retried_with_other_spans_between() -> None:
    """A task retried through a queue (`RETRIED_ATTEMPT` on its failed execution) runs
    again after other tasks of the same parent: still a retry."""
    job = span("j", None, "job", 0, kind="job")
    first = span("t1", "j", "load", 1, "error", kind="task", attributes={RETRIED_ATTEMPT: "id-1"})
    other = span("o", "j", "send", 2, kind="task")
    again = span("t2", "j", "load", 3, kind="task")
    assert run_status([], [job, first, other, again]).text == "ok (retried)"
    # Without the mark, the span between makes it no retry; and no later ok span, none.
    plain = span("t1", "j", "load", 1, "error", kind="task")
    assert run_status([], [job, plain, other, again]).status == "error"
    assert run_status([], [job, first, other]).status == "error"


def test_a_stage_of_a_loop_that_runs_again_later_is_no_retry() -> None:
    """A loop over items runs stages named a, b, a, b: the second ``a`` is the next
    item, not a retry of the first (another stage ran between them)."""
    job = span("j", None, "job", 0, kind="job")
    loop = [
        span("a1", "j", "a", 1, "error"),
        span("b1", "j", "b", 2),
        span("a2", "j", "a", 3),
        span("b2", "j", "b", 4),
    ]
    assert run_status([], [job, *loop]).status == "error"
    # Attempts right after each other, however many fail first, are retries.
    attempts = [span("x1", "j", "a", 1, "error"), span("x2", "j", "a", 2, "error")]
    attempts.append(span("x3", "j", "a", 3))
    state = run_status([], [job, *attempts])
    assert (state.status, state.retried) == ("ok", 2)


def test_one_exception_through_nested_spans_is_one_failure() -> None:
    spans = [
        span("w", None, "wf", 0, "error", kind="workflow"),
        span("j", "w", "load", 1, "error", kind="job"),
        span("s", "j", "write", 2, "error"),
    ]
    escaped = record("exception", "s", exception_type="ValueError", exception_message="x")
    after = record("exception", None, exception_type="ValueError", exception_message="x")
    state = run_status([escaped, after], spans)
    assert (state.status, state.failures, state.failed_span_id) == ("error", 1, "s")
    assert run_status([record("error", None, message="disk full")], []).failures == 1


def test_signals_and_open_spans() -> None:
    stopped = record("error", metadata={INTERRUPTED: "SIGTERM"})
    cut = span("s", None, "wf", 0, "error", attributes={INTERRUPTED: "SIGTERM"})
    state = run_status([stopped], [cut])
    assert (state.status, state.interrupted_by, state.failures) == ("interrupted", "SIGTERM", 0)
    start = span("w", None, "wf", 0, "unset", process=os.getpid())
    finished, still_open = split_open([start])
    assert (finished, still_open) == ([], [start])
    assert run_status([], [], still_open).status == "running"
    assert run_status([], [], still_open, alive=lambda host, pid: False).status == "interrupted"
    # Its end arrived: no longer open.
    assert split_open([start, span("w", None, "wf", 0)])[1] == []


def test_writer_alive() -> None:
    assert writer_alive(None, os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not writer_alive(None, child.pid)
    assert writer_alive("another-host.example", child.pid)  # cannot tell: counts as alive
