"""Exactly once, whatever fails: a disk that fills up in the middle of a batch, a replay
that is partly written, a record that cannot be encoded, options that change between
runs, a damaged spool file, a spool that fails too, and a flush that must survive a
power loss. Each test counts the records written against the records stored."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

import flowtrail
from conftest import run_python
from flowtrail import FileHandler, Metadata, SQLiteHandler, get_trace
from flowtrail.pipeline import Pipeline, PipelineOptions
from flowtrail.spool import Spool


@pytest.fixture(autouse=True)
def close_pipelines():
    yield
    flowtrail.shutdown(10.0)


def metadata_lines(folder: Path) -> list[Metadata]:
    """Every line of metadata.txt decoded: a torn or glued line fails the test."""
    data = (folder / "metadata.txt").read_bytes()
    assert data.endswith(b"\n"), data[-200:]
    return [msgspec.json.decode(line, type=Metadata) for line in data.split(b"\n")[:-1]]


# ---------------------------------------------------------------------- 10: disk full
DISK_FULL = """
import resource, signal, sys
from flowtrail import FileHandler, get_trace
base, limit, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
handler = FileHandler(path=base, format="{message}", batch_size=40, max_retries=0)
trace = get_trace("full", handlers=[handler])
trace.info("warm-up")
assert trace.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
for i in range(count):
    (trace.error if i % 5 == 0 else trace.info)(f"record {i} " + "x" * (i % 7 * 60))
    if i % 40 == 39:
        assert trace.flush()
assert trace.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the space returns
pipeline = trace.pipelines()[0]
assert pipeline.close()
trace.info("after")  # a new worker replays the spool first
assert trace.flush()
stats = pipeline.stats
print(stats.spooled, stats.dropped, stats.replayed)
"""


def test_a_disk_that_fills_up_mid_batch_leaves_each_line_once(tmp_path: Path) -> None:
    base, count = tmp_path / "traces", 800
    result = run_python(
        f"import sys; sys.argv = ['x', {str(base)!r}, '60000', '{count}']\n" + DISK_FULL,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    spooled, dropped, replayed = map(int, result.stdout.split())
    assert spooled > 0 and dropped == 0 and replayed == spooled, result.stdout
    expected = ["warm-up", *(f"record {i} " + "x" * (i % 7 * 60) for i in range(count)), "after"]
    folder = base / "run_id=full"
    records = metadata_lines(folder)
    assert Counter(r.message for r in records) == Counter(expected)
    for name, error in (("stdout.txt", False), ("stderr.txt", True)):
        text = (folder / name).read_text()
        assert text.endswith("\n")
        lines = text.split("\n")[:-1]
        wanted = [r.message for r in records if r.error_flag == error]
        assert Counter(lines) == Counter(wanted), name  # no torn, glued or doubled line


# ---------------------------------------------------------------------- 11: partial replay
def spool_files(root: Path, pattern: str = "*.jsonl*") -> list[Path]:
    return sorted(root.rglob(pattern)) if root.exists() else []


def restart(trace: Any) -> Pipeline:
    """Stop the trace's pipeline: the next record starts a worker that replays first."""
    [pipeline] = trace.pipelines()
    assert pipeline.close()
    return pipeline


def test_a_partly_written_replay_keeps_only_the_unwritten_part(isolated: Path) -> None:
    """A spooled batch of two runs is replayed while one run's folder cannot be made: the
    other run is written, and only the records not written stay in the spool, however
    many times the replay runs before the folder is repaired."""
    base = isolated / "traces"
    base.write_text("not a directory")  # the store is down: everything is spooled
    handler = FileHandler(path=str(base), max_retries=0, flush_interval=60.0)
    a, b = get_trace("a", handlers=[handler]), get_trace("b", handlers=[handler])
    for i in range(3):
        a.info(f"a {i}")
        b.info(f"b {i}")
    assert a.flush()
    spool = isolated / "logs" / "spool"
    assert len(spool_files(spool)) == 1
    base.unlink()
    base.mkdir()
    (base / "run_id=b").write_text("in the way")  # run b still cannot be written
    for attempt in range(3):  # three replays while b is blocked
        pipeline = restart(a)
        a.info(f"a fresh {attempt}")
        assert a.flush()
    (base / "run_id=b").unlink()
    pipeline = restart(a)
    a.info("a last")
    assert a.flush()
    a_messages = [r.message for r in metadata_lines(base / "run_id=a")]
    assert Counter(a_messages) == Counter(
        [*(f"a {i}" for i in range(3)), *(f"a fresh {i}" for i in range(3)), "a last"]
    )
    assert [r.message for r in metadata_lines(base / "run_id=b")] == [f"b {i}" for i in range(3)]
    assert spool_files(spool) == []
    assert pipeline.stats.dropped == pipeline.stats.set_aside == 0


SQLITE_FULL = """
import os, resource, signal, sys
from flowtrail import SQLiteHandler, get_trace
db = sys.argv[1]
os.mkdir(db)  # the database cannot be opened: the batch is spooled
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
handler = SQLiteHandler(path=db, max_retries=0, flush_interval=60, batch_size=5000)
trace = get_trace("full", handlers=[handler])
for i in range(3000):  # more rows than one INSERT takes: the replay is two statements
    trace.info(f"log {i}" + ("x" * 4_000_000 if i == 2990 else ""))
assert trace.flush()
[pipeline] = trace.pipelines()
os.rmdir(db)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (2_500_000, hard))  # record 2990 does not fit
assert pipeline.close()
trace.info("log 3000")  # the replay writes the first statement; the second fails (I/O)
assert trace.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
assert pipeline.close()
trace.info("log 3001")  # the rest is replayed now
assert trace.flush()
s = pipeline.stats
print(s.spooled, s.replayed, getattr(s, "set_aside", 0), s.dropped)
"""


def test_sqlite_replay_judges_a_partial_failure_by_its_cause(tmp_path: Path) -> None:
    """A replay that writes its first statement but meets a full disk in the second is
    retried (its cause may pass), keeping only the records not written: it is not set
    aside as a permanent failure (a `PartialExport` is judged by its cause)."""
    db = tmp_path / "t.db"
    result = run_python(f"import sys; sys.argv = ['x', {str(db)!r}]\n" + SQLITE_FULL, tmp_path)
    assert result.returncode == 0, result.stderr
    records = SQLiteHandler(path=str(db)).find_trace_with_id("full").meta
    assert Counter(r.message.rstrip("x") for r in records) == Counter(
        f"log {i}" for i in range(3002)
    )
    assert spool_files(tmp_path / "logs" / "spool") == []
    spooled, replayed, set_aside, dropped = map(int, result.stdout.split())
    assert (spooled, replayed, set_aside, dropped) == (3000, 3000, 0, 0), result.stderr


def test_a_permanent_sqlite_error_is_not_retried(isolated: Path) -> None:
    """A table that lacks the columns (a statement error, not a busy database) fails the
    same way every time: no retries, and the replay sets the records aside."""
    db = isolated / "t.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE traces (id INTEGER PRIMARY KEY, run_id TEXT)")
    conn.close()
    handler = SQLiteHandler(path=str(db), max_retries=5, retry_deadline=60.0)
    trace = get_trace("schema", handlers=[handler])
    for i in range(3):
        trace.info(f"record {i}")
    assert trace.flush()
    pipeline = restart(trace)
    assert pipeline.stats.retries == 0
    trace.info("record 3")
    assert trace.flush()
    assert pipeline.stats.retries == 0
    spool = isolated / "logs" / "spool"
    failed = spool_files(spool, "*.failed")
    kept = [r["message"] for path in failed for r in map(json.loads, path.read_text().splitlines())]
    assert sorted(kept) == [f"record {i}" for i in range(3)]
    assert pipeline.stats.set_aside == 3


# ---------------------------------------------------------------------- 12: bad records
class Opaque:
    """An object JSON cannot hold."""

    def __str__(self) -> str:
        return "opaque"


def test_one_unencodable_record_costs_no_other_record(tmp_path: Path) -> None:
    """One record with a lone surrogate and one span with an object JSON cannot hold, in
    the same batch as a thousand good records of another run: the good records are
    written once, the bad ones written with the bad parts replaced."""
    base, db = tmp_path / "traces", tmp_path / "t.db"
    handlers = [
        FileHandler(path=str(base), batch_size=5000, flush_interval=60.0),
        SQLiteHandler(path=str(db), batch_size=5000, flush_interval=60.0),
    ]
    good = get_trace("good", handlers=handlers)
    bad = get_trace("bad", handlers=handlers)
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    for i in range(1000):
        good.info(f"good {i}")
        if i == 500:
            bad.info("lone \ud800 surrogate")
            with bad.span("stage", name="odd", obj=Opaque(), loop=loop):
                pass
    assert good.flush()
    expected = [f"good {i}" for i in range(1000)]
    for store in (FileHandler(path=str(base)), SQLiteHandler(path=str(db))):
        assert [r.message for r in store.find_trace_with_id("good").meta] == expected
        assert [r.message for r in store.find_trace_with_id("bad").meta] == [
            "lone \ufffd surrogate"
        ]
        [span] = store.spans(run_id="bad")
        assert span.attributes["obj"] == "opaque"
        assert span.attributes["loop"]["self"] == "<recursive>"
    assert len((base / "run_id=good" / "stdout.txt").read_text().splitlines()) == 1000
    for pipeline in good.pipelines():
        assert pipeline.stats.sanitised == 2
        assert pipeline.stats.dropped == pipeline.stats.spooled == 0


def test_unencodable_extras_are_made_encodable_once_per_trace(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    loop: dict[str, Any] = {}
    loop["again"] = loop
    trace = get_trace(
        "extras",
        handlers=[SQLiteHandler(path=str(db))],
        extras={"metadata": {"obj": Opaque(), "loop": loop}, "tags": ["t\udc80"]},
    )
    trace.info("one")
    trace.info("two")
    assert trace.flush()
    records = SQLiteHandler(path=str(db)).find_trace_with_id("extras").meta
    assert [r.message for r in records] == ["one", "two"]
    assert records[0].metadata["obj"] == "opaque"
    assert records[0].tags == ["t\ufffd"]
    assert trace.pipelines()[0].stats.sanitised == 0  # nothing left to do at export


# ---------------------------------------------------------------------- 13: spool key
def test_spooled_records_reach_their_destination_after_options_change(isolated: Path) -> None:
    db = isolated / "t.db"
    db.mkdir()
    first = get_trace("moved", handlers=[SQLiteHandler(path=str(db), max_retries=0)])
    for i in range(5):
        first.info(f"record {i}")
    assert first.flush()
    restart(first)
    db.rmdir()
    result = run_python(
        "from flowtrail import SQLiteHandler, get_trace\n"
        f"h = SQLiteHandler(path={str(db)!r}, batch_size=7, flush_interval=0.2)\n"
        "t = get_trace('moved', handlers=[h])\n"
        "t.info('record 5')\n"
        "assert t.flush()\n",
        isolated,
    )
    assert result.returncode == 0, result.stderr
    messages = [r.message for r in SQLiteHandler(path=str(db)).find_trace_with_id("moved").meta]
    assert Counter(messages) == Counter(f"record {i}" for i in range(6))
    assert spool_files(isolated / "logs" / "spool") == []
    [folder] = (isolated / "logs" / "spool").iterdir()
    assert folder.name.startswith("sqlite-t.db-traces-")


def test_a_spool_folder_of_the_old_naming_is_replayed(isolated: Path) -> None:
    db = isolated / "t.db"
    handler = SQLiteHandler(path=str(db)).bound(flowtrail.config.resolve_settings())
    # The name earlier versions gave: the type and a digest of every option.
    options = msgspec.to_builtins(handler.config)
    del options["spool_max_bytes"]  # an option they did not have
    digest = hashlib.sha256(msgspec.json.encode(options)).hexdigest()[:12]
    old = isolated / "logs" / "spool" / f"sqlite-{digest}"
    Spool(old).write_batch([Metadata(run_id="old", message=f"old {i}") for i in range(3)])
    trace = get_trace("old", handlers=[SQLiteHandler(path=str(db))])
    trace.info("new")
    assert trace.flush()
    messages = [r.message for r in SQLiteHandler(path=str(db)).find_trace_with_id("old").meta]
    assert Counter(messages) == Counter(["old 0", "old 1", "old 2", "new"])
    assert not old.exists()


# ---------------------------------------------------------------------- 14: damaged spool
def test_a_damaged_spool_file_is_kept_and_reported(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = isolated / "t.db"
    handler = SQLiteHandler(path=str(db)).bound(flowtrail.config.resolve_settings())
    folder = isolated / "logs" / "spool" / handler.spool_name()
    lines = [msgspec.json.encode(Metadata(run_id="d", message=f"kept {i}")) for i in range(4)]
    damaged = b"\n".join([lines[0], lines[1][:30] + b"#garbage", lines[2], lines[3][:25]])
    folder.mkdir(parents=True)
    (folder / "1-1000-abcdef.log.jsonl").write_bytes(damaged)  # middle line bad, last torn
    trace = get_trace("d", handlers=[SQLiteHandler(path=str(db))])
    trace.info("fresh")
    assert trace.flush()
    messages = [r.message for r in SQLiteHandler(path=str(db)).find_trace_with_id("d").meta]
    assert Counter(messages) == Counter(["kept 0", "kept 2", "fresh"])
    [kept] = folder.glob("*.failed")
    assert kept.read_bytes() == damaged  # kept as it was, for a person to look at
    assert spool_files(folder, "*.jsonl") == []
    assert trace.pipelines()[0].stats.dropped == 1
    err = capsys.readouterr().err
    assert "1 undecodable line(s)" in err and str(kept) in err


# ---------------------------------------------------------------------- 15: every loss
def test_a_worse_outcome_of_an_error_already_reported_is_reported_again(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = isolated / "t.db"
    db.mkdir()
    trace = get_trace("lost", handlers=[SQLiteHandler(path=str(db), max_retries=0)])
    trace.info("spooled")
    assert trace.flush()
    [pipeline] = trace.pipelines()
    for path in pipeline.spool.directory.iterdir():
        path.unlink()
    pipeline.spool.directory.rmdir()
    pipeline.spool.directory.write_text("the spool cannot be written either")
    trace.info("lost 0")
    trace.info("lost 1")
    assert trace.flush()
    reports = [line for line in capsys.readouterr().err.splitlines() if "flowtrail:" in line]
    assert len(reports) == 2, reports
    assert "could not write 1 record(s)" in reports[0] and "spool" in reports[0]
    assert "could not write 2 record(s)" in reports[1] and "they are lost" in reports[1]
    assert pipeline.stats.dropped == 2


# ---------------------------------------------------------------------- 16: durable flush
@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of every ``os.fsync`` call."""
    calls: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_a_flush_makes_sqlite_durable_against_power_loss(tmp_path: Path, fsynced: list) -> None:
    db = tmp_path / "t.db"
    trace = get_trace("durable", handlers=[SQLiteHandler(path=str(db))])
    trace.info("one")
    fsynced.clear()
    assert trace.flush()
    assert f"{db}-wal" in fsynced  # synchronous=NORMAL does not sync a commit
    assert str(tmp_path) in fsynced  # the names of the database and its WAL


def test_a_flush_makes_new_files_durable(tmp_path: Path, fsynced: list) -> None:
    base = tmp_path / "traces"
    trace = get_trace("durable", handlers=[FileHandler(path=str(base))])
    trace.info("one")
    fsynced.clear()
    assert trace.flush()
    folder = base / "run_id=durable"
    assert {str(folder / "metadata.txt"), str(folder), str(base)} <= set(fsynced)


def test_spool_files_are_private_and_their_folder_is_synced(tmp_path: Path, fsynced: list) -> None:
    old_umask = os.umask(0o022)
    try:
        spool = Spool(tmp_path / "spool")
        spool.write_batch([Metadata(run_id="r", message="secret")])
        [written] = (tmp_path / "spool").glob("*.jsonl")
        assert str(tmp_path / "spool") in fsynced  # the rename is durable
        spool.append(Metadata(run_id="r", message="overflow"))
        [opened] = (tmp_path / "spool").glob("*.open")
        modes = {stat.S_IMODE(path.stat().st_mode) for path in (written, opened)}
        spool.seal()
    finally:
        os.umask(old_umask)
    assert modes == {0o600}
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700


# ---------------------------------------------------------------------- the shared mechanism
class Refusing:
    """An exporter like a remote store's: it refuses a whole request that holds a record
    it rejects (``bad`` in the message), or every request (``down``)."""

    def __init__(self, refuse_all: bool = False) -> None:
        self.refuse_all = refuse_all
        self.calls = 0
        self.written: list[str] = []

    def export(self, batch: Sequence[Any]) -> None:
        self.calls += 1
        if self.refuse_all or any("bad" in r.message for r in batch):
            raise ValueError("400 Bad Request")
        self.written.extend(r.message for r in batch)

    def retryable(self, exc: BaseException) -> bool:
        return not isinstance(exc, ValueError)

    def sync(self) -> None:
        pass

    def close_exporter(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


def test_the_pipeline_isolates_a_bad_record_for_any_exporter(tmp_path: Path) -> None:
    exporter = Refusing()
    options = PipelineOptions(spool_dir=str(tmp_path / "spool"), replay_interval=0.05)
    pipeline = Pipeline("remote", exporter, options)
    messages = [f"good {i}" for i in range(1000)]
    messages[700] = "bad 700"
    for message in messages:
        pipeline.submit(Metadata(run_id="r", message=message))
    assert pipeline.flush(10.0)
    assert exporter.written == [m for m in messages if m != "bad 700"]  # in order, once
    assert exporter.calls <= 2 * 10 + 2  # about two requests per halving
    # The store took the others: the refused record is a dead letter at once, with why.
    assert pipeline.stats.spooled == 0 and pipeline.stats.set_aside == 1
    [failed] = (tmp_path / "spool").glob("*.failed")
    assert [json.loads(line)["message"] for line in failed.read_text().splitlines()] == ["bad 700"]
    why = json.loads(failed.with_name(failed.name + ".why").read_text())
    assert why["error"].startswith("ValueError") and why["time"] > 0
    assert exporter.written.count("good 0") == 1
    pipeline.close(10.0)
    # A store that refuses every request is not sent one request per record.
    exporter = Refusing(refuse_all=True)
    pipeline = Pipeline("down", exporter, PipelineOptions(spool_dir=str(tmp_path / "down")))
    for i in range(1000):
        pipeline.submit(Metadata(run_id="r", message=f"m {i}"))
    assert pipeline.flush(10.0)
    assert exporter.calls <= 2 * 10 + 6
    assert pipeline.stats.spooled == 1000 and pipeline.stats.dropped == 0
    pipeline.close(10.0)


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class Slow(Refusing):
    """Writes everything, slowly (a store that cannot keep up)."""

    def export(self, batch: Sequence[Any]) -> None:
        time.sleep(0.02)
        self.written.extend(r.message for r in batch)


def test_records_spilled_to_the_spool_are_durable_when_flush_returns(tmp_path: Path) -> None:
    """A full queue spills records to the spool's open file; a flush that returns True
    has synced and sealed it, even while more records keep coming."""
    spool = tmp_path / "spool"
    options = PipelineOptions(spool_dir=str(spool), queue_size=20, batch_size=10)
    pipeline = Pipeline("slow", Slow(), options)
    for i in range(200):
        pipeline.submit(Metadata(run_id="r", message=f"m {i}"))
    assert pipeline.stats.spooled > 0
    stop = threading.Event()

    def keep_coming() -> None:
        i = 0
        while not stop.is_set():
            pipeline.submit(Metadata(run_id="r", message=f"more {i}"))
            i += 1
            time.sleep(0.001)

    thread = threading.Thread(target=keep_coming)
    thread.start()
    try:
        time.sleep(0.05)
        spilled_before = {p.name for p in spool.glob("*.jsonl.open")}
        assert pipeline.flush(10.0)
        still_open = {p.name for p in spool.glob("*.jsonl.open")}
    finally:
        stop.set()
        thread.join()
    assert spilled_before and not (spilled_before & still_open)
    pipeline.close(10.0)
