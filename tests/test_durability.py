"""Durability of the file and SQLite stores: fork, kill -9 in the middle of writing, exit
without flush, any text round-tripping unchanged, and the spool that catches what an
unwritable store could not take."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import flowtrail
from conftest import ROOT, run_python
from flowtrail import FileHandler, Metadata, SQLiteHandler, get_trace
from flowtrail.spool import Spool


def numbers_in(messages: list[str], prefix: str) -> Counter[int]:
    return Counter(int(m.split()[1]) for m in messages if m.startswith(prefix + " "))


def read_file_store(base: Path, run_id: str) -> list[str]:
    return [r.message for r in FileHandler(path=str(base)).find_trace_with_id(run_id).meta]


def read_sqlite(db: Path, run_id: str) -> list[str]:
    return [r.message for r in SQLiteHandler(path=str(db)).find_trace_with_id(run_id).meta]


def integrity(db: Path) -> str:
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def spooled_records_in(path: Path) -> list[Metadata]:
    lines = path.read_bytes().splitlines()
    return [msgspec.json.decode(line, type=Metadata) for line in lines if line.strip()]


def spooled_records(folder: Path) -> list[Metadata]:
    """The records waiting in the finished spool files under ``folder``, oldest first."""
    files = sorted(folder.rglob("*.jsonl"), key=lambda p: p.name.split("-")[1])
    return [record for path in files for record in spooled_records_in(path)]


# ---------------------------------------------------------------------- fork
FORK = """
import os, sys
from flowtrail import FileHandler, SQLiteHandler, get_trace
base, db, child_exit = sys.argv[1], sys.argv[2], sys.argv[3]
handlers = [
    FileHandler(path=base, flush_interval=60.0),
    SQLiteHandler(path=db, flush_interval=60.0),
]
trace = get_trace("forked", handlers=handlers)
trace.info("parent warm-up")      # opens the parent's files and connection
assert trace.flush()
for i in range(10):
    trace.info(f"parent {i}")
pipes = trace.pipelines()
assert [p.pending() for p in pipes] == [10, 10], [p.pending() for p in pipes]
pid = os.fork()
if pid == 0:
    try:
        # The child has fresh, empty queues: the parent's records stay the parent's.
        assert [p.pending() for p in pipes] == [0, 0], [p.pending() for p in pipes]
        child = get_trace("forked", handlers=handlers)
        for i in range(5):
            child.info(f"child {i}")
        get_trace("child-only", handlers=handlers).info("child 99")
        if child_exit == "flush":
            os._exit(0 if child.flush(30) else 3)
        sys.exit(0)   # no flush: the child's own exit writes its records
    except SystemExit:
        raise
    except BaseException:
        import traceback
        traceback.print_exc()
        os._exit(4)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert [p.pending() for p in pipes] == [10, 10], [p.pending() for p in pipes]
trace.info("parent after fork")
assert trace.flush()
print(os.getpid(), pid)
"""


@pytest.mark.parametrize("child_exit", ["flush", "exit"])
def test_fork_child_has_fresh_workers_and_no_duplicates(tmp_path: Path, child_exit: str) -> None:
    base, db = tmp_path / "traces", tmp_path / "t.db"
    result = run_python(
        f"import sys; sys.argv = ['x', {str(base)!r}, {str(db)!r}, {child_exit!r}]\n" + FORK,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "flowtrail:" not in result.stderr, result.stderr
    parent_pid, child_pid = (int(v) for v in result.stdout.split())
    expected = ["parent warm-up", *(f"parent {i}" for i in range(10)), "parent after fork"]
    for store in (FileHandler(path=str(base)), SQLiteHandler(path=str(db))):
        records = store.find_trace_with_id("forked").meta
        messages = [r.message for r in records]
        assert Counter(messages) == Counter([*expected, *(f"child {i}" for i in range(5))])
        assert [m for m in messages if m.startswith("parent")] == expected
        assert [m for m in messages if m.startswith("child")] == [f"child {i}" for i in range(5)]
        for record in records:
            owner = child_pid if record.message.startswith("child") else parent_pid
            assert record.process == owner, record
        child_only = store.find_trace_with_id("child-only").meta
        assert [(r.message, r.process) for r in child_only] == [("child 99", child_pid)]
    assert integrity(db) == "ok"


# ---------------------------------------------------------------------- kill -9
KILLED = """
import sys
from flowtrail import FileHandler, SQLiteHandler, get_trace
base, db = sys.argv[1], sys.argv[2]
trace = get_trace(
    "killed",
    handlers=[FileHandler(path=base, batch_size=100), SQLiteHandler(path=db, batch_size=100)],
)
i = 0
while True:
    trace.info(f"record {i} " + "x" * (i % 13 * 300))
    i += 1
    if i % 1000 == 0:
        assert trace.flush(60)
        print(i, flush=True)
"""


def test_kill_9_while_writing_keeps_everything_flushed(tmp_path: Path) -> None:
    base, db = tmp_path / "traces", tmp_path / "t.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(base), str(db)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    flushed = 0
    try:
        while flushed < 6000:
            line = proc.stdout.readline()
            assert line, f"the writer stopped early: {proc.stderr.read()}"
            flushed = int(line)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the next thousand
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    for messages in (read_file_store(base, "killed"), read_sqlite(db, "killed")):
        numbers = numbers_in(messages, "record")
        assert set(range(flushed)) <= set(numbers)  # everything flushed is there
        assert max(numbers.values()) == 1  # nothing twice
        assert sorted(numbers) == list(range(len(numbers)))  # no hole before the end
    assert integrity(db) == "ok"
    # Every metadata line but a torn last one is a whole record.
    lines = (base / "run_id=killed" / "metadata.txt").read_bytes().split(b"\n")
    for line in lines[:-1]:
        msgspec.json.decode(line, type=Metadata)

    # The run goes on in a new process after the crash: its records join the old ones.
    result = run_python(
        "from flowtrail import FileHandler, SQLiteHandler, get_trace\n"
        f"t = get_trace('killed', handlers=[FileHandler(path={str(base)!r}), "
        f"SQLiteHandler(path={str(db)!r})])\n"
        "t.info('resumed 0')\nt.info('resumed 1')\nt.flush()\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for messages in (read_file_store(base, "killed"), read_sqlite(db, "killed")):
        assert messages[-2:] == ["resumed 0", "resumed 1"]
        assert set(range(flushed)) <= set(numbers_in(messages, "record"))
    assert integrity(db) == "ok"


# ---------------------------------------------------------------------- exit without flush
@pytest.mark.parametrize(
    ("ending", "code"),
    [("", 0), ("import sys; sys.exit(3)", 3), ("raise RuntimeError('crash')", 1)],
    ids=["normal", "sys-exit", "exception"],
)
def test_exit_without_flush_writes_everything(tmp_path: Path, ending: str, code: int) -> None:
    base, db = tmp_path / "traces", tmp_path / "t.db"
    result = run_python(
        "import threading\n"
        "from flowtrail import FileHandler, SQLiteHandler, get_trace\n"
        f"handlers = [FileHandler(path={str(base)!r}, flush_interval=60.0), "
        f"SQLiteHandler(path={str(db)!r}, flush_interval=60.0)]\n"
        "trace = get_trace('exiting', handlers=handlers)\n"
        "for i in range(5000):\n"
        "    trace.info(f'record {i}')\n"
        "def work():\n"
        "    t = get_trace('exiting-thread', handlers=handlers)\n"
        "    for i in range(300):\n"
        "        t.error(f'record {i}')\n"
        "th = threading.Thread(target=work); th.start(); th.join()\n"
        "default = get_trace('default-store')\n"  # console + ./logs/flowtrail.db
        "for i in range(50):\n"
        "    default.info(f'record {i}')\n" + ending + "\n",
        tmp_path,
    )
    assert result.returncode == code, result.stderr
    assert "flowtrail:" not in result.stderr, result.stderr
    for run_id, count in (("exiting", 5000), ("exiting-thread", 300)):
        for messages in (read_file_store(base, run_id), read_sqlite(db, run_id)):
            assert messages == [f"record {i}" for i in range(count)]
    default_db = tmp_path / "logs" / "flowtrail.db"
    assert read_sqlite(default_db, "default-store") == [f"record {i}" for i in range(50)]
    assert integrity(db) == "ok"
    assert not list((tmp_path / "logs").rglob("*.jsonl*"))  # nothing left in a spool


# ---------------------------------------------------------------------- any text
@pytest.fixture
def stores(tmp_path: Path) -> tuple[FileHandler, SQLiteHandler]:
    return FileHandler(path=str(tmp_path / "traces")), SQLiteHandler(path=str(tmp_path / "t.db"))


def round_trip(stores: tuple[FileHandler, SQLiteHandler], message: str, **extras) -> None:
    run_id = uuid.uuid4().hex
    trace = get_trace(run_id, handlers=list(stores), extras=extras or None)
    trace.info(message)
    trace.error(message)
    assert trace.flush(60)
    for store in stores:
        records = store.find_trace_with_id(run_id).meta
        assert [r.message for r in records] == [message, message]
        for key, value in extras.items():
            assert getattr(records[0], key) == value
        assert [r.message for r in store.search(run_id=run_id, level="error")] == [message]


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(message=TEXT)
@example(message="")
@example(message="\x00")
@example(message="a\x00b\x00")
@example(message="line\nbreak\r\n\ttab\u2028\u2029\x85\x0b\x0c")
@example(message='{"run_id":"x"}\n{"run_id":')
@example(message="'); DROP TABLE traces; --")
@example(message="\U0010ffff\U0001f600\u00e9\u0301\ufeff\ufffd")
@example(message="[WORKFLOW]: with a prefix")
@example(message="{message} {0} %s %(x)s")
def test_any_message_round_trips(stores: tuple[FileHandler, SQLiteHandler], message: str) -> None:
    round_trip(stores, message)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(workflow=TEXT, tags=st.lists(TEXT, max_size=3), meta=st.dictionaries(TEXT, TEXT, max_size=3))
def test_any_context_text_round_trips(
    stores: tuple[FileHandler, SQLiteHandler], workflow: str, tags: list[str], meta: dict
) -> None:
    round_trip(stores, "context", workflow_name=workflow, tags=tags, metadata=meta)


def test_five_megabyte_message_round_trips(stores: tuple[FileHandler, SQLiteHandler]) -> None:
    piece = "ab\x00é€\U0001f600\n\"\\'{}"
    message = (piece * (5_000_000 // len(piece) + 1))[:5_000_000]
    assert len(message) == 5_000_000
    round_trip(stores, message)
    round_trip(stores, "x" * 5_000_000)


# ---------------------------------------------------------------------- spool
def _only_report(stderr: str, handler: str) -> None:
    reports = [line for line in stderr.splitlines() if line.startswith("flowtrail:")]
    assert len(reports) == 1, stderr
    assert handler in reports[0], reports[0]
    assert "spool" in reports[0], reports[0]


@pytest.mark.parametrize("broken", ["directory", "parent-is-file"])
def test_unwritable_sqlite_spools_and_reports_once(
    isolated: Path, capsys: pytest.CaptureFixture[str], broken: str
) -> None:
    if broken == "directory":
        db = isolated / "db.sqlite"
        db.mkdir()
    else:
        (isolated / "afile").write_text("not a directory")
        db = isolated / "afile" / "db.sqlite"
    handler = SQLiteHandler(path=str(db), max_retries=1, retry_deadline=2.0)
    trace = get_trace("spooled", handlers=[handler])
    trace.info("first")
    trace.error("second")
    try:
        raise ValueError("inside")
    except ValueError:
        trace.exception("third")
    with get_trace("spooled", handlers=[handler]) as block:
        block.warning("fourth")
    assert trace.flush()
    for i in range(20):
        trace.info(f"more {i}")
    assert trace.flush()
    spool = isolated / "logs" / "spool"
    records = spooled_records(spool)
    expected = ["first", "second", "third", "fourth", *(f"more {i}" for i in range(20))]
    assert [r.message for r in records] == expected
    assert all(p.parent.name.startswith("sqlite-") for p in spool.rglob("*.jsonl"))
    _only_report(capsys.readouterr().err, f"'sqlite' at {db}")
    assert trace.pipelines()[0].stats.spooled == len(expected)
    assert trace.pipelines()[0].stats.dropped == 0


def test_unwritable_file_store_spools(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (isolated / "afile").write_text("not a directory")
    base = isolated / "afile" / "traces"
    trace = get_trace("spooled", handlers=[FileHandler(path=str(base), max_retries=0)])
    for i in range(5):
        trace.info(f"file {i}")
    assert trace.flush()
    assert [r.message for r in spooled_records(isolated / "logs" / "spool")] == [
        f"file {i}" for i in range(5)
    ]
    _only_report(capsys.readouterr().err, f"'file' at {base}")


def test_spool_goes_under_log_dir(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = isolated / "db.sqlite"
    db.mkdir()
    logs = isolated / "custom-logs"
    trace = get_trace(
        "spooled", handlers=[SQLiteHandler(path=str(db), max_retries=0)], log_dir=str(logs)
    )
    trace.info("to the custom spool")
    assert trace.flush()
    assert [r.message for r in spooled_records(logs / "spool")] == ["to the custom spool"]
    assert not (isolated / "logs").exists()
    capsys.readouterr()


def test_spool_is_replayed_when_the_store_works_again(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = isolated / "db.sqlite"
    db.mkdir()
    handler = SQLiteHandler(path=str(db), max_retries=0)
    trace = get_trace("replayed", handlers=[handler])
    for i in range(30):
        trace.info(f"record {i}")
    assert trace.flush()
    assert len(spooled_records(isolated / "logs" / "spool")) == 30
    db.rmdir()  # the store is writable again
    pipeline = trace.pipelines()[0]
    assert pipeline.close()  # a worker started later replays the spool first
    trace.info("record 30")
    assert trace.flush()
    assert read_sqlite(db, "replayed") == [f"record {i}" for i in range(31)]
    assert pipeline.stats.replayed == 30
    assert spooled_records(isolated / "logs" / "spool") == []
    assert not list((isolated / "logs" / "spool").rglob("*.jsonl*"))
    capsys.readouterr()


def test_spool_is_replayed_by_the_next_process(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = isolated / "db.sqlite"
    db.mkdir()
    trace = get_trace("replayed", handlers=[SQLiteHandler(path=str(db), max_retries=0)])
    for i in range(30):
        trace.info(f"record {i}")
    assert trace.flush()
    db.rmdir()
    result = run_python(
        "from flowtrail import SQLiteHandler, get_trace\n"
        f"t = get_trace('replayed', handlers=[SQLiteHandler(path={str(db)!r}, max_retries=0)])\n"
        "t.info('from the next process')\n"
        "assert t.flush()\n"
        "print(t.pipelines()[0].stats.replayed)\n",
        isolated,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["30"]
    messages = read_sqlite(db, "replayed")
    assert Counter(messages) == Counter(
        [*(f"record {i}" for i in range(30)), "from the next process"]
    )
    assert not list((isolated / "logs" / "spool").rglob("*.jsonl*"))
    capsys.readouterr()


def test_spool_claim_done_release(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.pending() == [] and list(spool.claim()) == []
    first = [Metadata(run_id="r", message=f"a {i}") for i in range(3)]
    second = [Metadata(run_id="r", message=f"b {i}") for i in range(2)]
    spool.write_batch(first)
    spool.write_batch(second)
    assert spool.count() == 5
    claimed = list(spool.claim())
    assert [records for _, _, records in claimed] == [first, second]
    assert {kind for _, kind, _ in claimed} == {"log"}
    # Claimed by this (live) process: nobody else can take them.
    assert spool.pending() == []
    spool.release(claimed[1][0])
    spool.done(claimed[0][0])
    assert spool.count() == 2
    [(path, _, records)] = list(spool.claim())
    assert records == second
    spool.done(path)
    assert list((tmp_path / "spool").iterdir()) == []


def test_spool_takes_back_files_of_dead_processes(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(dead.stdout)
    record = Metadata(run_id="r", message="left behind")
    line = msgspec.json.encode(record) + b"\n"
    # An overflow file a killed process left open, with a torn last line ...
    (folder / f"{dead_pid}-1000-aaaaaa.log.jsonl.open").write_bytes(line + line[:20])
    # ... and a file it had claimed but not finished replaying.
    (folder / f"1-2000-bbbbbb.log.jsonl.claimed-{dead_pid}").write_bytes(line)
    # A claim of a live process (this one) is left alone.
    (folder / f"1-3000-cccccc.log.jsonl.claimed-{os.getpid()}").write_bytes(line)
    spool = Spool(folder)
    claimed = list(spool.claim())
    assert [records for _, _, records in claimed] == [[record], [record]]
    for path, _, _ in claimed:
        spool.done(path)
    assert [p.name for p in folder.iterdir()] == [f"1-3000-cccccc.log.jsonl.claimed-{os.getpid()}"]


def test_spool_overflow_file_is_sealed_and_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    records = [Metadata(run_id="r", message=f"overflow {i}") for i in range(4)]
    for record in records:
        spool.append(record)
    assert spool.has_open()
    assert spool.pending() == []  # an open file of a live process is not replayable yet
    spool.seal()
    assert not spool.has_open()
    [(path, _, found)] = list(spool.claim())
    assert found == records
    spool.done(path)


def test_strict_mode_raises_instead_of_spooling(isolated: Path) -> None:
    db = isolated / "db.sqlite"
    db.mkdir()
    trace = get_trace("strict", handlers=[SQLiteHandler(path=str(db))], strict=True)
    with pytest.raises(sqlite3.OperationalError):
        trace.info("raises")
    assert not (isolated / "logs" / "spool").exists() or not spooled_records(
        isolated / "logs" / "spool"
    )


def test_shutdown_then_log_again(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    trace = get_trace("again", handlers=[SQLiteHandler(path=str(db))])
    trace.info("before shutdown")
    assert flowtrail.shutdown()
    trace.info("after shutdown")
    assert trace.flush()
    assert read_sqlite(db, "again") == ["before shutdown", "after shutdown"]


def _moved_run_folder(base: Path, outside: Path) -> None:
    """A run folder moved elsewhere and replaced by a symlink: the file store refuses to
    write through it (the path would leave the base), a permanent failure."""
    base.mkdir(parents=True)
    outside.mkdir()
    (base / "run_id=moved").symlink_to(outside, target_is_directory=True)


def test_refused_batch_is_not_written_twice_after_repair(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A batch with records of several runs that the file store refuses is spooled
    whole; none of it may have been written already, or its replay duplicates records."""
    base, outside = isolated / "traces", isolated / "elsewhere"
    _moved_run_folder(base, outside)
    handler = FileHandler(path=str(base), max_retries=0, flush_interval=60.0)
    good = get_trace("good", handlers=[handler])
    moved = get_trace("moved", handlers=[handler])
    good.info("good 0")
    moved.info("moved 0")  # same batch: nothing is flushed in between
    good.info("good 1")
    assert good.flush()
    assert list(outside.iterdir()) == []
    assert "would leave" in capsys.readouterr().err
    (base / "run_id=moved").unlink()  # repaired
    pipeline = good.pipelines()[0]
    assert pipeline.close()  # the next worker replays the spool first
    good.info("good 2")
    assert good.flush()
    assert read_file_store(base, "good") == ["good 0", "good 1", "good 2"]
    assert read_file_store(base, "moved") == ["moved 0"]
    assert not list((isolated / "logs" / "spool").rglob("*.jsonl*"))


def test_a_spool_file_that_never_goes_through_does_not_block_the_others(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spooled batch that fails for good (its run folder is a symlink out of the base)
    must not keep later spool files of the same handler from being replayed: it is set
    aside (``.failed``), counted and reported, and the replay goes on with the others."""
    base, outside = isolated / "traces", isolated / "elsewhere"
    _moved_run_folder(base, outside)
    handler = FileHandler(path=str(base), max_retries=0)
    good = get_trace("good", handlers=[handler])
    moved = get_trace("moved", handlers=[handler])
    moved.info("stuck")
    assert moved.flush()  # refused for good: spooled
    # A passing outage: the base is briefly not a directory; these batches are spooled too.
    away = isolated / "traces-away"
    base.rename(away)
    base.write_text("not a directory")
    good.info("waiting 0")
    good.info("waiting 1")
    assert good.flush()
    base.unlink()
    away.rename(base)
    assert len(spooled_records(isolated / "logs" / "spool")) == 3
    pipeline = good.pipelines()[0]
    assert pipeline.close()  # the next worker replays the spool first
    good.info("fresh")
    assert good.flush()
    assert read_file_store(base, "good") == ["waiting 0", "waiting 1", "fresh"]
    assert list(outside.iterdir()) == []
    spool = isolated / "logs" / "spool"
    assert not list(spool.rglob("*.jsonl")) and not list(spool.rglob("*.claimed-*"))
    [failed] = list(spool.rglob("*.failed"))
    assert [r.message for r in spooled_records_in(failed)] == ["stuck"]
    assert pipeline.stats.replayed == 2
    assert pipeline.stats.set_aside == 1  # kept for a person, not lost
    assert pipeline.stats.dropped == 0
    capsys.readouterr()
