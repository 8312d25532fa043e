"""Process lifecycle (`flowtrail.lifecycle`): records of forked and multiprocessing
children reach the store without a flush, a fork never hangs the child in SQLite, and
SIGTERM ends the run as interrupted before the process dies of it.

Every case runs in its own interpreter with real processes, real signals and real stores,
and counts what was written against what was stored."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_python
from flowtrail import FileHandler, SQLiteHandler

#: `flowtrail.lifecycle.INTERRUPTED`, written out so that this module loads on older code.
INTERRUPTED = "interrupted"

CHILDREN = 4
PER_CHILD = 2500

# The children's work lives in a module of the test's directory, so that spawn and
# forkserver children (fresh interpreters) can import it.
WORK_MODULE = r"""
import sys
from flowtrail import FileHandler, SQLiteHandler, Trace

def work(i, store, count):
    if store == "file":
        handler = FileHandler(path="logs/files")
    else:
        handler = SQLiteHandler(path="logs/flowtrail.db")
    trace = Trace(run_id=f"run-{i}", handlers=[handler])
    for k in range(count):
        trace.info(f"child {i} record {k}")
    return i
"""

PARENT = r"""
import concurrent.futures, multiprocessing, os, sys
from lifecycle_work import work
store, case, children, per_child = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
args = [(i, store, per_child) for i in range(children)]
if case in ("fork", "forkserver", "spawn"):
    context = multiprocessing.get_context(case)
    processes = [context.Process(target=work, args=a) for a in args]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    assert [p.exitcode for p in processes] == [0] * children
elif case in ("pool", "pool-maxtasks"):
    maxtasks = 1 if case == "pool-maxtasks" else None
    pool = multiprocessing.get_context("fork").Pool(children, maxtasksperchild=maxtasks)
    assert sorted(pool.starmap(work, args)) == list(range(children))
    pool.close()
    pool.join()
elif case == "pool-with":  # the with-block ends the workers with terminate() (SIGTERM)
    with multiprocessing.get_context("fork").Pool(children) as pool:
        assert sorted(pool.starmap(work, args)) == list(range(children))
elif case == "executor":
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(children, mp_context=context) as executor:
        assert sorted(executor.map(work, *zip(*args))) == list(range(children))
elif case == "os.fork":
    pids = []
    for a in args:
        pid = os.fork()
        if pid == 0:
            work(*a)
            sys.exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
print("done")
"""


def _python(
    code: str, env: dict[str, str] | None = None, *args: str
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``code`` with this flowtrail."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    full_env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return [sys.executable, "-c", code, *args], full_env


def _start(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A child interpreter running ``code``, once it printed ``ready``."""
    argv, full_env = _python(code, env)
    child = subprocess.Popen(
        argv,
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        raise AssertionError(f"child did not start: {line}{child.communicate()[1]}")
    return child


def _file_messages(folder: Path) -> list[str]:
    messages = []
    for path in folder.glob("run_id=*/metadata.txt"):
        with path.open("rb") as handle:
            messages += [json.loads(line)["message"] for line in handle]
    return messages


def _sqlite_messages(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT message FROM traces")]


def _stored(cwd: Path, store: str) -> list[str]:
    if store == "file":
        return _file_messages(cwd / "logs" / "files")
    return _sqlite_messages(cwd / "logs" / "flowtrail.db")


# ---------------------------------------------------------------------- point 1
@pytest.mark.parametrize("store", ["file", "sqlite"])
@pytest.mark.parametrize(
    "case",
    ["fork", "pool", "pool-maxtasks", "pool-with", "executor", "os.fork", "forkserver", "spawn"],
)
def test_children_deliver_every_record_without_flush(tmp_path: Path, store: str, case: str):
    """4 children x 2,500 records, none flushed: every record is stored exactly once,
    whichever way multiprocessing (or os.fork) starts and ends the children."""
    (tmp_path / "lifecycle_work.py").write_text(WORK_MODULE)
    argv, env = _python(PARENT, None, store, case, str(CHILDREN), str(PER_CHILD))
    result = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "done" in result.stdout, result.stderr
    messages = _stored(tmp_path, store)
    expected = {f"child {i} record {k}" for i in range(CHILDREN) for k in range(PER_CHILD)}
    assert len(messages) == CHILDREN * PER_CHILD, (len(messages), result.stderr)
    assert set(messages) == expected


def test_fork_child_does_not_end_the_parents_open_span(tmp_path: Path):
    """A span open when ``os.fork()`` runs belongs to the parent: a child that unwinds
    through it (``sys.exit``) does not store it a second time."""
    result = run_python(
        r"""
import os, sys
from flowtrail import SQLiteHandler, Trace
trace = Trace(run_id="forked", handlers=[SQLiteHandler(path="logs/flowtrail.db")])
with trace.span("workflow", name="wf"):
    pid = os.fork()
    if pid == 0:
        with trace.span("stage", name="in-child"):
            trace.info("from the child")
        sys.exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    store = SQLiteHandler(path=str(tmp_path / "logs/flowtrail.db"))
    spans = store.find_trace_with_id("forked").spans
    assert sorted((s.name, s.status) for s in spans) == [("in-child", "ok"), ("wf", "ok")]


def test_with_block_open_at_fork(tmp_path: Path):
    """A ``with get_trace()`` block open when children are forked: the records it held
    are the parent's (a child does not write them again), the records children log
    through it are stored however they end (``sys.exit``, multiprocessing's
    ``os._exit``, a Pool's terminate), and no child marks the parent's run stopped."""
    result = run_python(
        r"""
import multiprocessing, os, sys
from flowtrail import SQLiteHandler, get_trace
with get_trace("block", handlers=[SQLiteHandler(path="logs/flowtrail.db")]) as trace:
    def log(message):
        trace.info(message)
    trace.info("parent before fork")
    pid = os.fork()
    if pid == 0:
        log("os.fork child")
        sys.exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    context = multiprocessing.get_context("fork")
    child = context.Process(target=log, args=("process child",))
    child.start()
    child.join()
    with context.Pool(2) as pool:
        pool.map(log, ["pool child 1", "pool child 2"])
    trace.info("parent after children")
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    messages = _sqlite_messages(tmp_path / "logs/flowtrail.db")
    # The os.fork child's sys.exit(0) leaves the block normally: nothing is recorded.
    assert "SystemExit: 0" not in messages
    assert sorted(messages) == [
        "os.fork child",
        "parent after children",
        "parent before fork",
        "pool child 1",
        "pool child 2",
        "process child",
    ]


# ---------------------------------------------------------------------- point 2
def test_fork_while_a_thread_writes_sqlite_never_hangs_the_child(tmp_path: Path):
    """A thread writes SQLite batches without pause while the main thread forks 10
    children that each open the same store, log and exit: every child finishes (a child
    copied while the worker was inside sqlite3 would hang in ``sqlite3.connect``)."""
    result = run_python(
        r"""
import os, signal, sys, threading, time
from flowtrail import SQLiteHandler, Trace
handler = SQLiteHandler(path="logs/flowtrail.db", batch_size=200)
parent = Trace(run_id="parent", handlers=[handler])
stop = threading.Event()
written = [0]
def writer():
    while not stop.is_set():
        parent.info(f"parent {written[0]}")
        written[0] += 1
thread = threading.Thread(target=writer)
thread.start()
time.sleep(0.3)
hung = 0
for i in range(10):
    pid = os.fork()
    if pid == 0:
        child = Trace(run_id=f"child-{i}", handlers=[handler])
        for k in range(100):
            child.info(f"child {i} record {k}")
        child.flush()
        os._exit(0)
    deadline = time.monotonic() + 8
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
stop.set()
thread.join()
parent.flush()
print(hung, written[0])
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    hung, written = map(int, result.stdout.split())
    assert hung == 0, f"{hung} of 10 children hung"
    messages = _sqlite_messages(tmp_path / "logs/flowtrail.db")
    assert len(messages) == len(set(messages)) == written + 10 * 100


# ---------------------------------------------------------------------- point 3
SIGTERM_CHILD = r"""
import os, signal, sys, time
from flowtrail import FileHandler, SQLiteHandler, Trace
if sys.argv[1:] == ["own-handler"]:
    def stop(signum, frame):
        with open("own-handler-called", "w") as handle:
            handle.write(signal.Signals(signum).name)
        os._exit(7)
    signal.signal(signal.SIGTERM, stop)
handlers = [FileHandler(path="logs/files"), SQLiteHandler(path="logs/flowtrail.db")]
trace = Trace(run_id="stopped", handlers=handlers, extras={"workflow_name": "wf"})
with trace.span("workflow", name="wf"):
    with trace.span("job", name="extract"):
        with trace.span("stage", name="load"):
            for k in range(1500):
                trace.info(f"record {k}")
            print("ready", flush=True)
            time.sleep(60)
"""


def interrupted_by(item: object) -> str | None:
    """The signal named by a span's or record's interrupted marker."""
    found = getattr(item, "attributes", None) or getattr(item, "metadata", None) or {}
    return found.get(INTERRUPTED)


def _stores(tmp_path: Path) -> list[FileHandler | SQLiteHandler]:
    return [
        FileHandler(path=str(tmp_path / "logs/files")),
        SQLiteHandler(path=str(tmp_path / "logs/flowtrail.db")),
    ]


def test_sigterm_ends_the_run_as_interrupted_and_dies_of_the_signal(tmp_path: Path):
    """docker stop: the child dies of SIGTERM as before, but the partial batch, a record
    that the run was stopped, and its three open spans (error, interrupted) are stored."""
    child = _start(SIGTERM_CHILD, tmp_path)
    os.kill(child.pid, signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGTERM, err
    for store in _stores(tmp_path):
        data = store.find_trace_with_id("stopped")
        logs = [m.message for m in data.meta if interrupted_by(m) is None]
        assert logs == [f"record {k}" for k in range(1500)], (store, len(logs))
        stopped = [m for m in data.meta if interrupted_by(m) == "SIGTERM"]
        assert [(m.message, m.level) for m in stopped] == [
            ("[WORKFLOW]: stopped by SIGTERM", "error")
        ]
        spans = {s.name: s for s in data.spans}
        assert sorted(spans) == ["extract", "load", "wf"]
        for span in spans.values():
            assert span.status == "error"
            assert span.attributes[INTERRUPTED] == "SIGTERM"
            assert span.status_message == "interrupted by SIGTERM"
        # The stopped record is inside the innermost span, which ends first.
        assert stopped[0].span_id == spans["load"].span_id
        assert spans["load"].parent_span_id == spans["extract"].span_id
    from flowtrail import lifecycle

    assert lifecycle.INTERRUPTED == INTERRUPTED
    assert lifecycle.interrupted_by(spans["load"]) == lifecycle.interrupted_by(stopped[0])


def test_sigterm_chains_the_programs_own_handler(tmp_path: Path):
    """A handler the program set before flowtrail still runs and decides the ending
    (here ``os._exit(7)``); flowtrail saves the queued records before calling it."""
    child = _start(SIGTERM_CHILD.replace("sys.argv[1:]", '["own-handler"]'), tmp_path)
    os.kill(child.pid, signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 7, err
    assert (tmp_path / "own-handler-called").read_text() == "SIGTERM"
    assert _stored(tmp_path, "sqlite") == [f"record {k}" for k in range(1500)]
    assert sorted(_stored(tmp_path, "file")) == sorted(f"record {k}" for k in range(1500))


@pytest.mark.parametrize("how", ["environment", "keyword"])
def test_handle_signals_false_leaves_sigterm_alone(tmp_path: Path, how: str):
    """``handle_signals=false``: SIGTERM keeps its default disposition."""
    code = SIGTERM_CHILD.replace(
        'print("ready", flush=True)',
        'assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL; print("ready", flush=True)',
    )
    env = None
    if how == "environment":
        env = {"FLOWTRAIL_HANDLE_SIGNALS": "false"}
    else:
        code = code.replace('extras={"workflow_name": "wf"}', "handle_signals=False")
    child = _start(code, tmp_path, env)
    os.kill(child.pid, signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGTERM, err
    db = tmp_path / "logs/flowtrail.db"
    stored = _sqlite_messages(db) if db.exists() else []
    assert not any("stopped by" in m for m in stored)


def test_sigterm_in_a_child_without_trace_on_its_main_thread_is_default(tmp_path: Path):
    """A trace made on another thread cannot install a handler (signal.signal works on
    the main thread only); the next trace made on the main thread does."""
    result = run_python(
        r"""
import signal, threading
from flowtrail import MemoryHandler, Trace
thread = threading.Thread(target=lambda: Trace(run_id="t", handlers=[MemoryHandler()]))
thread.start(); thread.join()
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
Trace(run_id="m", handlers=[MemoryHandler()])
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_sigint_unwinds_spans_as_error(tmp_path: Path):
    """SIGINT is Python's KeyboardInterrupt: the spans it leaves end as ``error`` and
    every record is stored (a check: this already worked before the lifecycle module)."""
    child = _start(SIGTERM_CHILD, tmp_path)
    os.kill(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode in (-signal.SIGINT, 1), err
    data = SQLiteHandler(path=str(tmp_path / "logs/flowtrail.db")).find_trace_with_id("stopped")
    assert len([m for m in data.meta if m.message.startswith("record ")]) == 1500
    assert sorted((s.name, s.status) for s in data.spans) == [
        ("extract", "error"),
        ("load", "error"),
        ("wf", "error"),
    ]
    assert all(interrupted_by(s) is None for s in data.spans)


def test_sigterm_reaches_a_main_thread_blocked_where_the_signal_did_not_wake_it(
    tmp_path: Path,
):
    """The race of a pool worker that ``Pool.terminate`` stops: the signal is taken
    before the main thread blocks (here: by another thread), so the blocking call never
    returns to run the Python handler. flowtrail sends it again to the main thread."""
    result = run_python(
        r"""
import signal, threading, time
from flowtrail import SQLiteHandler, get_trace
trace = get_trace("blocked", handlers=[SQLiteHandler(path="logs/flowtrail.db")])
for i in range(100):
    trace.info(f"m{i}")

def other():
    time.sleep(0.5)
    # Lands on this thread: the C handler marks it pending, the main thread sleeps on.
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    time.sleep(60)

threading.Thread(target=other, daemon=True).start()
lock = threading.Lock()
lock.acquire()
lock.acquire()  # blocks for ever: only a signal sent to this thread interrupts it
""",
        tmp_path,
        timeout=60,
    )
    assert result.returncode == -signal.SIGTERM, result.stderr
    messages = _sqlite_messages(tmp_path / "logs/flowtrail.db")
    assert [f"m{i}" for i in range(100)] == [m for m in messages if m.startswith("m")]
