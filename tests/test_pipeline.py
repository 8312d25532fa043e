"""The batch worker: one pipeline per handler configuration, flush and close deadlines,
failures, overflow, fork, and `capture_traces`."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import flowtrail
from conftest import run_python
from flowtrail import FileHandler, MemoryHandler, Metadata, capture_traces, get_trace
from flowtrail.pipeline import Pipeline, PipelineOptions


@pytest.fixture(autouse=True)
def close_pipelines():
    """Stop the workers after each test (relative store paths are process-wide)."""
    yield
    flowtrail.shutdown(10.0)


class FakeExporter:
    """An exporter that records batches; it can be slow, blocked, or failing."""

    def __init__(
        self, *, block: bool = False, delay: float = 0.0, fail: BaseException | None = None
    ) -> None:
        self.batches: list[list[Any]] = []
        self.delay = delay
        self.fail = fail
        self.entered = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.syncs = 0
        self.closed = False
        self.forked = False
        self.calls = 0

    def export(self, batch: Sequence[Any]) -> None:
        self.calls += 1
        self.entered.set()
        self.release.wait()
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.batches.append(list(batch))

    def retryable(self, exc: BaseException) -> bool:
        return False

    def sync(self) -> None:
        self.syncs += 1

    def close_exporter(self) -> None:
        self.closed = True

    def after_fork(self) -> None:
        self.forked = True

    @property
    def messages(self) -> list[str]:
        return [record.message for batch in self.batches for record in batch]


def records(count: int, start: int = 0) -> list[Metadata]:
    return [Metadata(run_id="pipe", message=f"m{i}") for i in range(start, start + count)]


@pytest.fixture
def make_pipeline(tmp_path: Path) -> Iterator[Any]:
    """Build pipelines with fake exporters; unblock and stop them after the test."""
    made: list[tuple[Pipeline, FakeExporter]] = []

    def make(exporter: FakeExporter, strict: bool = False, **options: Any) -> Pipeline:
        options.setdefault("spool_dir", str(tmp_path / "spool" / str(len(made))))
        options.setdefault("flush_interval", 0.05)
        pipeline = Pipeline(f"fake{len(made)}", exporter, PipelineOptions(**options), strict=strict)
        made.append((pipeline, exporter))
        return pipeline

    yield make
    for pipeline, exporter in made:
        exporter.release.set()
        pipeline.close(10.0)


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# ---------------------------------------------------------------------- one pipeline per config


def test_get_trace_per_stage_starts_at_most_one_worker(tmp_path: Path) -> None:
    spec = {"type": "file", "path": str(tmp_path / "store")}
    get_trace("warm-up", handlers=[MemoryHandler()])  # the process-wide signal watcher, once
    before = threading.active_count()
    traces = [get_trace(f"stage-{i}", parent_run_id="job-1", handlers=[spec]) for i in range(100)]
    assert threading.active_count() <= before  # creating traces starts nothing
    for trace in traces:
        trace.info(f"from {trace.run_id}")
    assert threading.active_count() <= before + 1
    assert len({id(p) for trace in traces for p in trace.pipelines()}) == 1
    assert traces[0].flush(10.0)
    reader = FileHandler(path=str(tmp_path / "store"))
    assert [r.message for r in reader.find_trace_with_id("stage-42").meta] == ["from stage-42"]


def test_one_pipeline_per_distinct_handler_config(tmp_path: Path) -> None:
    a = get_trace("a", handlers=[{"type": "file", "path": str(tmp_path / "one")}])
    b = get_trace("b", handlers=[FileHandler(path=str(tmp_path / "one"))])
    c = get_trace("c", handlers=[{"type": "file", "path": str(tmp_path / "two")}])
    d = get_trace("d", handlers=[{"type": "file", "path": str(tmp_path / "one"), "fsync": False}])
    assert a.pipelines()[0] is b.pipelines()[0]
    assert a.pipelines()[0] is not c.pipelines()[0]
    assert a.pipelines()[0] is not d.pipelines()[0]
    assert len({id(t.pipelines()[0]) for t in (a, b, c, d)}) == 3


def test_relative_store_path_is_relative_to_the_directory_of_get_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two traces configured with the same relative path from two working directories
    write to two stores: each under the directory it was configured in."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    one = get_trace("same-run", handlers=[{"type": "file", "path": "./logs/traces"}])
    one.info("written from first")
    assert one.flush(10.0)
    monkeypatch.chdir(second)
    two = get_trace("same-run", handlers=[{"type": "file", "path": "./logs/traces"}])
    two.info("written from second")
    assert two.flush(10.0)
    first_data = FileHandler(path=str(first / "logs" / "traces")).find_trace_with_id("same-run")
    second_data = FileHandler(path=str(second / "logs" / "traces")).find_trace_with_id("same-run")
    assert [r.message for r in first_data.meta] == ["written from first"]
    assert [r.message for r in second_data.meta] == ["written from second"]


# ---------------------------------------------------------------------- flush and close


def test_flush_returns_when_earlier_records_are_written(make_pipeline: Any) -> None:
    exporter = FakeExporter(delay=0.02)
    pipeline = make_pipeline(exporter, batch_size=10, flush_interval=30.0)
    for record in records(55):
        pipeline.submit(record)
    assert pipeline.flush(10.0) is True
    assert exporter.messages == [f"m{i}" for i in range(55)]
    assert exporter.syncs >= 1
    assert pipeline.stats.exported == 55
    assert pipeline.pending() == 0


def test_flush_waits_for_a_batch_already_being_exported(make_pipeline: Any) -> None:
    exporter = FakeExporter(block=True)
    pipeline = make_pipeline(exporter)
    pipeline.submit(records(1)[0])
    assert exporter.entered.wait(10.0)
    result: list[bool] = []
    flusher = threading.Thread(target=lambda: result.append(pipeline.flush(10.0)))
    flusher.start()
    flusher.join(0.2)
    assert result == []  # still waiting: the batch is not written yet
    exporter.release.set()
    flusher.join(10.0)
    assert result == [True]
    assert exporter.messages == ["m0"]


def test_flush_with_nothing_submitted() -> None:
    exporter = FakeExporter()
    pipeline = Pipeline("idle", exporter, PipelineOptions(spool_dir="spool"))
    assert pipeline.flush(1.0) is True
    assert exporter.calls == 0


def test_flush_times_out_while_the_exporter_is_stuck(make_pipeline: Any) -> None:
    exporter = FakeExporter(block=True)
    pipeline = make_pipeline(exporter)
    pipeline.submit(records(1)[0])
    assert exporter.entered.wait(10.0)
    pipeline.submit(records(1, start=1)[0])
    assert pipeline.flush(timeout=0.5) is False
    assert not exporter.release.is_set()  # it was still stuck: False is the truth
    exporter.release.set()
    assert pipeline.flush(10.0) is True
    assert exporter.messages == ["m0", "m1"]


def test_close_with_a_deadline_does_not_hang_on_a_stuck_exporter(make_pipeline: Any) -> None:
    exporter = FakeExporter(block=True)
    pipeline = make_pipeline(exporter)
    pipeline.submit(records(1)[0])
    assert exporter.entered.wait(10.0)
    pipeline.submit(records(1, start=1)[0])
    deadline = 1.0
    started = time.monotonic()
    assert pipeline.close(timeout=deadline) is False
    elapsed = time.monotonic() - started
    assert not exporter.release.is_set()
    # the whole close is bounded by its deadline (with slack for a busy machine), not
    # by the deadline once for the flush and once more for joining the worker
    assert elapsed < deadline + 0.5, f"close({deadline}) took {elapsed:.2f} s"


def test_worker_restarts_after_a_close_that_timed_out(make_pipeline: Any) -> None:
    """A close that gave up on a stuck exporter must not leave the pipeline without a
    worker: records handed in later are written without anyone calling flush."""
    exporter = FakeExporter(block=True)
    pipeline = make_pipeline(exporter)
    pipeline.submit(records(1)[0])
    assert exporter.entered.wait(10.0)
    assert pipeline.close(timeout=0.2) is False
    exporter.release.set()
    old_worker = pipeline._worker
    if old_worker is not None:
        old_worker.join(10.0)  # it finishes the stuck batch and stops
    pipeline.submit(records(1, start=1)[0])
    assert wait_for(lambda: exporter.messages == ["m0", "m1"], timeout=3.0), exporter.messages


def test_close_flushes_and_closes_the_exporter(make_pipeline: Any) -> None:
    exporter = FakeExporter()
    pipeline = make_pipeline(exporter)
    for record in records(5):
        pipeline.submit(record)
    assert pipeline.close(10.0) is True
    assert exporter.messages == [f"m{i}" for i in range(5)]
    assert exporter.closed is True
    # the pipeline starts again on the next submit
    pipeline.submit(records(1, start=5)[0])
    assert pipeline.flush(10.0) is True
    assert exporter.messages[-1] == "m5"


def test_flush_all_has_one_deadline_for_every_pipeline(make_pipeline: Any) -> None:
    stuck = [FakeExporter(block=True) for _ in range(3)]
    for exporter in stuck:
        pipeline = make_pipeline(exporter)
        pipeline.submit(records(1)[0])
        assert exporter.entered.wait(10.0)
        pipeline.submit(records(1, start=1)[0])
    started = time.monotonic()
    assert flowtrail.flush_all(timeout=0.5) is False
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 0.5, f"{elapsed:.2f} s: the deadline was applied per pipeline"
    for exporter in stuck:
        exporter.release.set()


# ---------------------------------------------------------------------- failures


def test_failing_exporter_never_raises_is_reported_once_and_spooled(
    make_pipeline: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = FakeExporter(fail=OSError("disk is gone"))
    pipeline = make_pipeline(exporter)
    for record in records(3):
        pipeline.submit(record)  # never raises
    assert pipeline.flush(10.0) is True  # spooled counts as done
    for record in records(2, start=3):
        pipeline.submit(record)
    assert pipeline.flush(10.0) is True
    err = capsys.readouterr().err
    assert err.count("flowtrail: handler") == 1, err
    assert "could not write 3 record(s)" in err
    assert "OSError: disk is gone" in err
    assert "spool" in err
    assert pipeline.stats.spooled == 5
    assert pipeline.stats.failed_batches == 2
    assert pipeline.stats.errors == {"OSError": 2}
    assert pipeline.stats.exported == 0
    assert pipeline.spool.count() == 5


def test_spooled_batches_are_replayed_when_the_exporter_recovers(
    make_pipeline: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = FakeExporter(fail=OSError("down"))
    pipeline = make_pipeline(exporter, replay_interval=0.05)
    for record in records(4):
        pipeline.submit(record)
    assert pipeline.flush(10.0)
    assert pipeline.stats.spooled == 4
    exporter.fail = None
    assert wait_for(lambda: pipeline.stats.replayed == 4)
    assert sorted(exporter.messages) == sorted(f"m{i}" for i in range(4))
    assert pipeline.spool.count() == 0


def test_retryable_failure_is_retried_on_the_worker(make_pipeline: Any) -> None:
    class Flaky(FakeExporter):
        def export(self, batch: Sequence[Any]) -> None:
            self.calls += 1
            if self.calls < 3:
                raise ConnectionError("try again")
            self.batches.append(list(batch))

        def retryable(self, exc: BaseException) -> bool:
            return True

    exporter = Flaky()
    pipeline = make_pipeline(exporter, retry_backoff=0.01, max_retries=5)
    caller = threading.get_ident()
    for record in records(2):
        pipeline.submit(record)  # the caller never sleeps in a retry
    assert threading.get_ident() == caller
    assert pipeline.flush(10.0)
    assert exporter.messages == ["m0", "m1"]  # sent once after the failures, not twice
    assert pipeline.stats.retries == 2
    assert pipeline.stats.exported == 2
    assert pipeline.stats.spooled == 0


def test_failing_handler_through_a_trace_never_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    spec = {
        "type": "file",
        "path": str(not_a_dir / "store"),
        "max_retries": 0,
        "spool_dir": str(tmp_path / "spool"),
    }
    trace = get_trace("failing", handlers=[spec])
    trace.info("one")
    trace.error("two")
    assert trace.flush(10.0) is True
    (pipeline,) = trace.pipelines()
    assert pipeline.stats.spooled == 2
    err = capsys.readouterr().err
    assert err.count("could not write") == 1
    assert "'file'" in err


def test_strict_raises_into_the_caller(tmp_path: Path, make_pipeline: Any) -> None:
    exporter = FakeExporter(fail=OSError("strict failure"))
    pipeline = make_pipeline(exporter, strict=True)
    with pytest.raises(OSError, match="strict failure"):
        pipeline.submit(records(1)[0])

    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    trace = get_trace("strict", handlers=[{"type": "file", "path": str(not_a_dir)}], strict=True)
    with pytest.raises(OSError):
        trace.info("raises")


def test_strict_writes_at_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    trace = get_trace("strict-ok", handlers=[{"type": "file", "path": str(store)}], strict=True)
    trace.info("written now")
    assert (store / "run_id=strict-ok" / "metadata.txt").read_text().count("written now") == 1


# ---------------------------------------------------------------------- overflow


def fill_while_blocked(pipeline: Pipeline, exporter: FakeExporter, total: int) -> None:
    pipeline.submit(records(1)[0])
    assert exporter.entered.wait(10.0)  # the worker holds m0 and is stuck
    for record in records(total - 1, start=1):
        pipeline.submit(record)


def test_overflow_spills_to_the_spool_without_loss(make_pipeline: Any) -> None:
    exporter = FakeExporter(block=True)
    pipeline = make_pipeline(exporter, queue_size=10, replay_interval=0.05)
    fill_while_blocked(pipeline, exporter, total=31)
    assert pipeline.stats.spooled == 20
    assert pipeline.stats.dropped == 0
    exporter.release.set()
    assert pipeline.flush(10.0)
    assert wait_for(lambda: pipeline.stats.replayed == 20)
    assert pipeline.stats.spooled + pipeline.stats.exported == 31
    assert sorted(exporter.messages) == sorted(f"m{i}" for i in range(31))
    assert len(exporter.messages) == 31  # each once


def test_overflow_drop_counts_what_it_drops(
    make_pipeline: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = FakeExporter(block=True)
    pipeline = make_pipeline(exporter, queue_size=10, overflow="drop")
    fill_while_blocked(pipeline, exporter, total=31)
    assert pipeline.stats.dropped == 20
    assert pipeline.stats.spooled == 0
    exporter.release.set()
    assert pipeline.flush(10.0)
    assert pipeline.stats.exported == 11
    assert pipeline.stats.exported + pipeline.stats.dropped == 31
    err = capsys.readouterr().err
    assert err.count("flowtrail: handler") == 1
    assert "dropped" in err


def test_overflow_block_makes_the_caller_wait(make_pipeline: Any) -> None:
    exporter = FakeExporter(block=True)
    pipeline = make_pipeline(exporter, queue_size=5, overflow="block")
    pipeline.submit(records(1)[0])
    assert exporter.entered.wait(10.0)
    for record in records(5, start=1):
        pipeline.submit(record)
    done = threading.Event()

    def submit_one_more() -> None:
        pipeline.submit(records(1, start=6)[0])
        done.set()

    thread = threading.Thread(target=submit_one_more, daemon=True)
    thread.start()
    assert not done.wait(0.2)  # waiting for room
    exporter.release.set()
    assert done.wait(10.0)
    assert pipeline.flush(10.0)
    assert exporter.messages == [f"m{i}" for i in range(7)]


# ---------------------------------------------------------------------- fork


def test_forked_child_has_a_fresh_queue_and_worker(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """\
        import json, os, sqlite3
        from flowtrail import FileHandler, get_trace

        handlers = [
            {"type": "file", "path": "files", "flush_interval": 60},
            {"type": "sqlite", "path": "db/traces.db", "flush_interval": 60},
        ]
        trace = get_trace("fork-run", handlers=handlers)
        trace.info("parent flushed")
        assert trace.flush(10)
        trace.info("parent pending at fork")  # queued; the worker sleeps for 60 s
        pid = os.fork()
        if pid == 0:
            try:
                trace.info("child record")
                ok = trace.flush(10)
            finally:
                os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        trace.info("parent after fork")
        assert trace.flush(10)
        meta = FileHandler(path="files").find_trace_with_id("fork-run").meta
        conn = sqlite3.connect("db/traces.db")
        rows = conn.execute("SELECT message, process FROM traces ORDER BY id").fetchall()
        print(json.dumps({
            "status": status, "child": pid, "parent": os.getpid(),
            "file": [[m.message, m.process] for m in meta], "sqlite": rows,
        }))
        """
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.splitlines()[-1])
    assert data["status"] == 0
    parent, child = data["parent"], data["child"]
    expected = {
        ("parent flushed", parent),
        ("parent pending at fork", parent),
        ("child record", child),
        ("parent after fork", parent),
    }
    for store in ("file", "sqlite"):
        written = [tuple(item) for item in data[store]]
        assert sorted(written) == sorted(expected), store  # each exactly once


def test_after_fork_gives_fresh_runtime_in_process(make_pipeline: Any) -> None:
    exporter = FakeExporter(block=True)
    pipeline = make_pipeline(exporter)
    pipeline.submit(records(1)[0])
    assert exporter.entered.wait(10.0)
    pipeline.submit(records(1, start=1)[0])
    old_lock = pipeline._export_lock
    assert not old_lock.acquire(blocking=False)  # held by the stuck worker, as at a fork
    pipeline._after_fork_in_child()
    assert pipeline.pending() == 0
    assert pipeline._worker is None
    assert pipeline._export_lock is not old_lock
    assert pipeline._export_lock.acquire(blocking=False)
    pipeline._export_lock.release()
    assert exporter.forked is True


# ---------------------------------------------------------------------- capture_traces


def test_capture_traces_collects_records_of_any_trace(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    before = get_trace("before", handlers=[MemoryHandler()])
    before.info("not captured")
    with capture_traces() as captured:
        get_trace("first", handlers=[{"type": "file", "path": store}]).info("one")
        get_trace("second", handlers=[MemoryHandler()]).warning("two")
        with get_trace("third", handlers=[{"type": "file", "path": store}]) as trace:
            trace.error("three")
        thread = threading.Thread(target=lambda: get_trace("fourth", handlers=[]).info("four"))
        thread.start()
        thread.join()
    get_trace("after", handlers=[MemoryHandler()]).info("not captured either")
    assert isinstance(captured, MemoryHandler)
    assert captured.messages == ["one", "two", "three", "four"]
    assert [r.run_id for r in captured.records] == ["first", "second", "third", "fourth"]
    assert [t.run_id for t in captured.find_traces()] == ["first", "second", "third", "fourth"]
    # records still go to their own handlers
    reader = FileHandler(path=store)
    assert [r.message for r in reader.find_trace_with_id("first").meta] == ["one"]


def test_capture_traces_nested_blocks() -> None:
    with capture_traces() as outer:
        get_trace("a", handlers=[]).info("outer only")
        with capture_traces() as inner:
            get_trace("b", handlers=[]).info("both")
    assert outer.messages == ["outer only", "both"]
    assert inner.messages == ["both"]


def test_capture_traces_sees_the_stdlib_bridge() -> None:
    import logging

    logger = logging.getLogger("test_pipeline.capture")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    bridge = flowtrail.FlowtrailLogHandler()
    logger.addHandler(bridge)
    try:
        with capture_traces() as captured, get_trace("bridged", handlers=[]):
            logger.info("from logging")
    finally:
        logger.removeHandler(bridge)
    assert captured.messages == ["from logging"]


def test_interpreter_exit_flushes_pending_records(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """\
        from flowtrail import get_trace
        trace = get_trace("exit-run", handlers=[{"type": "file", "path": "files",
                                                 "flush_interval": 60}])
        for i in range(100):
            trace.info(f"record {i}")
        """
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "files" / "run_id=exit-run" / "metadata.txt").read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == [f"record {i}" for i in range(100)]


def test_a_partial_write_on_the_callers_thread_is_not_written_twice(tmp_path: Path) -> None:
    """A burst makes the caller write full batches itself; when part of such a batch is
    refused (a run id the file store cannot take), the runs already written are not
    handed to the worker again."""
    from flowtrail import FileHandler, Metadata
    from flowtrail.pipeline import get_pipeline

    base = tmp_path / "traces"
    handler = FileHandler(path=str(base), batch_size=4, max_retries=0).bound(
        flowtrail.config.resolve_settings()
    )
    pipeline = handler.pipeline()
    assert pipeline is get_pipeline(handler.pipeline_key(), lambda: None)  # type: ignore[arg-type]
    good = [Metadata(run_id="good", message=f"m{i}") for i in range(3)]
    bad = Metadata(run_id="x" * 249, message="refused")  # too long for a folder name
    for record in [*good, bad]:
        pipeline.submit(record)
    assert pipeline.flush(10.0)
    lines = (base / "run_id=good" / "metadata.txt").read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["m0", "m1", "m2"]
