"""Spans (seed 004): ids, nesting by context across threads and asyncio, status and
exceptions, attributes and events, resource use, the decorator form, logs attached to the
span they were written in, and finished spans delivered to every handler."""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

import flowtrail
from flowtrail import (
    ConsoleHandler,
    FileHandler,
    MemoryHandler,
    SQLiteHandler,
    Trace,
    get_trace,
)
from flowtrail.records import Span

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture(autouse=True)
def close_pipelines():
    """Stop the workers after each test (relative store paths are process-wide)."""
    yield
    flowtrail.shutdown(10.0)


def memory_trace(run_id: str = "run-spans", **kwargs) -> tuple[Trace, MemoryHandler]:
    memory = MemoryHandler()
    return get_trace(run_id, handlers=[memory], **kwargs), memory


def by_name(spans: list[Span]) -> dict[str, Span]:
    found = {span.name: span for span in spans}
    assert len(found) == len(spans), "span names in these tests are unique"
    return found


# ---------------------------------------------------------------------- ids and nesting


def test_ids_have_w3c_sizes_and_nest() -> None:
    trace, memory = memory_trace()
    with trace.span("workflow", name="wf") as wf:
        with trace.span("job", name="extract", source="s3") as job:
            with trace.span("stage", name="read") as stage:
                assert trace.current_span() is stage
            assert trace.current_span() is job
        with trace.span("job", name="load"):
            pass
    assert trace.current_span() is None

    spans = by_name(memory.spans)
    assert set(spans) == {"wf", "extract", "read", "load"}
    for span in spans.values():
        assert TRACE_ID.match(span.trace_id), span.trace_id
        assert SPAN_ID.match(span.span_id), span.span_id
        assert span.trace_id == trace.trace_id
        assert span.run_id == "run-spans"
    assert len({span.span_id for span in spans.values()}) == 4
    assert spans["wf"].parent_span_id is None
    assert spans["extract"].parent_span_id == wf.span_id == spans["wf"].span_id
    assert spans["load"].parent_span_id == wf.span_id
    assert spans["read"].parent_span_id == job.span_id
    assert spans["extract"].kind == "job"
    assert spans["read"].kind == "stage"
    assert spans["extract"].attributes == {"source": "s3"}
    # Children end before their parents.
    assert [s.name for s in memory.spans] == ["read", "extract", "load", "wf"]


def test_times_and_duration() -> None:
    trace, memory = memory_trace()
    with trace.span("stage", name="sleepy"):
        time.sleep(0.05)
    (span,) = memory.spans
    assert span.duration_ms >= 50.0
    assert span.end_ns > span.start_ns
    assert span.duration_ms == pytest.approx((span.end_ns - span.start_ns) / 1e6, abs=1e-6)
    start = datetime.fromisoformat(span.start_time)
    end = datetime.fromisoformat(span.end_time)
    assert start.utcoffset() is not None
    assert end >= start


def test_span_names_the_job_and_stage_of_records_inside() -> None:
    trace, memory = memory_trace()
    trace.info("before")
    with trace.span("workflow", name="etl") as wf:
        trace.info("in workflow")
        with trace.span("job", name="extract") as job:
            trace.info("in job")
            with trace.span("stage", name="read") as stage:
                trace.warning("in stage")
        trace.info("back in workflow")
    trace.info("after")

    records = {r.message: r for r in memory.records}
    assert records["before"].span_id is None
    assert records["after"].span_id is None
    assert records["in workflow"].span_id == wf.span_id
    assert records["in workflow"].workflow_name == "etl"
    assert records["in job"].span_id == job.span_id
    assert records["in job"].parent_span_id == wf.span_id
    assert records["in job"].job_name == "extract"
    assert records["in stage"].span_id == stage.span_id
    assert records["in stage"].parent_span_id == job.span_id
    assert (records["in stage"].job_name, records["in stage"].stage_name) == ("extract", "read")
    assert records["back in workflow"].span_id == wf.span_id
    assert records["back in workflow"].job_name is None
    for record in records.values():
        assert record.trace_id == trace.trace_id


def test_logs_are_attached_to_their_span_and_keep_their_records() -> None:
    trace, memory = memory_trace()
    with trace.span("job", name="j"):
        trace.info("one")
        with trace.span("stage", name="s"):
            trace.error("two")
        trace.debug("three")
    spans = by_name(memory.spans)
    job_logs = [(e.level, e.attributes["message"]) for e in spans["j"].events if e.name == "log"]
    stage_logs = [(e.level, e.attributes["message"]) for e in spans["s"].events if e.name == "log"]
    assert job_logs == [("info", "one"), ("debug", "three")]
    assert stage_logs == [("error", "two")]
    # The records themselves are still written.
    assert memory.messages == ["one", "two", "three"]


def test_log_event_time_ns_lies_inside_its_span() -> None:
    trace, memory = memory_trace()
    with trace.span("stage", name="s"):
        trace.info("inside")
    (span,) = memory.spans
    (event,) = [e for e in span.events if e.name == "log"]
    assert span.start_ns <= event.time_ns <= span.end_ns, (
        "a log attached to a span carries its time in nanoseconds, inside the span "
        f"({span.start_ns} .. {span.end_ns}); got time_ns={event.time_ns}"
    )


def test_children_and_events_lie_within_their_parent_on_the_time_axis() -> None:
    """A waterfall needs it: a child span starts and ends inside its parent, and a log
    written last in a span is still inside it, however short the spans are."""
    trace, memory = memory_trace()
    for _ in range(200):
        with trace.span("job", name="outer"):
            with trace.span("stage", name="inner"):
                trace.info("last thing in inner")
            trace.info("last thing in outer")
    spans = {span.span_id: span for span in memory.spans}
    assert len(spans) == 400
    for span in spans.values():
        parent = spans.get(span.parent_span_id or "")
        if parent is not None:
            assert parent.start_ns <= span.start_ns <= span.end_ns <= parent.end_ns
        for event in span.events:
            assert span.start_ns <= event.time_ns <= span.end_ns, (span.name, event)


def test_add_event_and_attributes() -> None:
    trace, memory = memory_trace()
    with trace.span("stage", name="s", rows=10) as span:
        span.set_attribute("result", "ok")
        span.set_attributes(bytes=2048, format="csv")
        span.add_event("checkpoint", step=3)
    (done,) = memory.spans
    assert done.attributes == {"rows": 10, "result": "ok", "bytes": 2048, "format": "csv"}
    (event,) = done.events
    assert event.name == "checkpoint"
    assert event.attributes == {"step": 3}
    assert done.start_ns <= event.time_ns <= done.end_ns


def test_scope_attributes_are_not_shared_between_spans() -> None:
    trace, memory = memory_trace()
    scope = trace.span("stage", name="again", fixed=1)
    with scope as first:
        first.set_attribute("only", "first")
    with scope:
        pass
    one, two = memory.spans
    assert one.attributes == {"fixed": 1, "only": "first"}
    assert two.attributes == {"fixed": 1}
    assert one.span_id != two.span_id


# ---------------------------------------------------------------------- status and errors


def test_exception_marks_error_records_event_and_propagates() -> None:
    trace, memory = memory_trace()
    outer, inner = trace.span("job", name="outer"), trace.span("stage", name="inner")
    with pytest.raises(ValueError, match="boom"), outer, inner:
        raise ValueError("boom")
    spans = by_name(memory.spans)
    for name in ("inner", "outer"):
        span = spans[name]
        assert span.status == "error"
        assert span.status_message == "ValueError: boom"
        (event,) = [e for e in span.events if e.name == "exception"]
        assert event.attributes["exception.type"] == "ValueError"
        assert event.attributes["exception.message"] == "boom"
        assert "Traceback" in event.attributes["exception.stacktrace"]
        assert 'raise ValueError("boom")' in event.attributes["exception.stacktrace"]


def test_caught_exception_fails_only_the_inner_span() -> None:
    trace, memory = memory_trace()
    with trace.span("job", name="outer"):
        try:
            with trace.span("stage", name="inner"):
                raise KeyError("k")
        except KeyError:
            pass
    spans = by_name(memory.spans)
    assert spans["inner"].status == "error"
    assert spans["inner"].is_error
    assert spans["outer"].status == "ok"
    assert not [e for e in spans["outer"].events if e.name == "exception"]


def test_set_status_by_hand() -> None:
    trace, memory = memory_trace()
    with trace.span("stage", name="s") as span:
        span.set_status("error", "3 rows rejected")
        with pytest.raises(ValueError):
            span.set_status("broken")
    (done,) = memory.spans
    assert (done.status, done.status_message) == ("error", "3 rows rejected")


# ---------------------------------------------------------------------- resource use


def test_resource_use_over_the_span() -> None:
    trace, memory = memory_trace()
    with trace.span("stage", name="busy"):
        start = time.process_time()
        while time.process_time() - start < 0.03:
            pass
        block = b"x" * (64 * 1024 * 1024)  # written, so resident
        block_len = len(block)
    del block
    (span,) = memory.spans
    assert block_len == 64 * 1024 * 1024
    assert span.cpu_time_ms is not None and span.cpu_time_ms >= 30.0
    assert span.cpu_percent is not None and span.cpu_percent > 0
    assert span.memory_start_mb is not None and span.memory_end_mb is not None
    assert span.memory_end_mb - span.memory_start_mb >= 48.0
    assert span.process > 0 and span.thread == threading.get_ident()
    assert span.hostname


# ---------------------------------------------------------------------- decorator


def test_decorator_sync() -> None:
    trace, memory = memory_trace()

    @trace.span("stage", kind_of="decorated")
    def transform(x: int) -> int:
        """Double."""
        trace.info(f"transform {x}")
        return x * 2

    @trace.span("node", name="custom-name")
    def failing() -> None:
        raise RuntimeError("nope")

    assert transform.__name__ == "transform"
    assert transform.__doc__ == "Double."
    with trace.span("job", name="j") as job:
        assert transform(2) == 4
        assert transform(3) == 6
        with pytest.raises(RuntimeError, match="nope"):
            failing()

    first, second, bad, outer = memory.spans
    assert (first.name, first.kind, first.attributes) == (
        "transform",
        "stage",
        {"kind_of": "decorated"},
    )
    assert first.span_id != second.span_id
    assert first.parent_span_id == second.parent_span_id == job.span_id
    assert (bad.name, bad.kind, bad.status) == ("custom-name", "node", "error")
    assert outer.status == "ok"
    assert [r.span_id for r in memory.records] == [first.span_id, second.span_id, bad.span_id]
    assert memory.records[-1].message == "node custom-name failed: RuntimeError: nope"


def test_decorator_async() -> None:
    trace, memory = memory_trace()

    @trace.span("stage")
    async def fetch(i: int) -> int:
        await asyncio.sleep(0.01)
        await trace.ainfo(f"fetched {i}")
        return i

    @trace.span("stage")
    async def broken() -> None:
        await asyncio.sleep(0)
        raise OSError("disk")

    async def main() -> tuple[str, list[int]]:
        with trace.span("job", name="j") as job:
            results = await asyncio.gather(fetch(1), fetch(2))
            with pytest.raises(OSError):
                await broken()
        return job.span_id, results

    job_id, results = asyncio.run(main())
    assert results == [1, 2]
    stages = [s for s in memory.spans if s.kind == "stage"]
    assert sorted(s.name for s in stages) == ["broken", "fetch", "fetch"]
    assert all(s.parent_span_id == job_id for s in stages)
    fetched = [s for s in stages if s.name == "fetch"]
    assert all(s.duration_ms >= 10.0 for s in fetched)
    by_message = {r.message: r.span_id for r in memory.records}
    assert {by_message["fetched 1"], by_message["fetched 2"]} == {s.span_id for s in fetched}
    (failed,) = [s for s in stages if s.name == "broken"]
    assert failed.status == "error" and failed.status_message == "OSError: disk"


# ---------------------------------------------------------------------- concurrency


def test_nesting_across_asyncio_gather() -> None:
    trace, memory = memory_trace()

    async def stage(i: int) -> tuple[str, str]:
        async with trace.span("stage", name=f"s{i}") as span:
            await asyncio.sleep(0.005 * (3 - i))
            await trace.ainfo(f"in s{i}")
            with trace.span("node", name=f"n{i}") as node:
                await asyncio.sleep(0)
                trace.info(f"in n{i}")
            return span.span_id, node.span_id

    async def main() -> tuple[str, list[tuple[str, str]]]:
        async with trace.span("job", name="j") as job:
            pairs = await asyncio.gather(*(stage(i) for i in range(3)))
        return job.span_id, pairs

    job_id, pairs = asyncio.run(main())
    spans = by_name(memory.spans)
    records = {r.message: r for r in memory.records}
    for i, (stage_id, node_id) in enumerate(pairs):
        assert spans[f"s{i}"].span_id == stage_id
        assert spans[f"s{i}"].parent_span_id == job_id
        assert spans[f"n{i}"].span_id == node_id
        assert spans[f"n{i}"].parent_span_id == stage_id
        assert records[f"in s{i}"].span_id == stage_id
        assert records[f"in n{i}"].span_id == node_id
        assert records[f"in n{i}"].parent_span_id == stage_id
    assert spans["j"].parent_span_id is None


def test_nesting_in_threads_started_with_a_copied_context() -> None:
    trace, memory = memory_trace()
    seen: dict[int, tuple[str, int]] = {}
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()  # all four spans are open at once
        with trace.span("stage", name=f"t{i}") as span:
            trace.info(f"thread {i}")
            barrier.wait()
            seen[i] = (span.span_id, threading.get_ident())

    with trace.span("job", name="j") as job:
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(work, i))
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert trace.current_span() is job

    spans = by_name(memory.spans)
    records = {r.message: r for r in memory.records}
    for i in range(4):
        span_id, thread_id = seen[i]
        assert spans[f"t{i}"].span_id == span_id
        assert spans[f"t{i}"].parent_span_id == job.span_id
        assert spans[f"t{i}"].thread == thread_id
        assert records[f"thread {i}"].span_id == span_id
        assert records[f"thread {i}"].thread == thread_id
    assert spans["j"].end_ns >= max(spans[f"t{i}"].end_ns for i in range(4))


def test_thread_without_copied_context_starts_a_root_in_the_same_trace() -> None:
    trace, memory = memory_trace()

    def work() -> None:
        with trace.span("stage", name="detached"):
            pass

    with trace.span("job", name="j"):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    spans = by_name(memory.spans)
    assert spans["detached"].parent_span_id is None
    assert spans["detached"].trace_id == spans["j"].trace_id


def test_one_scope_entered_by_concurrent_tasks_ends_each_tasks_own_span() -> None:
    """``scope = trace.span(...)`` reused with ``async with`` in gathered tasks: the span
    a task ends is the one it opened, whatever order the tasks finish in."""
    trace, memory = memory_trace()
    scope = trace.span("stage", name="shared")

    async def work(delay: float) -> tuple[str, float]:
        async with scope as span:
            await asyncio.sleep(delay)
            return span.span_id, delay

    async def main() -> list[tuple[str, float]]:
        # The first task to enter is the first to leave.
        return await asyncio.gather(work(0.01), work(0.08))

    opened = dict(asyncio.run(main()))
    ended = {span.span_id: span for span in memory.spans}
    assert set(ended) == set(opened)
    short = next(i for i, d in opened.items() if d == 0.01)
    long = next(i for i, d in opened.items() if d == 0.08)
    assert ended[long].duration_ms >= 80.0
    assert ended[long].end_ns >= ended[short].end_ns


def test_one_scope_entered_by_concurrent_threads() -> None:
    trace, memory = memory_trace()
    scope = trace.span("stage", name="shared")
    first_in = threading.Event()
    second_in = threading.Event()
    opened: dict[str, str] = {}

    def early() -> None:  # enters first, leaves first
        with scope as span:
            opened["early"] = span.span_id
            first_in.set()
            second_in.wait(5)

    def late() -> None:
        first_in.wait(5)
        with scope as span:
            opened["late"] = span.span_id
            second_in.set()
            time.sleep(0.05)

    threads = [threading.Thread(target=early), threading.Thread(target=late)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended = {span.span_id: span for span in memory.spans}
    assert set(ended) == set(opened.values())
    assert ended[opened["late"]].duration_ms >= 50.0
    assert ended[opened["late"]].end_ns >= ended[opened["early"]].end_ns


def test_spans_of_several_traces_of_one_run_nest() -> None:
    """A trace per stage (as a workflow engine makes them) nests under the job span that
    is open in the context."""
    memory = MemoryHandler()
    workflow = get_trace("run-many", handlers=[memory], extras={"workflow_name": "wf"})
    with workflow.span("job", name="j") as job:
        stage_trace = get_trace("run-many", handlers=[memory], extras={"job_name": "j"})
        with stage_trace.span("stage", name="s"):
            stage_trace.info("in stage")
    spans = by_name(memory.spans)
    assert spans["s"].parent_span_id == job.span_id
    assert spans["s"].trace_id == spans["j"].trace_id
    (record,) = memory.records
    assert record.span_id == spans["s"].span_id
    assert record.stage_name == "s"


# ---------------------------------------------------------------------- every handler


def test_finished_spans_reach_every_handler(tmp_path: Path, capsys) -> None:
    memory = MemoryHandler()
    files = FileHandler(path=str(tmp_path / "traces"))
    db = SQLiteHandler(path=str(tmp_path / "store.db"))
    trace = get_trace("run-all", handlers=[ConsoleHandler(), files, db, memory])
    with trace.span("job", name="extract", rows=3):
        trace.info("reading")
        try:
            with trace.span("stage", name="parse"):
                raise ValueError("bad row")
        except ValueError:
            pass
    assert trace.flush(10)

    out, err = capsys.readouterr()
    assert "→ job extract" in out
    assert "→ stage parse" in out
    assert re.search(r"← job extract \(\d+\.\dms\) ✓", out)
    assert re.search(r"← stage parse \(\d+\.\dms\) ✗ ValueError: bad row", err)

    expected = {(s.span_id, s.name, s.status) for s in memory.spans}
    assert len(expected) == 2
    lines = (tmp_path / "traces" / "run_id=run-all" / "spans.txt").read_text().splitlines()
    assert len(lines) == 2
    for store in (files, db):
        data = store.find_trace_with_id("run-all")
        assert {(s.span_id, s.name, s.status) for s in data.spans} == expected
        assert {(s.span_id, s.name, s.status) for s in store.spans(run_id="run-all")} == expected
        record, escaped = data.meta
        assert record.span_id == next(s.span_id for s in memory.spans if s.name == "extract")
        assert escaped.span_id == next(s.span_id for s in memory.spans if s.name == "parse")
        assert (escaped.level, escaped.exception_type) == ("exception", "ValueError")
        read_back = next(s for s in data.spans if s.name == "extract")
        original = next(s for s in memory.spans if s.name == "extract")
        assert read_back == original
        (summary,) = store.runs()
        # The stage failed and was not retried: the run failed.
        assert (summary.spans, summary.span_errors, summary.status) == (2, 1, "error")


def test_bare_decorator_makes_a_stage_span_named_after_the_function() -> None:
    memory = MemoryHandler()
    trace = get_trace("bare-decorator", handlers=[memory])

    @trace.span
    def load_rows() -> int:
        trace.info("loading")
        return 3

    assert load_rows() == 3
    (span,) = memory.spans
    assert (span.kind, span.name, span.status) == ("stage", "load_rows", "ok")
    assert memory.records[0].span_id == span.span_id
