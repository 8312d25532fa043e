"""What happens to queued records when the process forks, ends as a multiprocessing
child, or is told to stop by ``SIGTERM``.

Fork
    ``os.fork()`` is made while this process holds every pipeline's locks (`before`
    hook), so no thread is inside an exporter when the child is copied: a child never
    inherits SQLite's internal mutexes held by the parent's worker, which would hang its
    first ``sqlite3.connect`` for ever. The wait for the locks is bounded
    (`FORK_LOCK_TIMEOUT`): a store that hangs longer cannot block fork, which then
    proceeds without the locks it could not get. The child starts with empty queues and
    new locks (`flowtrail.pipeline`).

multiprocessing children
    multiprocessing ends the children it forks (``Process``, ``Pool`` and
    ``ProcessPoolExecutor`` workers, the ``fork`` and ``forkserver`` start methods) with
    ``os._exit``, which skips ``atexit``. Its own exit path runs its finalizers first, so
    flowtrail registers the flush there (`multiprocessing.util.Finalize`), in every child,
    without importing multiprocessing itself: only when the program already has.
    ``spawn`` children are new interpreters that exit normally. A plain ``os.fork()``
    child that returns or calls ``sys.exit`` flushes at exit like any process; one that
    ends with ``os._exit`` skips every exit handler, so call ``flowtrail.flush_all()`` (or
    ``trace.flush()``) before it.

SIGTERM
    With the default disposition (docker stop, Kubernetes, systemd, Airflow), flowtrail's
    handler runs the front's ``on_terminate`` callbacks (they write a record that the run
    was stopped and end the open spans as ``error`` with the `INTERRUPTED` marker),
    flushes every pipeline within ``exit_timeout``, spools the rest, then restores the
    default disposition and sends the signal again, so the process dies of it as it would
    have (status -15, shell 143). A handler the program installed before flowtrail is
    chained, never replaced: flowtrail flushes what is queued, then calls it, and the
    program decides what happens (flowtrail ends no span: the run may go on). A handler
    installed after flowtrail's replaces it (the program's choice). ``SIG_IGN`` and
    handlers set outside Python are left alone. The ``handle_signals`` setting (on by
    default) decides whether the first trace installs the handler; ``signal.signal``
    works only on the main thread, so a trace made elsewhere leaves it to the next trace
    made on the main thread. ``SIGINT`` is Python's ``KeyboardInterrupt``, which unwinds
    spans (as ``error``) and exits normally.

    A Python signal handler runs only between bytecodes of the main thread: a signal that
    lands just before the main thread blocks in a system call that does not wake up for
    it (a multiprocessing pool worker waiting for its next task when ``Pool.terminate``
    sends SIGTERM) would leave its handler pending for ever, and the process hanging. So
    flowtrail also takes the interpreter's signal wake-up file descriptor when nobody
    else has (``signal.set_wakeup_fd``; asyncio's own replaces it, which is fine since an
    event loop does not block like that): a small thread of flowtrail's reads it, and
    when a SIGTERM is not handled within 0.1 s it sends it again to the main thread
    itself (``signal.pthread_kill``), which interrupts the blocking call.

The front registers its callbacks here (`on_terminate`); this module never imports it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

import flowtrail.pipeline as pipeline

#: The key that marks a record or span as cut short by a signal; its value is the
#: signal's name (``"SIGTERM"``). A span's attribute and a stopped-run record's metadata
#: carry it; readers decide a run's status from it (see `interrupted_by`).
INTERRUPTED: Final = "interrupted"

#: Seconds ``os.fork()`` waits for the pipelines' locks before it forks without them.
FORK_LOCK_TIMEOUT: Final = 5.0

#: Priority of the flush among multiprocessing's exit finalizers (higher runs first;
#: those >= 0 run before the child waits for its own children).
_MP_EXIT_PRIORITY: Final = 100

_terminate_callbacks: list[Callable[[str, FrameType | None], None]] = []
_fork_child_callbacks: list[Callable[[], None]] = []
_exit_callbacks: list[Callable[[], None]] = []
_previous: dict[int, Any] = {}
_state = {"installed": False, "stopping": False, "exiting": False, "mp_watched": False}
#: How many times `_on_signal` has started (the wake-up watcher compares it).
_calls = [0]
#: The read end of the wake-up pipe flowtrail's watcher reads, if it has one.
_wakeup: dict[str, int] = {}
_held: list[pipeline.Lockable] = []
#: Signals that arrived while the exit path was flushing: the process dies of them after.
_deferred: list[int] = []


def interrupted_by(item: Any) -> str | None:
    """The signal that cut a span or record short (``"SIGTERM"``), or None."""
    attributes = getattr(item, "attributes", None)
    if isinstance(attributes, dict) and INTERRUPTED in attributes:
        return str(attributes[INTERRUPTED])
    metadata = getattr(item, "metadata", None)
    if isinstance(metadata, dict) and INTERRUPTED in metadata:
        return str(metadata[INTERRUPTED])
    return None


def on_terminate(callback: Callable[[str, FrameType | None], None]) -> None:
    """Call ``callback(signal_name, frame)`` when a handled signal stops the process,
    before the pipelines are flushed (the front ends its open spans there)."""
    if callback not in _terminate_callbacks:
        _terminate_callbacks.append(callback)


def on_fork_child(callback: Callable[[], None]) -> None:
    """Call ``callback()`` in a forked child, after the pipelines were made new."""
    if callback not in _fork_child_callbacks:
        _fork_child_callbacks.append(callback)


def on_child_exit(callback: Callable[[], None]) -> None:
    """Call ``callback()`` when a multiprocessing child ends, before its flush (its
    ``with`` blocks never end: the child ends with ``os._exit``)."""
    if callback not in _exit_callbacks:
        _exit_callbacks.append(callback)


def _run(callbacks: list[Callable[..., None]], *args: Any) -> None:
    for callback in list(callbacks):
        try:
            callback(*args)
        except Exception:
            pass


# ---------------------------------------------------------------------- SIGTERM
def install_signal_handlers() -> None:
    """Handle ``SIGTERM`` as the module docstring says, once per process. Cheap when
    already done; on a thread other than the main one it does nothing (yet)."""
    if _state["installed"] or threading.current_thread() is not threading.main_thread():
        return
    _state["installed"] = True
    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_DFL or (callable(previous) and previous is not _on_signal):
            _previous[signal.SIGTERM] = previous
            signal.signal(signal.SIGTERM, _on_signal)
    except (ValueError, OSError):  # not the main interpreter: signals are not ours
        return
    if signal.getsignal(signal.SIGTERM) is _on_signal:
        _watch_wakeup()


def _watch_wakeup() -> None:
    """Take the signal wake-up descriptor if nobody has it, and read it on a thread of
    flowtrail's (see the module docstring). Main thread only."""
    if _wakeup:
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        old = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except (ValueError, OSError):
        old = None
    if old != -1:  # somebody else's (or none possible): leave it as it was
        if old is not None:
            signal.set_wakeup_fd(old)
        os.close(read_end)
        os.close(write_end)
        return
    _wakeup.update(read=read_end, write=write_end)
    pipeline.start_thread(lambda: _read_wakeups(read_end), "flowtrail:signals")


def _read_wakeups(read_end: int) -> None:
    main = threading.main_thread().ident
    if main is None:
        return
    while True:
        try:
            data = os.read(read_end, 64)
        except OSError:
            return
        if not data or _wakeup.get("read") != read_end:
            return  # closed, or a forked child made its own
        if signal.SIGTERM not in data:
            continue
        seen = _calls[0]
        for _ in range(50):
            time.sleep(0.1)
            if _calls[0] != seen:
                break
            # The handler is still pending: the main thread is blocked in a call that
            # the signal did not interrupt. A signal sent to that thread does.
            try:
                signal.pthread_kill(main, signal.SIGTERM)
            except (OSError, ValueError):
                break


def _forget_wakeup_after_fork() -> None:
    """In a forked child: the pipe is the parent's (its watcher would read the child's
    signals); take a new one when the child makes its first trace."""
    read_end = _wakeup.pop("read", None)
    write_end = _wakeup.pop("write", None)
    if read_end is None or write_end is None:
        return
    try:
        old = signal.set_wakeup_fd(-1)
        if old != write_end:  # not ours any more: leave the program's
            signal.set_wakeup_fd(old)
    except (ValueError, OSError):
        pass
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass
    _state["installed"] = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _calls[0] += 1
    previous = _previous.get(signum, signal.SIG_DFL)
    chained = callable(previous)
    if _state["exiting"] and not chained:
        # The exit path is flushing already (this signal interrupted it): let it finish,
        # then die of the signal.
        _deferred.append(signum)
        return
    if _state["stopping"]:
        # A second signal while the first is handled (it interrupted the wait below):
        # the first dies of it when its flush is done, within exit_timeout.
        if chained:
            previous(signum, frame)
        return
    _state["stopping"] = True
    if chained:
        # The program's own handler decides what happens; first save what is queued.
        try:
            _off_thread(lambda: pipeline.flush_all(pipeline._exit_timeout[0]))
        finally:
            _state["stopping"] = False
        previous(signum, frame)
        return
    name = signal.Signals(signum).name

    def stop() -> None:
        _run(_terminate_callbacks, name, frame)
        pipeline._at_exit()  # within exit_timeout; the rest is spooled

    try:
        _off_thread(stop)
    finally:
        _die(signum)


def _off_thread(work: Callable[[], Any]) -> None:
    """Run ``work`` on a new thread and wait for it, at most ``exit_timeout`` and a
    second: the signal may have interrupted this thread inside a lock the work needs (in
    a pipeline, an `threading.Event`), which would deadlock it here."""
    done = threading.Event()

    def run() -> None:
        try:
            work()
        except Exception:
            pass
        finally:
            done.set()

    try:
        pipeline.start_thread(run, "flowtrail:signal")
    except RuntimeError:  # no new threads at interpreter exit
        run()
        return
    done.wait(pipeline._exit_timeout[0] + 1.0)


def _die(signum: int) -> None:
    """End the process by ``signum`` with its default action, as if never handled."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1.0)  # the default action ends the process before this returns
    os._exit(128 + signum)


# ---------------------------------------------------------------------- fork
def _before_fork() -> None:
    _watch_multiprocessing()
    deadline = time.monotonic() + FORK_LOCK_TIMEOUT
    for lock in pipeline.fork_locks():
        # Past the deadline the rest are only tried: a hung store must not block fork.
        if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            _held.append(lock)


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().release()


def _after_fork_in_child() -> None:
    # The child's copies of the held locks are dropped: the pipelines made new ones.
    _held.clear()
    _forget_wakeup_after_fork()
    _deferred.clear()
    _state["stopping"] = _state["exiting"] = False
    _run(_fork_child_callbacks)


# ---------------------------------------------------------------------- multiprocessing
class _Anchor:
    """Keeps the after-fork registration of multiprocessing alive (a weak value there)."""


_ANCHOR = _Anchor()


def _watch_multiprocessing() -> None:
    """Once multiprocessing is loaded: flush on its exit path, in this process and in every
    child it starts (its ``_bootstrap`` clears the finalizers a forked child inherits,
    then runs the after-fork callbacks, where the flush is registered again)."""
    if _state["mp_watched"]:
        return
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    _state["mp_watched"] = True
    util.register_after_fork(_ANCHOR, _in_multiprocessing_child)
    _in_multiprocessing_child(_ANCHOR)


def _in_multiprocessing_child(_anchor: Any) -> None:
    util = sys.modules["multiprocessing.util"]
    util.Finalize(None, _flush_at_exit, exitpriority=_MP_EXIT_PRIORITY)


def _flush_at_exit() -> None:
    _state["exiting"] = True
    try:
        _run(_exit_callbacks)
        pipeline._at_exit()
    finally:
        _state["exiting"] = False
        if _deferred:
            _die(_deferred[0])


pipeline.BENIGN_HANDLERS.add(_on_signal)

os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
_watch_multiprocessing()
