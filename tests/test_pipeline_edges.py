"""The caller's side of the pipeline at its edges: signals and interrupts during a write,
signal handlers that log, threads logging while a with-block exits, stores that hang or
are locked past the exit deadline, a full queue during an outage, and the byte budget."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import flowtrail
from conftest import run_python
from flowtrail import FileHandler, Metadata, SQLiteHandler, get_trace
from flowtrail.pipeline import Pipeline, PipelineOptions
from flowtrail.spool import Spool


@pytest.fixture(autouse=True)
def close_pipelines() -> Iterator[None]:
    yield
    flowtrail.shutdown(10.0)


class StageTimeout(TimeoutError):
    """What a stage's SIGALRM handler raises."""


def _stored_messages(handler: Any, run_id: str) -> list[str]:
    return [record.message for record in handler.find_trace_with_id(run_id).meta]


# --------------------------------------------------------------------------- point 4
@pytest.mark.parametrize("store", ["file", "sqlite"])
@pytest.mark.parametrize("raised", [StageTimeout, KeyboardInterrupt])
def test_an_exception_from_a_signal_handler_during_a_write_loses_nothing_and_reaches_the_caller(
    tmp_path: Path, store: str, raised: type[BaseException]
) -> None:
    handler: Any = (
        FileHandler(path=str(tmp_path / "files"), batch_size=50)
        if store == "file"
        else SQLiteHandler(path=str(tmp_path / "t.db"), batch_size=50)
    )
    trace = get_trace("sig-run", handlers=[handler])
    fired: Counter[str] = Counter()
    flowtrail_dir = os.path.dirname(flowtrail.__file__)

    def on_alarm(signum: int, frame: Any) -> None:
        # Raise only when the signal lands inside flowtrail (the interesting case, and
        # then the caller's try below is sure to be the one that sees it).
        if frame is not None and frame.f_code.co_filename.startswith(flowtrail_dir):
            fired[os.path.basename(frame.f_code.co_filename)] += 1
            raise raised("stage timed out")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    returned: list[int] = []
    caught = 0
    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
    try:
        for i in range(20_000):
            try:
                trace.info(f"m{i}")
                returned.append(i)
            except raised as exc:
                # A second signal may land while the first exception is handled: both
                # reach the caller, the first as the context of the second.
                while isinstance(exc, raised):
                    caught += 1
                    exc = exc.__context__  # type: ignore[assignment]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert trace.flush(30.0)
    stored = _stored_messages(handler, "sig-run")
    counts = Counter(stored)
    assert sum(fired.values()) == caught, (
        f"an exception of a signal handler was swallowed {fired} {caught}"
    )
    assert caught > 0
    assert [m for m, n in counts.items() if n > 1] == [], "a record was written twice"
    missing = [i for i in returned if f"m{i}" not in counts]
    assert missing == [], f"{len(missing)} records whose info() returned were lost: {missing[:5]}"


def test_a_store_failure_on_the_callers_thread_is_not_raised(tmp_path: Path) -> None:
    """The other side of the rule: the store's own failure stays inside flowtrail, even
    while a Python signal handler is installed."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("x")
        trace = get_trace("r", handlers=[FileHandler(path=str(blocker / "sub"), batch_size=10)])
        for i in range(100):
            trace.info(f"m{i}")
        assert trace.flush(30.0)
        stats = trace.pipelines()[0].stats
        assert stats.exported == 0 and stats.spooled == 100
    finally:
        signal.signal(signal.SIGUSR1, previous)


# --------------------------------------------------------------------------- point 5
def test_a_signal_handler_that_logs_while_the_caller_spills_never_deadlocks(
    tmp_path: Path,
) -> None:
    code = textwrap.dedent(
        f"""
        import signal, threading
        from flowtrail.pipeline import Pipeline, PipelineOptions
        from flowtrail import Metadata

        class Stuck:
            def __init__(self):
                self.release = threading.Event()
            def export(self, batch):
                self.release.wait()
            def retryable(self, exc): return True
            def sync(self): pass
            def close_exporter(self): pass
            def after_fork(self): pass

        pipeline = Pipeline("stuck", Stuck(), PipelineOptions(
            batch_size=5, queue_size=10, overflow="spill", spool_dir={str(tmp_path / "spool")!r}))
        fired = [0]
        def on_alarm(signum, frame):
            fired[0] += 1
            pipeline.submit(Metadata(run_id="r", message="from the handler"))
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        for i in range(30_000):
            pipeline.submit(Metadata(run_id="r", message=f"m{{i}}"))
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        pipeline.spool.seal()
        print(fired[0], pipeline.spool.count(), pipeline.stats.dropped, pipeline.pending())
        import os
        os._exit(0)
        """
    )
    result = run_python(code, tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    fired, spooled, dropped, queued = map(int, result.stdout.split())
    assert fired > 0
    assert dropped == 0
    # 5 taken by the stuck worker, the rest in the queue (10, and one more for each
    # handler that landed between a full-queue check and its append) or in the spool.
    assert 10 <= queued <= 12
    assert spooled + queued + 5 == 30_000 + fired


# --------------------------------------------------------------------------- point 6
def test_records_of_other_threads_are_kept_while_a_with_block_exits(tmp_path: Path) -> None:
    store = FileHandler(path=str(tmp_path / "files"))
    trace = get_trace("with-exit", handlers=[store])
    per_thread, threads = 25_000, 4
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def work(n: int) -> None:
            for i in range(per_thread):
                trace.info(f"t{n}-{i}")

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        blocks = 0
        while any(worker.is_alive() for worker in workers) or blocks < 3:
            with trace:
                trace.info(f"main-{blocks}")
            blocks += 1
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert trace.flush(30.0)
    stored = [m for m in _stored_messages(store, "with-exit") if m.startswith("t")]
    assert len(stored) == len(set(stored)) == per_thread * threads


# --------------------------------------------------------------------------- point 7
def _lock_database(path: Path) -> sqlite3.Connection:
    SQLiteHandler(path=str(path))._connect().close()  # the schema exists
    holder = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_exit_timeout_is_kept_while_another_process_locks_the_database(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    holder = _lock_database(db)
    try:
        code = textwrap.dedent(
            f"""
            from flowtrail import SQLiteHandler, get_trace
            trace = get_trace("locked", handlers=[SQLiteHandler(path={str(db)!r}, batch_size=500)],
                              exit_timeout=2, log_dir={str(tmp_path / "logs")!r})
            for i in range(3_000):
                trace.info(f"m{{i}}")
            """
        )
        started = time.monotonic()
        result = run_python(code, tmp_path, timeout=120)
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert result.returncode == 0, result.stderr
    assert elapsed < 8, f"exit took {elapsed:.1f} s with exit_timeout=2"
    spool_dirs = list((tmp_path / "logs" / "spool").iterdir())
    assert sum(Spool(d).count() for d in spool_dirs) == 3_000
    # The next process replays them: every record exactly once.
    replay = textwrap.dedent(
        f"""
        from flowtrail import SQLiteHandler, get_trace
        trace = get_trace("other", handlers=[SQLiteHandler(path={str(db)!r}, batch_size=500)],
                          log_dir={str(tmp_path / "logs")!r})
        trace.info("next run")
        assert trace.flush(30)
        """
    )
    assert run_python(replay, tmp_path).returncode == 0
    stored = _stored_messages(SQLiteHandler(path=str(db)), "locked")
    assert sorted(stored) == sorted(f"m{i}" for i in range(3_000))


def test_exit_timeout_is_kept_while_a_file_write_blocks(tmp_path: Path) -> None:
    """A write that never returns (a FIFO nobody reads stands in for a hung mount)."""
    base = tmp_path / "files"
    run_dir = base / "run_id=hung"
    run_dir.mkdir(parents=True)
    os.mkfifo(run_dir / "stdout.txt")
    code = textwrap.dedent(
        f"""
        from flowtrail import FileHandler, get_trace
        trace = get_trace("hung", handlers=[FileHandler(path={str(base)!r})], exit_timeout=2,
                          log_dir={str(tmp_path / "logs")!r})
        for i in range(300):
            trace.info(f"m{{i}}")
        """
    )
    started = time.monotonic()
    result = run_python(code, tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 8, f"exit took {elapsed:.1f} s with exit_timeout=2"
    spool_dirs = list((tmp_path / "logs" / "spool").iterdir())
    assert sum(Spool(d).count() + _failed_count(d) for d in spool_dirs) == 300


def test_exit_timeout_is_kept_while_a_write_never_returns(tmp_path: Path) -> None:
    """A store call that hangs (a hung network mount): exit spools what is queued and the
    batch stuck in the store's hands, and returns within the deadline."""
    code = textwrap.dedent(
        f"""
        import threading
        from flowtrail import Metadata
        from flowtrail.pipeline import Pipeline, PipelineOptions, set_exit_timeout

        class Hung:
            def export(self, batch):
                threading.Event().wait()  # never returns
            def retryable(self, exc): return True
            def sync(self): pass
            def close_exporter(self): pass
            def after_fork(self): pass

        pipeline = Pipeline("hung", Hung(), PipelineOptions(
            batch_size=100, flush_interval=0.05, spool_dir={str(tmp_path / "spool")!r}))
        set_exit_timeout(2)
        for i in range(300):
            pipeline.submit(Metadata(run_id="r", message=f"m{{i}}"))
        """
    )
    started = time.monotonic()
    result = run_python(code, tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 8, f"exit took {elapsed:.1f} s with exit_timeout=2"
    assert Spool(tmp_path / "spool").count() == 300


def _failed_count(directory: Path) -> int:
    return sum(
        1
        for path in directory.glob("*.failed")
        for line in path.read_bytes().splitlines()
        if line.strip()
    )


class _Blocking:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.closed = False

    def export(self, batch: Sequence[Any]) -> None:
        self.entered.set()
        self.release.wait()

    def retryable(self, exc: BaseException) -> bool:
        return True

    def sync(self) -> None:
        pass

    def close_exporter(self) -> None:
        self.closed = True

    def after_fork(self) -> None:
        pass


def test_close_with_a_timeout_returns_and_spools_what_is_queued(tmp_path: Path) -> None:
    exporter = _Blocking()
    pipeline = Pipeline(
        "blocked", exporter, PipelineOptions(batch_size=10, spool_dir=str(tmp_path / "sp"))
    )
    for i in range(25):
        pipeline.submit(Metadata(run_id="r", message=f"m{i}"))
    assert exporter.entered.wait(10)
    started = time.monotonic()
    assert pipeline.close(1.0) is False
    assert time.monotonic() - started < 5
    # The batch in the store's hands stays with the worker; the rest is spooled.
    assert pipeline.spool.count() == 15
    exporter.release.set()


# --------------------------------------------------------------------------- point 8
class _Failing:
    """A local store that is down: every write fails at once."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def export(self, batch: Sequence[Any]) -> None:
        self.threads.append(threading.get_ident())
        raise OSError("store down")

    export_nowait = export

    def retryable(self, exc: BaseException) -> bool:
        return True

    def sync(self) -> None:
        pass

    def close_exporter(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


def test_a_full_queue_during_an_outage_spills_after_one_attempt_on_the_caller(
    tmp_path: Path,
) -> None:
    exporter = _Failing()
    pipeline = Pipeline(
        "down",
        exporter,
        PipelineOptions(
            batch_size=100,
            queue_size=500,
            overflow="help",
            caller_runs=True,
            spool_dir=str(tmp_path / "sp"),
            retry_deadline=60,
            max_retries=1000,
            retry_backoff=0.5,
        ),
    )
    me = threading.get_ident()
    started = time.monotonic()
    for i in range(20_000):
        pipeline.submit(Metadata(run_id="r", message=f"m{i}"))
    elapsed = time.monotonic() - started
    on_caller = exporter.threads.count(me)
    assert on_caller <= 1, f"the caller tried the store {on_caller} times"
    assert elapsed < 10, f"20,000 calls took {elapsed:.1f} s during an outage"
    assert pipeline.stats.spooled >= 20_000 - 500 - 100 - 1000
    assert pipeline.stats.dropped == 0


def test_a_locked_database_never_makes_the_caller_wait(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    holder = _lock_database(db)
    try:
        handler = SQLiteHandler(path=str(db), batch_size=100, queue_size=1_000)
        trace = get_trace("lock-run", handlers=[handler], log_dir=str(tmp_path / "logs"))
        started = time.monotonic()
        for i in range(5_000):
            trace.info(f"m{i}")
        elapsed = time.monotonic() - started
        assert elapsed < 10, f"5,000 calls took {elapsed:.1f} s while the database was locked"
    finally:
        holder.rollback()
        holder.close()
    assert trace.flush(60.0)
    stats = trace.pipelines()[0].stats
    # Once the lock is gone, everything arrives (spilled records are replayed).
    assert stats.dropped == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        trace.pipelines()[0]._next_replay = 0.0
        trace.pipelines()[0]._wake.set()
        stored = _stored_messages(handler, "lock-run")
        if len(stored) >= 5_000:
            break
        time.sleep(0.2)
    assert sorted(stored) == sorted(f"m{i}" for i in range(5_000))


# --------------------------------------------------------------------------- point 9
def test_the_queue_is_bounded_in_bytes(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import json, resource, threading
        from flowtrail.pipeline import Pipeline, PipelineOptions
        from flowtrail import Metadata

        class Stuck:
            def export(self, batch): threading.Event().wait()
            def retryable(self, exc): return True
            def sync(self): pass
            def close_exporter(self): pass
            def after_fork(self): pass

        pipeline = Pipeline("big", Stuck(), PipelineOptions(
            batch_size=1000, queue_bytes=16 * 1024 * 1024, overflow="drop",
            spool_dir={str(tmp_path / "spool")!r}))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for i in range(400):
            pipeline.submit(Metadata(run_id="r", message=str(i).ljust(1_000_000, "x")))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grew_mb": (after - before) / 1024, "dropped": pipeline.stats.dropped,
                          "queued": pipeline.pending()}}))
        import os
        os._exit(0)
        """
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["grew_mb"] < 100, report
    # At most 16 MB queued and one batch in the stuck store's hands; the rest is dropped
    # (the policy chosen here) and counted.
    assert report["queued"] <= 17
    assert report["dropped"] >= 400 - 2 * 17


def test_queue_bytes_is_a_handler_option(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path / "f"), queue_bytes=1024 * 1024)
    trace = get_trace("qb", handlers=[handler])
    assert trace.pipelines()[0].options.queue_bytes == 1024 * 1024
    big = "y" * 300_000
    for _ in range(20):
        trace.info(big)
    assert trace.flush(30.0)
    assert len(_stored_messages(handler, "qb")) == 20
