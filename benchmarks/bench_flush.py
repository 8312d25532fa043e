"""The cost of a durable flush: one record logged, then ``flush()``, repeated.

    python benchmarks/bench_flush.py [--n 200] [--batch 1,100]

Cases (each in a fresh temporary directory on the same disk as the working directory):

- ``file``: `FileHandler` (a flush ``fsync``s each open file; new files' folders once).
- ``file-nofsync``: `FileHandler(fsync=False)` (a flush only waits for the write).
- ``sqlite``: `SQLiteHandler` (WAL, ``synchronous=NORMAL``; a flush ``fsync``s the WAL).
- ``sqlite-nosync``: the same with `SQLiteHandler.sync` made a no-op (before 2026-12:
  durable against a killed process, not against power loss).
- ``sqlite-checkpoint``: a flush runs ``PRAGMA wal_checkpoint(PASSIVE)`` instead of the
  WAL ``fsync`` (the other way to make a NORMAL commit durable).
- ``sqlite-full``: ``synchronous="FULL"`` (every commit ``fsync``s the WAL; a flush adds
  nothing).
- ``spool``: `Spool.write_batch` of one batch (file ``fsync`` + folder ``fsync``) and
  ``spool-nodirsync`` without the folder ``fsync``.

Prints the median and 90th percentile milliseconds per flush (or per spool write).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import flowtrail  # noqa: E402
from flowtrail import FileHandler, Metadata, SQLiteHandler, get_trace  # noqa: E402
from flowtrail import spool as spool_module  # noqa: E402
from flowtrail.handlers.sqlite import SQLiteHandler as _SQLite  # noqa: E402


def _flushes(handler: object, n: int, batch: int) -> list[float]:
    trace = get_trace(f"flush-{time.time_ns()}", handlers=[handler])
    trace.info("warm-up")
    trace.flush()
    times = []
    for i in range(n):
        for j in range(batch):
            trace.info(f"record {i} {j}")
        start = time.perf_counter()
        assert trace.flush()
        times.append(time.perf_counter() - start)
    flowtrail.shutdown()
    return times


def _handler(case: str, root: Path) -> object:
    if case == "file":
        return FileHandler(path=str(root / "t"))
    if case == "file-nofsync":
        return FileHandler(path=str(root / "t"), fsync=False)
    if case == "sqlite-full":
        return SQLiteHandler(path=str(root / "t.db"), synchronous="FULL")
    return SQLiteHandler(path=str(root / "t.db"))


def _checkpoint_sync(self: _SQLite) -> None:
    conn = self.__dict__.get("_conn")
    if conn is not None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _spool_writes(root: Path, n: int, batch: int, dir_sync: bool) -> list[float]:
    real = spool_module.sync_directory
    if not dir_sync:
        spool_module.sync_directory = lambda directory: None
    try:
        spool = spool_module.Spool(root / "spool")
        records = [Metadata(run_id="r", message=f"record {i}") for i in range(batch)]
        times = []
        for _ in range(n):
            start = time.perf_counter()
            spool.write_batch(records)
            times.append(time.perf_counter() - start)
    finally:
        spool_module.sync_directory = real
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch", default="1,100")
    args = parser.parse_args()
    real_sync = _SQLite.sync
    print(f"{'case':<20} {'records/flush':>13} {'median ms':>10} {'p90 ms':>8}")
    for batch in (int(b) for b in args.batch.split(",")):
        for case in (
            "file",
            "file-nofsync",
            "sqlite",
            "sqlite-nosync",
            "sqlite-checkpoint",
            "sqlite-full",
            "spool",
            "spool-nodirsync",
        ):
            with tempfile.TemporaryDirectory(dir=".") as folder:
                root = Path(folder).resolve()
                os.chdir(root)
                try:
                    if case.startswith("spool"):
                        times = _spool_writes(root, args.n, batch, case == "spool")
                    else:
                        if case == "sqlite-nosync":
                            _SQLite.sync = lambda self: None  # type: ignore[method-assign]
                        elif case == "sqlite-checkpoint":
                            _SQLite.sync = _checkpoint_sync  # type: ignore[method-assign]
                        handler = _handler(case, root)
                        times = _flushes(handler, args.n, batch)
                finally:
                    _SQLite.sync = real_sync  # type: ignore[method-assign]
                    os.chdir("..")
            times.sort()
            median = statistics.median(times) * 1000
            p90 = times[int(len(times) * 0.9)] * 1000
            print(f"{case:<20} {batch:>13} {median:>10.3f} {p90:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
