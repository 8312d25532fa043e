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

import atexit
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from flowtrail.spool import Spool


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


@dataclass(frozen=True)
class PipelineOptions:
    """How a pipeline batches, retries and overflows."""

    batch_size: int = 1000
    max_batch_bytes: int = 16 * 1024 * 1024
    flush_interval: float = 0.5
    queue_size: int = 100_000
    overflow: Literal["help", "spill", "drop", "block"] = "spill"
    #: With ``overflow="help"``: how long the caller waits for the store before spilling.
    help_timeout: float = 1.0
    #: A full batch may be written by the caller when the worker is idle (local stores
    #: whose exporter has ``export_nowait``).
    caller_runs: bool = False
    spool_dir: str = "./logs/spool"
    max_retries: int = 5
    retry_backoff: float = 0.1
    retry_max_backoff: float = 5.0
    retry_deadline: float = 30.0
    replay_interval: float = 30.0


@dataclass
class PipelineStats:
    """Counters of one pipeline (per process)."""

    exported: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    failed_batches: int = 0
    retries: int = 0
    last_error: str | None = None
    errors: dict[str, int] = field(default_factory=dict)


def _message_of(item: Any) -> str:
    return getattr(item, "message", "")


class _Marker:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


_reported: set[tuple[str, str]] = set()
_report_lock = threading.Lock()


def report_once(name: str, exc: BaseException, count: int, where: str) -> None:
    """Tell stderr once per handler and error type that records could not be written."""
    kind = type(exc).__name__
    with _report_lock:
        if (name, kind) in _reported:
            return
        _reported.add((name, kind))
    try:
        sys.stderr.write(
            f"flowtrail: handler {name} could not write {count} record(s) "
            f"({kind}: {exc}); {where}. Further failures of this kind are counted in "
            f"its stats, not printed.\n"
        )
    except Exception:
        pass


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
        self.spool = Spool(options.spool_dir)
        # Read on every submit: plain attributes, and a strict pipeline's limit of 0
        # sends every record down the slow path.
        self._limit = 0 if strict else options.queue_size
        self._batch_size = options.batch_size
        self._caller_runs = options.caller_runs and hasattr(exporter, "export_nowait")
        self._init_runtime()
        _all_pipelines.add(self)

    def _init_runtime(self) -> None:
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._export_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._helpers = 0
        self._start_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._pid = os.getpid()
        self._next_replay = 0.0

    # ------------------------------------------------------------------ caller side
    def submit(self, record: Any) -> None:
        """Hand one record in. Never blocks (unless ``overflow="block"``), never raises
        (unless ``strict``)."""
        queue = self._queue
        if len(queue) >= self._limit:
            self._submit_slow(record)
            return
        queue.append(record)
        if self._worker is None:
            self._start()
        if len(queue) % self._batch_size == 0:
            self._batch_ready()

    def _batch_ready(self) -> None:
        """A batch is waiting. For a local store that can write without waiting, the
        caller writes it now if the worker is not already busy: under a burst this avoids
        two threads trading the interpreter lock, the dearest part of a write. Otherwise
        the worker is woken."""
        if self._caller_runs and self._drain_lock.acquire(blocking=False):
            try:
                self._drain_one(on_caller=True)
            finally:
                self._drain_lock.release()
        else:
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
        if policy == "help" and self._help(record):
            return
        if policy == "drop":
            self.stats.dropped += 1
            if self.stats.dropped == 1:
                report_once(
                    self.name,
                    OverflowError(f"queue full ({self.options.queue_size} records)"),
                    1,
                    "records are dropped while the queue is full (overflow='drop')",
                )
            return
        if policy == "block":
            while len(self._queue) >= self.options.queue_size:
                self._wake.set()
                time.sleep(0.001)
            self._queue.append(record)
            return
        try:
            self.spool.append(record)
            self.stats.spooled += 1
        except Exception as exc:  # the disk itself failed: nothing left but to count
            self.stats.dropped += 1
            report_once(self.name, exc, 1, "the record could not be spooled either")
        self._wake.set()

    def _help(self, record: Any) -> bool:
        """A full queue in front of a local store: the caller writes the oldest batch
        itself (disk, never network), which keeps order, loses nothing and slows the
        caller to the store's pace. False if the store stays busy past a short wait
        (then the record is spilled)."""
        self._helpers += 1
        try:
            acquired = self._drain_lock.acquire(timeout=self.options.help_timeout)
        finally:
            self._helpers -= 1
        if not acquired:
            return False
        try:
            self._queue.append(record)
            self._drain_one()
        finally:
            self._drain_lock.release()
        return True

    def _start(self) -> None:
        with self._start_lock:
            if self._worker is not None and self._worker.is_alive():
                return
            self._stop.clear()
            worker = threading.Thread(target=self._run, name=f"flowtrail:{self.name}", daemon=True)
            self._worker = worker
            worker.start()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every record handed in before this call is written or spooled.
        Returns False if ``timeout`` passed first."""
        worker = self._worker
        if self.strict or (not self._queue and (worker is None or not worker.is_alive())):
            return True
        marker = _Marker()
        self._queue.append(marker)
        if worker is None or not worker.is_alive():
            try:
                self._start()
            except RuntimeError:  # no new threads at interpreter shutdown: do it here
                self._drain()
                return True
        self._wake.set()
        return marker.event.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush, then stop the worker, all within ``timeout``. The pipeline starts
        again on the next submit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self.flush(timeout)
        worker = self._worker
        if worker is not None:
            self._stop.set()
            self._wake.set()
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if done and not self._queue:
            self._close_exporter()
        return done

    def _close_exporter(self) -> None:
        with self._export_lock:
            try:
                self.exporter.close_exporter()
            except Exception:
                pass

    def pending(self) -> int:
        """Records waiting in the queue."""
        return sum(1 for item in self._queue if not isinstance(item, _Marker))

    # ------------------------------------------------------------------ worker side
    def _run(self) -> None:
        try:
            self._replay_spool(force=True)
            while True:
                self._wake.wait(self.options.flush_interval)
                self._wake.clear()
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
            if self._helpers:
                # Locks are not fair: step aside so a waiting caller gets its turn.
                time.sleep(0.0005)
        if self.spool.has_open():
            self.spool.seal()
            self._next_replay = 0.0

    def _drain_one(self, on_caller: bool = False) -> None:
        """Take one batch from the head of the queue (up to a flush marker) and export
        it. Called with the drain lock held, so batches are written in queue order.
        ``on_caller``: one attempt that must not wait; on any failure the batch goes back
        to the head of the queue for the worker, which retries it properly."""
        queue = self._queue
        limit = self.options.batch_size
        if len(queue) > 4 * limit:
            # A backlog: fewer, larger writes. Each write lets go of the interpreter lock,
            # and taking it back from a busy caller costs up to the 5 ms switch interval.
            limit = min(len(queue) // 2, 16 * limit)
        popleft = queue.popleft
        batch = [popleft() for _ in range(min(limit, len(queue)))]
        marker = None
        kinds = list(map(type, batch))
        if _Marker in kinds:
            # Stop at the first flush marker; what follows goes back to the head.
            cut = kinds.index(_Marker)
            marker, rest = batch[cut], batch[cut + 1 :]
            del batch[cut:]
            queue.extendleft(reversed(rest))
        if on_caller:
            try:
                with self._export_lock:
                    self.exporter.export_nowait(batch)  # type: ignore[attr-defined]
                self.stats.exported += len(batch)
            except Exception as exc:
                if isinstance(exc, PartialExport):  # what was written stays written
                    self.stats.exported += len(batch) - len(exc.failed)
                    batch = list(exc.failed)
                if marker is not None:
                    queue.appendleft(marker)
                queue.extendleft(reversed(batch))
                self._wake.set()
                return
        else:
            for part in self._by_size(batch):
                self._export(part)
        if marker is not None:
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

    def _export(self, batch: list[Any]) -> None:
        options = self.options
        deadline = time.monotonic() + options.retry_deadline
        attempt = 0
        while True:
            try:
                with self._export_lock:
                    self.exporter.export(batch)
                self.stats.exported += len(batch)
                return
            except Exception as error:
                exc: BaseException = error
                if isinstance(error, PartialExport):
                    # Only the records the exporter could not write are retried or spooled.
                    self.stats.exported += len(batch) - len(error.failed)
                    batch, exc = list(error.failed), error.cause
                attempt += 1
                key = type(exc).__name__
                self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
                self.stats.last_error = f"{key}: {exc}"
                retry = self._retryable(exc) and attempt <= options.max_retries
                delay = min(options.retry_max_backoff, options.retry_backoff * 2 ** (attempt - 1))
                delay *= 0.5 + random.random()
                if not retry or time.monotonic() + delay > deadline or self._stop.is_set():
                    self.stats.failed_batches += 1
                    self._spool_batch(batch, exc)
                    return
                self.stats.retries += 1
                if self._stop.wait(delay):  # shutdown cuts the sleep short
                    self.stats.failed_batches += 1
                    self._spool_batch(batch, exc)
                    return

    def _sync(self) -> None:
        try:
            with self._export_lock:
                self.exporter.sync()
        except Exception as exc:
            report_once(self.name, exc, 0, "written records may not be on disk yet")

    def _retryable(self, exc: BaseException) -> bool:
        check = getattr(self.exporter, "retryable", None)
        return bool(check(exc)) if check is not None else True

    def _spool_batch(self, batch: list[Any], exc: BaseException) -> None:
        try:
            self.spool.write_batch(batch)
            self.stats.spooled += len(batch)
            where = f"they were saved to the spool {self.spool.directory} and will be re-sent"
        except Exception as spool_exc:
            self.stats.dropped += len(batch)
            where = f"the spool {self.spool.directory} failed too ({spool_exc}); they are lost"
        self._next_replay = time.monotonic() + self.options.replay_interval
        report_once(self.name, exc, len(batch), where)

    def _replay_spool(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_replay:
            return
        self._next_replay = now + self.options.replay_interval
        try:
            for claimed, _kind, records in self.spool.claim():
                try:
                    if records:
                        with self._export_lock:
                            self.exporter.export(records)
                except Exception as exc:
                    if self._retryable(exc):
                        self.spool.release(claimed)  # the backend is still down: later
                        return
                    # This batch can never be written (bad data, not a bad backend): set it
                    # aside for a person to look at, and go on with the others.
                    kept = self.spool.set_aside(claimed)
                    self.stats.dropped += len(records)
                    report_once(self.name, exc, len(records), f"the batch was set aside as {kept}")
                    continue
                self.stats.replayed += len(records)
                self.spool.done(claimed)
        except Exception:
            return

    # ------------------------------------------------------------------ process events
    def _fork_locks(self) -> list[threading.Lock]:
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
        remaining = max(0.0, deadline - time.monotonic())
        if not self.flush(remaining):
            # Past the deadline: whatever is still queued goes to the spool.
            self._stop.set()
            leftovers: list[Any] = []
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, _Marker):
                    item.event.set()
                else:
                    leftovers.append(item)
            if leftovers:
                self._spool_batch(leftovers, TimeoutError("exit deadline passed"))
        self._stop.set()
        self._wake.set()
        if self.spool.has_open():
            self.spool.seal()
        self._close_exporter()


_all_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_registry: dict[Hashable, Pipeline] = {}
_registry_lock = threading.Lock()
_exit_timeout = [10.0]


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
    for pipeline in all_pipelines():
        try:
            pipeline._shutdown(deadline)
        except Exception:
            pass


def fork_locks() -> list[threading.Lock]:
    """Every lock a fork must not copy while another thread holds it, in an order that
    cannot deadlock with the threads taking them: `flowtrail.lifecycle` holds them across
    ``os.fork()`` so that no thread is inside an exporter (an SQLite call, a half-written
    spool file) when the child is made."""
    locks = [_registry_lock]
    for pipeline in all_pipelines():
        locks += pipeline._fork_locks()
    return [*locks, _report_lock]


def _after_fork_in_child() -> None:
    global _registry_lock, _report_lock
    _registry_lock = threading.Lock()
    _report_lock = threading.Lock()
    for pipeline in list(_all_pipelines):
        pipeline._after_fork_in_child()


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
