"""The batch worker shared by every storing or remote handler.

One `Pipeline` per distinct handler configuration per process. The caller's side of
`submit` is a deque append (no lock, no wake-up unless a batch is full); a daemon worker
takes batches by count, bytes or time and hands each to the exporter in one call. A batch
that fails is retried with backoff and jitter within a deadline on the worker, then
written to the spool; the spool is replayed later. A full queue spills to the spool by
default (``overflow="spill"``), or drops and counts (``"drop"``), or makes the caller wait
(``"block"``).

For local stores (file, SQLite) two more rules avoid the cost of two threads trading the
interpreter lock (a thread that gives it up for I/O waits up to the 5 ms switch interval
to get it back from a busy one): when a full batch waits and the worker is idle, the
caller writes it itself; when the queue is full, the caller waits for the store
(``overflow="help"``) rather than spill. Remote stores never do either.

`flush` puts a marker in the queue and waits for the worker to pass it, so it returns when
every record handed in before it is written or spooled. Interpreter exit flushes every
pipeline within ``exit_timeout`` and spools what is left; a forked child starts with empty
queues and new locks, and starts its own worker on first use.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.getsignal without its enum
import atexit
import os
import random
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat, starmap
from typing import Any, Literal, Protocol, cast

from flowtrail.records import sanitized
from flowtrail.spool import Spool, SpoolFull, kind_of


class PartialExport(Exception):
    """Raised by an exporter that wrote part of a batch: ``failed`` are the records it
    could not write, ``cause`` why. The pipeline retries or spools only those."""

    def __init__(self, failed: Sequence[Any], cause: BaseException) -> None:
        super().__init__(f"{len(failed)} record(s) not written: {cause}")
        self.failed = failed
        self.cause = cause


class Exporter(Protocol):
    """The worker side of a handler: receives finished, read-only batches."""

    def export(self, batch: Sequence[Any]) -> None:
        """Write or send the batch; raise on failure."""

    def retryable(self, exc: BaseException) -> bool:
        """Whether a failure may succeed if the same batch is tried again."""

    def sync(self) -> None:
        """Make what was exported durable (a flush reached the worker)."""

    def close_exporter(self) -> None:
        """Release files, connections and clients."""

    def after_fork(self) -> None:
        """Forget the parent's files, connections and locks."""


class NowaitExporter(Exporter, Protocol):
    """An exporter of a local store that a caller's thread may write through."""

    def export_nowait(self, batch: Sequence[Any]) -> None:
        """Write the batch at once: one attempt, no retries, no waiting for a lock."""


@dataclass(frozen=True)
class PipelineOptions:
    """How a pipeline batches, retries and overflows."""

    batch_size: int = 1000
    max_batch_bytes: int = 16 * 1024 * 1024
    #: The most records one export takes from a backlog (None: 16 batches). Remote
    #: handlers raise it to what one request of their service may carry.
    max_export_batch: int | None = None
    flush_interval: float = 0.5
    queue_size: int = 100_000
    #: Bytes of messages the queue may hold (counted for messages over 4 KiB; smaller
    #: records are bounded by ``queue_size``). Past it the ``overflow`` policy applies.
    queue_bytes: int = 64 * 1024 * 1024
    overflow: Literal["help", "spill", "drop", "block"] = "spill"
    #: A full batch may be written by the caller when the worker is idle (local stores
    #: whose exporter has ``export_nowait``).
    caller_runs: bool = False
    spool_dir: str = "./logs/spool"
    max_retries: int = 5
    retry_backoff: float = 0.1
    retry_max_backoff: float = 5.0
    retry_deadline: float = 30.0
    replay_interval: float = 30.0
    #: Spool folders of older versions for the same destination: their files are moved
    #: into ``spool_dir`` and replayed.
    legacy_spool_dirs: tuple[str, ...] = ()
    #: Written as the spool folder's ``destination.json`` when it is first used.
    spool_manifest: bytes | None = None
    #: The most bytes the spool folder may hold (None: unbounded); past it records are
    #: counted and reported as lost.
    spool_max_bytes: int | None = None


@dataclass
class PipelineStats:
    """Counters of one pipeline (per process)."""

    exported: int = 0
    spooled: int = 0
    replayed: int = 0
    #: Records lost: dropped by ``overflow="drop"``, not spoolable, or undecodable in a
    #: damaged spool file.
    dropped: int = 0
    #: Records that can never be written as they are, kept in ``.failed`` spool files.
    set_aside: int = 0
    #: Records written only after unencodable text or values in them were replaced.
    sanitised: int = 0
    failed_batches: int = 0
    retries: int = 0
    last_error: str | None = None
    errors: dict[str, int] = field(default_factory=dict)


def _message_of(item: Any) -> str:
    return getattr(item, "message", "")


#: Messages longer than this count against ``queue_bytes``.
_BIG_MESSAGE = 4096


def _big_bytes(items: Sequence[Any]) -> int:
    """Bytes of the messages in ``items`` that count against ``queue_bytes``."""
    return sum(size for size in map(len, map(_message_of, items)) if size > _BIG_MESSAGE)


class _Marker:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


#: Signals flowtrail's threads never take: a process-directed signal (SIGTERM from a
#: scheduler, a stage's SIGALRM) must reach a thread of the program, or a main thread
#: blocked in a system call would never see its Python handler run.
_BLOCKED_IN_THREADS = frozenset(signal.valid_signals()) - {
    signal.SIGKILL,
    signal.SIGSTOP,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGABRT,
}


def start_thread(target: Callable[[], Any], name: str) -> threading.Thread:
    """Start a daemon thread of flowtrail's, with every asynchronous signal blocked in it
    (it inherits the mask from this thread, which blocks them only while it starts it)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_IN_THREADS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


class Lockable(Protocol):
    """A lock (`threading.Lock` or `threading.RLock`)."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class _Waker:
    """Wakes the worker. ``set`` is one release of a plain lock, so it is safe from a
    signal handler that interrupted the same thread inside ``set`` (`threading.Event`
    takes a lock that is not re-entrant there, which deadlocks)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def wait(self, timeout: float) -> bool:
        """Wait until set or ``timeout``; a wake-up is consumed."""
        return self._lock.acquire(timeout=timeout)

    def clear(self) -> None:
        self._lock.acquire(blocking=False)


#: Signal handlers known never to raise (flowtrail's own SIGTERM handler registers
#: itself here). `signal.default_int_handler` (``KeyboardInterrupt``) is accepted too.
BENIGN_HANDLERS: set[Any] = {signal.default_int_handler}


#: The signal numbers, and the C function reading a handler without making an enum of it
#: (this runs before each batch a caller writes).
_SIGNALS = tuple(int(number) for number in signal.valid_signals())
_getsignal = _signal.getsignal


def raising_handlers_installed() -> bool:
    """Whether a Python signal handler that may raise is installed. A caller's thread
    with one does not write batches itself: an exception raised between a write and the
    note that it was done would make the batch look unwritten (and written twice). The
    worker thread never runs signal handlers."""
    # No try here: a TimeoutError a signal handler raises in this loop is the caller's.
    for number in _SIGNALS:
        handler = _getsignal(number)
        if callable(handler) and handler not in BENIGN_HANDLERS:
            return True
    return False


def _signal_handler_codes() -> set[Any]:
    codes = set()
    for number in _SIGNALS:
        handler = _getsignal(number)
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            codes.add(code)
    return codes


def is_store_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised while a store was written on the caller's thread, is the
    store's own failure. A `KeyboardInterrupt`, `SystemExit` or an exception raised by a
    signal handler that interrupted the write (a stage's ``SIGALRM`` timeout) is not:
    it belongs to the caller and must reach it."""
    if not isinstance(exc, Exception):
        return False
    codes = _signal_handler_codes()
    if not codes:
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return False
        tb = tb.tb_next
    return True


_reported: set[tuple[str, str, str]] = set()
# Re-entrant: a signal handler that logs may interrupt this thread while it holds it.
_report_lock = threading.RLock()

#: What became of records a handler could not write, mildest first. Each is reported once
#: per handler and error type, so a worse outcome of an error already reported (records
#: lost because the spool failed too) is reported again.
OUTCOMES = ("unsynced", "sanitised", "spooled", "set aside", "damaged", "lost")


def report_once(
    name: str, exc: BaseException, count: int, where: str, outcome: str = "spooled"
) -> None:
    """Tell stderr once per handler, error type and outcome (see `OUTCOMES`) that records
    could not be written as they were."""
    kind = type(exc).__name__
    with _report_lock:
        if (name, kind, outcome) in _reported:
            return
        _reported.add((name, kind, outcome))
    try:
        sys.stderr.write(
            f"flowtrail: handler {name} could not write {count} record(s) "
            f"({kind}: {exc}); {where}. Further failures of this kind are counted in "
            f"its stats, not printed.\n"
        )
    except Exception:
        pass


def retry_delay(options: PipelineOptions, attempt: int, asked: Any = None) -> float:
    """Seconds to wait before retry number ``attempt`` (from 1): exponential backoff with
    jitter, or longer when the service said when to come back (HTTP ``Retry-After``,
    ``asked`` seconds)."""
    delay = min(options.retry_max_backoff, options.retry_backoff * 2 ** (attempt - 1))
    delay *= 0.5 + random.random()
    if isinstance(asked, (int, float)) and asked > delay:
        delay = float(asked)
    return delay


def _reason(exc: BaseException) -> str:
    """Why records were not written, for the spool's notes (secrets are masked there)."""
    cause = _cause(exc)
    return f"{type(cause).__name__}: {cause}"


def _cause(exc: BaseException) -> BaseException:
    """The failure behind a `PartialExport` (the exception itself otherwise)."""
    while isinstance(exc, PartialExport):
        exc = exc.cause
    return exc


class Pipeline:
    """A bounded queue and one background worker in front of an exporter."""

    def __init__(
        self,
        name: str,
        exporter: Exporter,
        options: PipelineOptions,
        *,
        strict: bool = False,
    ) -> None:
        self.name = name
        self.exporter = exporter
        self.options = options
        self.strict = strict
        self.stats = PipelineStats()
        self.spool = Spool(options.spool_dir, options.spool_manifest, options.spool_max_bytes)
        # Read on every submit: plain attributes, and a strict pipeline's limit of 0
        # sends every record down the slow path.
        self._limit = 0 if strict else options.queue_size
        self._batch_size = options.batch_size
        self._caller_runs = options.caller_runs and hasattr(exporter, "export_nowait")
        self._max_bytes = 0 if strict else options.queue_bytes
        #: ``Retry-After`` of the last replay the service refused for now.
        self._retry_after: float | None = None
        self._init_runtime()
        _all_pipelines.add(self)

    def _init_runtime(self) -> None:
        self._queue: deque[Any] = deque()
        self._wake = _Waker()
        self._stop = threading.Event()
        # Re-entrant locks for their owner test: a lock taken without waiting is released
        # in ``finally`` if this thread owns it, so an exception a signal handler raises
        # right after the acquire cannot leave it held; and a signal handler that logs
        # while this thread writes sees the lock is its own and leaves the store alone.
        self._export_lock = threading.RLock()
        self._drain_lock = threading.RLock()
        self._start_lock = threading.RLock()
        self._worker: threading.Thread | None = None
        self._pid = os.getpid()
        self._next_replay = 0.0
        #: Bytes of big messages in the queue (see ``queue_bytes``).
        self._queued_bytes = 0
        self._bytes_lock = threading.RLock()
        #: Records taken from the queue and not yet written or spooled.
        self._inflight: Sequence[Any] | None = None
        #: ``stats.exported`` when a write on the caller's thread failed: callers leave
        #: the store to the worker until it has made progress.
        self._caller_paused_at = -1

    # ------------------------------------------------------------------ caller side
    def submit(self, record: Any) -> None:
        """Hand one record in. Never blocks (unless ``overflow="block"``), never raises
        (unless ``strict``)."""
        queue = self._queue
        if len(queue) >= self._limit:
            self._submit_slow(record)
            return
        message = getattr(record, "message", None)  # a span has none
        if (
            message is not None
            and len(message) > _BIG_MESSAGE
            and not self._count_bytes(len(message))
        ):
            self._submit_slow(record)
            return
        queue.append(record)
        if self._worker is None:
            self._start()
        if len(queue) % self._batch_size == 0:
            self._batch_ready()

    def _count_bytes(self, size: int) -> bool:
        """Count a big message against ``queue_bytes``; False if it does not fit."""
        with self._bytes_lock:
            if self._queued_bytes + size > self._max_bytes and self._queued_bytes:
                return False
            self._queued_bytes += size
            return True

    def _uncount_bytes(self, items: Sequence[Any]) -> None:
        size = _big_bytes(items)
        if size:
            with self._bytes_lock:
                self._queued_bytes = max(0, self._queued_bytes - size)

    def _batch_ready(self) -> None:
        """A batch is waiting. For a local store that can write without waiting, the
        caller writes it now if the worker is not already busy: under a burst this avoids
        two threads trading the interpreter lock, the dearest part of a write. Otherwise
        the worker is woken."""
        if not (self._caller_runs and self._write_on_caller()):
            self._wake.set()

    def _submit_slow(self, record: Any) -> None:
        if self.strict:
            self._export_strict([record])
        else:
            self._overflow(record)

    def submit_many(self, records: Sequence[Any]) -> None:
        """Hand several records in, in order."""
        if self.strict:
            self._export_strict(list(records))
            return
        for record in records:
            self.submit(record)
        self._wake.set()

    def _export_strict(self, batch: list[Any]) -> None:
        try:
            with self._export_lock:
                self.exporter.export(batch)
        except PartialExport as partial:
            self.stats.exported += len(batch) - len(partial.failed)
            raise partial.cause from partial
        self.stats.exported += len(batch)

    def _overflow(self, record: Any) -> None:
        policy = self.options.overflow
        if policy == "help" and self._write_on_caller():
            self._append_counted(record)
            return
        if policy == "drop":
            self.stats.dropped += 1
            if self.stats.dropped == 1:
                report_once(
                    self.name,
                    OverflowError(f"queue full ({self.options.queue_size} records)"),
                    1,
                    "records are dropped while the queue is full (overflow='drop')",
                    outcome="lost",
                )
            return
        if policy == "block":
            size = len(_message_of(record))
            while len(self._queue) >= self.options.queue_size or (
                size > _BIG_MESSAGE and not self._count_bytes(size)
            ):
                self._wake.set()
                time.sleep(0.001)
            self._queue.append(record)
            return
        try:
            self.spool.append(record)
            self.stats.spooled += 1
        except Exception as exc:
            if not is_store_failure(exc):
                raise  # a signal handler's exception: the caller's, not the disk's
            # The disk itself failed: nothing left but to count.
            self.stats.dropped += 1
            report_once(self.name, exc, 1, "the record could not be spooled either", outcome="lost")
        self._wake.set()

    def _append_counted(self, record: Any) -> None:
        """Queue a record past the limits (after the caller made room by writing a
        batch), counting its bytes."""
        size = len(_message_of(record))
        if size > _BIG_MESSAGE:
            with self._bytes_lock:
                self._queued_bytes += size
        self._queue.append(record)

    def _write_on_caller(self) -> bool:
        """The caller writes the oldest batch itself (local stores only): one attempt,
        no retries, no waiting for a lock. False if it did not (the worker is writing,
        the store failed, or a failure on a caller's thread has not been followed by
        progress of the worker since); the caller then leaves the store to the worker.

        A store failure puts the batch back at the head of the queue for the worker. Any
        other exception (a `KeyboardInterrupt`, or one raised by a signal handler in the
        middle of the write) also puts back what was not written, then reaches the
        caller."""
        drain, export = self._drain_lock, self._export_lock
        if (
            not self._caller_runs
            or self._caller_paused_at == self.stats.exported
            or drain._is_owned()  # type: ignore[attr-defined]
            or raising_handlers_installed()
        ):
            return False
        try:
            if not drain.acquire(blocking=False) or not export.acquire(blocking=False):
                return False
            return self._caller_export()
        finally:
            if export._is_owned():  # type: ignore[attr-defined]
                export.release()
            if drain._is_owned():  # type: ignore[attr-defined]
                drain.release()

    def _caller_export(self) -> bool:
        self._recover_inflight()
        batch: list[Any] = []
        try:
            batch = self._take(self.options.batch_size)
            if not batch:
                return False  # a flush marker is next: the worker handles it
            # Reached only when ``_caller_runs``: the exporter has ``export_nowait``.
            cast(NowaitExporter, self.exporter).export_nowait(batch)
        except BaseException as exc:
            # First put back what was not written, with as little work as possible
            # before it: another signal may land in this block too.
            if type(exc) is PartialExport:
                self._inflight = exc.failed
            self._recover_inflight()
            failed: Sequence[Any] = batch
            cause: BaseException = exc
            if isinstance(exc, PartialExport):  # what was written stays written
                failed, cause = exc.failed, exc.cause
            self.stats.exported += len(batch) - len(failed)
            self._wake.set()
            if is_store_failure(cause):
                self._caller_paused_at = self.stats.exported
                return False
            if cause is exc:
                raise
            raise cause from exc
        self._inflight = None
        self.stats.exported += len(batch)
        if self._queued_bytes:  # only big messages are counted: most batches have none
            self._uncount_bytes(batch)
        return True

    def _take(self, limit: int) -> list[Any]:
        """Take up to ``limit`` records from the head of the queue, stopping at a flush
        marker. They stay reachable as ``_inflight`` until written or spooled: the list
        is filled by one C call, so a signal handler's exception cannot land between
        taking a record and keeping it."""
        queue = self._queue
        count = min(limit, len(queue))
        kinds = list(map(type, islice(queue, count)))
        if _Marker in kinds:
            count = kinds.index(_Marker)
        batch: list[Any] = []
        self._inflight = batch
        batch.extend(starmap(queue.popleft, repeat((), count)))
        return batch

    def _recover_inflight(self) -> None:
        """Put records a write took and did not write back at the head of the queue, in
        order (called with the drain lock held, so nothing else is in flight). Safe to
        repeat: records already put back are not put back twice."""
        inflight = self._inflight
        if inflight:
            queue = self._queue
            if not (queue and queue[0] is inflight[0]):
                queue.extendleft(reversed(inflight))
        self._inflight = None

    def _start(self) -> None:
        # Not waiting for the lock: the thread holding it (maybe this one, interrupted
        # by a signal handler that logs) is starting the worker. Released by owner, as in
        # `_write_on_caller`.
        lock = self._start_lock
        if lock._is_owned():  # type: ignore[attr-defined]
            return
        try:
            if not lock.acquire(blocking=False):
                return
            if self._worker is not None and self._worker.is_alive():
                return
            self._stop.clear()
            self._worker = start_thread(self._run, f"flowtrail:{self.name}")
        finally:
            if lock._is_owned():  # type: ignore[attr-defined]
                lock.release()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every record handed in before this call is written or spooled.
        Returns False if ``timeout`` passed first. During interpreter exit no flush waits
        past the exit deadline (``exit_timeout``)."""
        exit_deadline = _exit_deadline[0]
        if exit_deadline is not None:
            left = max(0.0, exit_deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        worker = self._worker
        if self.strict or (not self._queue and (worker is None or not worker.is_alive())):
            return True
        marker = _Marker()
        self._queue.append(marker)
        if worker is None or not worker.is_alive():
            try:
                self._start()
            except RuntimeError:
                # No new threads at interpreter shutdown, and writing on this thread
                # could block past any deadline: the spool keeps them for the next run.
                self._spool_queued(TimeoutError("no worker at interpreter shutdown"))
                return True
        self._wake.set()
        return marker.event.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush, then stop the worker, all within ``timeout``. The pipeline starts
        again on the next submit. If the store did not take everything in time, what is
        still queued goes to the spool (a batch the store is busy with stays with the
        worker, which spools it if the store fails) and False is returned."""
        deadline = None if timeout is None else time.monotonic() + timeout
        exit_deadline = _exit_deadline[0]
        if exit_deadline is not None:  # at exit (a handler closed by logging.shutdown)
            deadline = exit_deadline if deadline is None else min(deadline, exit_deadline)
        done = self.flush(timeout)
        worker = self._worker
        self._stop.set()
        self._wake.set()
        if not done:
            self._spool_queued(TimeoutError(f"close({timeout}) deadline passed"))
        if worker is not None:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if done and not self._queue:
            self._close_exporter(wait=True)
        return done

    def _spool_queued(self, why: BaseException, inflight: bool = False) -> None:
        """Move every queued record (and, with ``inflight``, the batch the worker is
        stuck on) to the spool, and release every flush waiting on them."""
        leftovers: list[Any] = []
        if inflight and self._inflight:
            leftovers.extend(self._inflight)
            self._inflight = None
        queue = self._queue
        while queue:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if isinstance(item, _Marker):
                item.event.set()
            else:
                leftovers.append(item)
        if leftovers:
            self._uncount_bytes(leftovers)
            self._spool_batch(leftovers, why)

    def _close_exporter(self, wait: bool = False) -> None:
        # At exit the worker may be stuck in the store holding the lock: never wait then.
        lock = self._export_lock
        try:
            if lock.acquire(timeout=1.0 if wait else 0.0):
                self.exporter.close_exporter()
        except Exception:
            pass
        finally:
            if lock._is_owned():  # type: ignore[attr-defined]
                lock.release()

    def pending(self) -> int:
        """Records waiting in the queue."""
        return sum(1 for item in self._queue if not isinstance(item, _Marker))

    def queued(self) -> list[Any]:
        """A copy of the records waiting in the queue, oldest first (the queue itself is
        never handed out: ``deque.copy`` is one C call, safe while others append)."""
        return [item for item in self._queue.copy() if not isinstance(item, _Marker)]

    # ------------------------------------------------------------------ worker side
    def _run(self) -> None:
        try:
            self._replay_spool(force=True)
            while True:
                self._wake.wait(self.options.flush_interval)
                self._drain()
                if self._stop.is_set() and not self._queue:
                    break
                self._replay_spool()
        finally:
            with self._start_lock:
                if self._worker is threading.current_thread():
                    self._worker = None
            # A record handed in while this worker was stopping must not wait for the
            # next submit: start a fresh worker for it.
            if self._queue:
                try:
                    self._start()
                except RuntimeError:
                    pass

    def _drain(self) -> None:
        while self._queue:
            with self._drain_lock:
                self._drain_one()
        if not self._queue:
            with self._bytes_lock:  # the count is approximate; it never drifts past here
                self._queued_bytes = 0
        if self.spool.has_open():
            self.spool.seal()
            self._next_replay = 0.0

    def _drain_one(self) -> None:
        """Take one batch from the head of the queue (up to a flush marker) and export
        it; a marker at the head is passed (what came before it is made durable). Called
        on the worker with the drain lock held, so batches are written in queue order."""
        queue = self._queue
        limit = self.options.batch_size
        if len(queue) > 4 * limit:
            # A backlog: fewer, larger writes. Each write lets go of the interpreter lock,
            # and taking it back from a busy caller costs up to the 5 ms switch interval.
            limit = min(len(queue) // 2, self.options.max_export_batch or 16 * limit)
        self._recover_inflight()
        batch = self._take(limit)
        if batch:
            size = _big_bytes(batch) if self._queued_bytes else 0
            for part in self._by_size(batch):
                self._export(part)
                del batch[: len(part)]  # what is left in flight (spooled at exit)
            self._inflight = None
            if size:
                with self._bytes_lock:
                    self._queued_bytes = max(0, self._queued_bytes - size)
        elif queue and queue[0].__class__ is _Marker:
            marker = queue.popleft()
            self._sync()
            marker.event.set()

    def _by_size(self, batch: list[Any]) -> list[list[Any]]:
        """``batch`` cut into parts of at most ``max_batch_bytes`` (messages plus about
        400 bytes of fields each)."""
        max_bytes = self.options.max_batch_bytes
        if not batch or len(batch) * 400 + sum(map(len, map(_message_of, batch))) <= max_bytes:
            return [batch] if batch else []
        parts: list[list[Any]] = [[]]
        size = 0
        for item in batch:
            item_size = len(_message_of(item)) + 400
            if parts[-1] and size + item_size > max_bytes:
                parts.append([])
                size = 0
            parts[-1].append(item)
            size += item_size
        return parts

    def _attempt(self, batch: list[Any]) -> tuple[int, list[Any], BaseException | None]:
        """Export ``batch`` once: ``(records written, records not written, why)``."""
        try:
            with self._export_lock:
                self.exporter.export(batch)
        except PartialExport as partial:
            failed = list(partial.failed)
            return len(batch) - len(failed), failed, _cause(partial)
        except Exception as exc:
            return 0, batch, exc
        return len(batch), [], None

    def _count_error(self, exc: BaseException) -> None:
        key = type(exc).__name__
        self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
        self.stats.last_error = f"{key}: {exc}"

    def _export(self, batch: list[Any]) -> None:
        """Write ``batch``: retry what failed for a reason that may pass, isolate the
        records that fail for good (`_isolate`), spool what is left."""
        options = self.options
        deadline = time.monotonic() + options.retry_deadline
        attempt = 0
        while True:
            written, batch, exc = self._attempt(batch)
            self.stats.exported += written
            if exc is None:
                return
            self._count_error(exc)
            if not self._retryable(exc):
                # Bad records, not a bad store: write every other record now. The bad
                # ones wait in the spool; a replay that fails on them sets them aside.
                written, bad, batch, later_exc = self._isolate(batch, exc)
                self.stats.exported += written
                if bad:
                    self.stats.failed_batches += 1
                    refused = [record for record, _ in bad]
                    if written:
                        # The store took the others: these records are what it refuses.
                        self._set_aside(refused, bad[0][1])
                    else:
                        # It took none: the fault may be the store's or its configuration's
                        # (an expired token, a missing table). The spool gives them a
                        # second chance; a replay that is refused too sets them aside.
                        self._spool_batch(refused, bad[0][1])
                if not batch:
                    return
                assert later_exc is not None
                exc = later_exc  # the store failed while isolating: retry the rest
            attempt += 1
            retry = attempt <= options.max_retries
            delay = retry_delay(options, attempt, getattr(_cause(exc), "retry_after", None))
            if not retry or time.monotonic() + delay > deadline or self._stop.is_set():
                self.stats.failed_batches += 1
                self._spool_batch(batch, exc)
                return
            self.stats.retries += 1
            if self._stop.wait(delay):  # shutdown cuts the sleep short
                self.stats.failed_batches += 1
                self._spool_batch(batch, exc)
                return

    def _isolate(
        self, batch: list[Any], exc: BaseException
    ) -> tuple[int, list[tuple[Any, BaseException]], list[Any], BaseException | None]:
        """``batch`` failed with ``exc``, which the exporter says will fail again: split it
        in halves until the records that fail are alone, so every other record is written
        once. A record that fails alone is retried once with its unencodable text and
        values replaced (`flowtrail.records.sanitized`).

        Returns ``(records written, [(bad record, why)], records left for a later retry,
        why)``: once a part fails for a reason that may pass (the store went away), the
        rest is not tried now. When nothing at all goes through after about twice the
        attempts a single bad record needs, the failure is the store's, not a record's
        (a remote store refusing every request): the rest counts as bad without more
        attempts, so a batch never costs one request per record."""
        written = 0
        bad: list[tuple[Any, BaseException]] = []
        later: list[Any] = []
        later_exc: BaseException | None = None
        attempts = 0
        budget = 2 * len(batch).bit_length() + 4

        def visit(part: list[Any], error: BaseException) -> None:
            nonlocal written, later_exc, attempts
            if not written and attempts >= budget:
                bad.extend((record, error) for record in part)
                return
            if len(part) == 1:
                record = part[0]
                clean = sanitized(record)
                if clean is not record:
                    count, _, clean_exc = self._attempt([clean])
                    attempts += 1
                    if clean_exc is None:
                        written += count
                        self.stats.sanitised += 1
                        report_once(
                            self.name,
                            error,
                            1,
                            "it was written with the unencodable text and values replaced",
                            outcome="sanitised",
                        )
                        return
                    if self._retryable(clean_exc):
                        later.append(record)
                        later_exc = clean_exc
                        return
                bad.append((record, error))
                return
            middle = len(part) // 2
            for half in (part[:middle], part[middle:]):
                if later:
                    later.extend(half)
                    continue
                if not written and attempts >= budget:
                    bad.extend((record, error) for record in half)
                    continue
                count, failed, half_exc = self._attempt(half)
                attempts += 1
                written += count
                if half_exc is None:
                    continue
                if self._retryable(half_exc):
                    later.extend(failed)
                    later_exc = half_exc
                else:
                    visit(failed, half_exc)

        visit(batch, exc)
        return written, bad, later, later_exc

    def _sync(self) -> None:
        """A flush reached the worker: make what was written durable, and the records
        spilled to the spool too (its open overflow files are synced and sealed)."""
        try:
            if self.spool.has_open():
                self.spool.seal()
                self._next_replay = 0.0
            with self._export_lock:
                self.exporter.sync()
        except Exception as exc:
            report_once(
                self.name, exc, 0, "written records may not be on disk yet", outcome="unsynced"
            )

    def _retryable(self, exc: BaseException) -> bool:
        check = getattr(self.exporter, "retryable", None)
        return bool(check(_cause(exc))) if check is not None else True

    def _spool_batch(self, batch: list[Any], exc: BaseException) -> None:
        try:
            self.spool.write_batch(batch)
            self.stats.spooled += len(batch)
            outcome = "spooled"
            where = f"they were saved to the spool {self.spool.directory} and will be re-sent"
        except SpoolFull as full:
            self.stats.spooled += full.kept
            self.stats.dropped += len(batch) - full.kept
            outcome = "lost"
            where = (
                f"{full.kept} of them were spooled; the rest are lost because the spool is "
                f"full ({full})"
            )
        except Exception as spool_exc:
            self.stats.dropped += len(batch)
            outcome = "lost"
            where = f"the spool {self.spool.directory} failed too ({spool_exc}); they are lost"
        self.spool.note_error(_reason(exc))
        self._next_replay = time.monotonic() + self._replay_wait(exc)
        report_once(self.name, exc, len(batch), where, outcome=outcome)

    def _replay_wait(self, exc: BaseException | None) -> float:
        """Seconds until the spool is replayed again after ``exc``: the replay interval,
        or longer when the service said when to come back (``Retry-After``)."""
        asked = getattr(_cause(exc), "retry_after", None) if exc is not None else None
        interval = self.options.replay_interval
        return max(interval, float(asked)) if isinstance(asked, (int, float)) else interval

    def _set_aside(self, records: list[Any], exc: BaseException, kind: str | None = None) -> None:
        """Keep records the store refuses for good as dead letters (``.failed`` files,
        with the reason beside them): never replayed until ``flowtrail replay
        --dead-letters`` after the cause was fixed."""
        groups: dict[str, list[Any]] = {}
        for record in records:
            groups.setdefault(kind or kind_of(record), []).append(record)
        kept = []
        done = 0
        try:
            for group_kind, group in groups.items():
                kept.append(self.spool.write_failed(group, group_kind, _reason(exc)))
                done += len(group)
        except Exception as spool_exc:
            self.stats.set_aside += done
            self.stats.dropped += len(records) - done
            where = f"the spool {self.spool.directory} failed too ({spool_exc}); they are lost"
            report_once(self.name, exc, len(records), where, outcome="lost")
            return
        self.stats.set_aside += len(records)
        report_once(
            self.name,
            exc,
            len(records),
            f"they can never be written as they are and were set aside as {kept[0]} "
            "(flowtrail spool lists them; flowtrail replay --dead-letters re-sends them)",
            outcome="set aside",
        )

    def _damaged(self, kept: Any, lines: int) -> None:
        self.stats.dropped += lines
        report_once(
            self.name,
            ValueError(f"{lines} undecodable line(s) in a spool file"),
            lines,
            f"the file was kept as {kept} for a person to look at",
            outcome="damaged",
        )

    def _replay_spool(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_replay:
            return
        self._next_replay = now + self.options.replay_interval
        try:
            if force:
                for legacy in self.options.legacy_spool_dirs:
                    self.spool.adopt(legacy)
            for claimed, kind, records in self.spool.claim(on_damaged=self._damaged):
                try:
                    self._retry_after = None
                    if not self._replay_file(claimed, kind, records):
                        # The store is still down: later (when the service said to).
                        if self._retry_after is not None:
                            wait = max(self.options.replay_interval, self._retry_after)
                            self._next_replay = time.monotonic() + wait
                        return
                except Exception:
                    self.spool.release(claimed)
                    return
        except Exception:
            return

    def _replay_file(self, claimed: Any, kind: str, records: list[Any]) -> bool:
        """Write one claimed spool file's records. What was written leaves the file,
        what fails for good is set aside, what may pass stays for a later replay (the
        file is given back). False if the store is still failing."""
        written, failed, exc = self._attempt(records) if records else (0, [], None)
        bad: list[tuple[Any, BaseException]] = []
        later: list[Any] = []
        if exc is not None:
            self._count_error(exc)
            if self._retryable(exc):
                later = failed
                self._retry_after = getattr(_cause(exc), "retry_after", None)
                self.spool.note_error(_reason(exc))
            else:
                more, bad, later, _ = self._isolate(failed, exc)
                written += more
        self.stats.replayed += written
        if bad:
            aside = [record for record, _ in bad]
            if len(aside) == len(records):
                kept = self.spool.set_aside(claimed, _reason(bad[0][1]))
                self.stats.set_aside += len(aside)
                report_once(
                    self.name,
                    bad[0][1],
                    len(aside),
                    f"they can never be written as they are and were set aside as {kept}",
                    outcome="set aside",
                )
                return True
            self._set_aside(aside, bad[0][1], kind)
        if later:
            if len(later) < len(records):
                self.spool.keep_only(claimed, later)  # the written part is not replayed again
            self.spool.release(claimed)
            return False
        self.spool.done(claimed)
        return True

    # ------------------------------------------------------------------ process events
    def _fork_locks(self) -> list[Lockable]:
        """This pipeline's locks in the order its threads take them (see `fork_locks`)."""
        return [self._drain_lock, self._export_lock, self.spool._lock]

    def _after_fork_in_child(self) -> None:
        self._init_runtime()
        self.spool.forget_after_fork()
        try:
            self.exporter.after_fork()
        except Exception:
            pass

    def _shutdown(self, deadline: float) -> None:
        """Interpreter exit: flush within the deadline; past it, what is queued and the
        batch the worker is stuck on (a locked database, a hung mount) go to the spool,
        and exit goes on without waiting for the store."""
        remaining = max(0.0, deadline - time.monotonic())
        if not self.flush(remaining):
            self._stop.set()
            self._spool_queued(TimeoutError("exit deadline passed"), inflight=True)
        self._stop.set()
        self._wake.set()
        if self.spool.has_open():
            self.spool.seal()
        self._close_exporter()


_all_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_registry: dict[Hashable, Pipeline] = {}
_registry_lock = threading.RLock()
_exit_timeout = [10.0]
#: Set when interpreter exit begins: the monotonic time by which it must be done.
_exit_deadline: list[float | None] = [None]


def get_pipeline(
    key: Hashable,
    make: Callable[[], tuple[str, Exporter, PipelineOptions]],
    *,
    strict: bool = False,
) -> Pipeline:
    """The process's pipeline for ``key``, created by ``make`` on first use."""
    pipeline = _registry.get((key, strict))
    if pipeline is None:
        with _registry_lock:
            pipeline = _registry.get((key, strict))
            if pipeline is None:
                name, exporter, options = make()
                pipeline = Pipeline(name, exporter, options, strict=strict)
                _registry[(key, strict)] = pipeline
    return pipeline


def all_pipelines() -> list[Pipeline]:
    """Every pipeline of this process."""
    return list(_all_pipelines)


def flush_all(timeout: float | None = 30.0) -> bool:
    """Flush every pipeline, all within ``timeout``; False if any did not finish."""
    return _each_within(timeout, Pipeline.flush)


def close_all(timeout: float | None = 30.0) -> bool:
    """Flush every pipeline and stop its worker, all within ``timeout``."""
    return _each_within(timeout, Pipeline.close)


def _each_within(timeout: float | None, action: Callable[[Pipeline, float | None], bool]) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    ok = True
    for pipeline in all_pipelines():
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ok = action(pipeline, left) and ok
    return ok


def set_exit_timeout(seconds: float) -> None:
    """How long interpreter exit may spend flushing before spooling the rest."""
    _exit_timeout[0] = seconds


def _at_exit() -> None:
    deadline = time.monotonic() + _exit_timeout[0]
    _exit_deadline[0] = deadline
    for pipeline in all_pipelines():
        try:
            pipeline._shutdown(deadline)
        except Exception:
            pass


def fork_locks() -> list[Lockable]:
    """Every lock a fork must not copy while another thread holds it, in an order that
    cannot deadlock with the threads taking them: `flowtrail.lifecycle` holds them across
    ``os.fork()`` so that no thread is inside an exporter (an SQLite call, a half-written
    spool file) when the child is made."""
    locks: list[Lockable] = [_registry_lock]
    for pipeline in all_pipelines():
        locks += pipeline._fork_locks()
    return [*locks, _report_lock]


def _after_fork_in_child() -> None:
    global _registry_lock, _report_lock
    _exit_deadline[0] = None
    _registry_lock = threading.RLock()
    _report_lock = threading.RLock()
    for pipeline in list(_all_pipelines):
        pipeline._after_fork_in_child()


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
