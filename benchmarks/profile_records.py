"""Where flowtrail's time goes for the records benchmark (file and SQLite handlers).

    python benchmarks/profile_records.py [file|sqlite ...] [--n 200000] [--top 20] [--no-cprofile]

Three views, each in a fresh temporary working directory:

1. Components, timed alone on one thread (no worker, no profiler): the caller's steps
   (record build, clock, submit) and the worker's steps (text line, JSON lines, SQLite row,
   executemany, fsync), in µs per record.
2. Caller cost with and without the worker competing for the interpreter lock.
3. cProfile of the caller thread and, separately, of the worker thread (its ``_run`` is
   wrapped here at run time; nothing under ``src/`` is changed), sorted by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_records import FLOWTRAIL_EXTRAS  # noqa: E402


def per_record(label: str, seconds: float, n: int) -> None:
    print(f"  {label:<58} {seconds / n * 1e6:8.2f} µs/record")


def timed(func: Callable[[], Any]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def make_trace(kind: str, work: Path, **options: Any) -> Any:
    from flowtrail import FileHandler, SQLiteHandler, Trace

    if kind == "file":
        handler = FileHandler(path=str(work / "ft"), **options)
    else:
        handler = SQLiteHandler(path=str(work / "b.db"), **options)
    return Trace(run_id="bench", handlers=[handler], extras=FLOWTRAIL_EXTRAS)


def components(kind: str, n: int, work: Path) -> None:
    import msgspec

    from flowtrail.formats.line import compile_line_format
    from flowtrail.records import encode_lines

    print(f"\n[{kind}] components, one thread, no worker ({n:,} records)")
    # A trace whose worker never wakes: batches bigger than n, a flush interval of an hour.
    trace = make_trace(kind, work, batch_size=10**9, flush_interval=3600, queue_size=10 * n)
    pipeline = trace.pipelines()[0]
    messages = [f"message {i}" for i in range(n)]
    info = trace.info

    per_record(
        "loop + f-string message (baseline)", timed(lambda: [f"message {i}" for i in range(n)]), n
    )
    per_record("Trace.info total (worker asleep)", timed(lambda: [info(m) for m in messages]), n)
    records = list(pipeline._queue)
    pipeline._queue.clear()
    assert len(records) == n, len(records)
    clock = trace._clock
    per_record("  of which Clock.now()", timed(lambda: [clock.now() for _ in range(n)]), n)
    template = trace._template
    replace = msgspec.structs.replace
    per_record(
        "  of which msgspec.structs.replace (11 fields)",
        timed(
            lambda: [
                replace(
                    template,
                    level="info",
                    message=m,
                    error_flag=False,
                    datetime="x",
                    process=1,
                    thread=2,
                    filename="f",
                    lineno=3,
                    created_at="x",
                    mode="stdout",
                )
                for m in messages
            ]
        ),
        n,
    )

    def frames() -> None:
        getframe = sys._getframe
        for _ in range(n):
            frame = getframe(0)
            frame.f_code.co_filename, frame.f_lineno  # noqa: B018

    per_record("  of which sys._getframe + f_code.co_filename/f_lineno", timed(frames), n)
    per_record(
        "  of which Pipeline.submit (deque append)",
        timed(lambda: [pipeline.submit(r) for r in records]),
        n,
    )
    pipeline._queue.clear()

    config = trace.handlers[0].bound(trace.settings).config
    exporter = pipeline.exporter
    batches = [records[i : i + 1000] for i in range(0, n, 1000)]
    if kind == "file":
        line = compile_line_format(
            config.format or "{message}",
            config.datetime_format or "%Y-%m-%d %H:%M:%S",
            bool(config.add_emoji),
        )
        print(f"  (stdout.txt format: {config.format!r})")
        per_record(
            "worker: text line for stdout.txt (compiled format)",
            timed(lambda: [line(r) for r in records]),
            n,
        )
        texts = [[line(r) for r in b] for b in batches]
        per_record(
            "worker: join + encode text lines",
            timed(lambda: [("\n".join(t) + "\n").encode() for t in texts]),
            n,
        )
        per_record(
            "worker: msgspec encode_lines (metadata.txt)",
            timed(lambda: [encode_lines(b) for b in batches]),
            n,
        )
        per_record(
            "worker: FileHandler.export total (2 files)",
            timed(lambda: [exporter.export(b) for b in batches]),
            n,
        )
        per_record("worker: fsync of both files at flush", timed(exporter.sync), n)
    else:
        from flowtrail.handlers import sqlite as sqlite_module
        from flowtrail.records import METADATA_FIELDS

        conn = exporter._writer()
        per_record(
            "worker: SQLiteHandler.export total",
            timed(lambda: [exporter.export(b) for b in batches]),
            n,
        )
        columns_and_rows = getattr(sqlite_module, "_columns_and_rows", None)
        if columns_and_rows is not None:  # the handler's own row building, if it has one
            per_record(
                "  of which rows (_columns_and_rows)",
                timed(lambda: [columns_and_rows(b) for b in batches]),
                n,
            )
            built = [columns_and_rows(b) for b in batches]
            statements = [(exporter._insert_sql(cols), rows) for cols, rows in built]
        else:
            astuple, encode = msgspec.structs.astuple, msgspec.json.encode
            tags, meta = METADATA_FIELDS.index("tags"), METADATA_FIELDS.index("metadata")

            def row(r: Any) -> tuple[Any, ...]:
                t = astuple(r)
                return (
                    t[:tags] + (encode(t[tags]).decode(), encode(t[meta]).decode()) + t[meta + 1 :]
                )

            per_record(
                "  of which rows (astuple + JSON columns)",
                timed(lambda: [[row(r) for r in b] for b in batches]),
                n,
            )
            names, marks = ", ".join(METADATA_FIELDS), ", ".join("?" * len(METADATA_FIELDS))
            sql = f"INSERT INTO traces ({names}) VALUES ({marks})"
            statements = [(sql, [row(r) for r in b]) for b in batches]

        def insert(target: str) -> None:
            for sql, rows in statements:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql.replace("INSERT INTO traces", f"INSERT INTO {target}"), rows)
                conn.execute("COMMIT")

        per_record(
            "  of which executemany + commit (rows prebuilt)", timed(lambda: insert("traces")), n
        )
        conn.execute("CREATE TABLE bare AS SELECT * FROM traces WHERE 0")
        per_record("  same into a table without indexes", timed(lambda: insert("bare")), n)
        indexes = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='traces'"
            )
        ]
        print(f"  (indexes on traces: {', '.join(indexes) or 'none'})")
    pipeline.close(60)


def contention(kind: str, n: int, work: Path) -> None:
    print(f"\n[{kind}] caller cost with and without the worker ({n:,} records)")
    for label, options in (
        (
            "worker asleep (batch > n)",
            {"batch_size": 10**9, "flush_interval": 3600, "queue_size": 10 * n},
        ),
        ("worker running (defaults)", {}),
    ):
        folder = work / label.split()[1]
        folder.mkdir()
        trace = make_trace(kind, folder, **options)
        info = trace.info
        start = time.perf_counter()
        for i in range(n):
            info(f"message {i}")
        loop = time.perf_counter() - start
        start = time.perf_counter()
        trace.flush(600)
        flush = time.perf_counter() - start
        stats = trace.pipelines()[0].stats
        print(
            f"  {label:<28} caller {loop / n * 1e6:6.2f} µs/call, flush {flush:6.2f} s, "
            f"{n / (loop + flush):>9,.0f} records/s (spooled {stats.spooled})"
        )
        trace.pipelines()[0].close(60)


def profiled(kind: str, n: int, work: Path, top: int) -> None:
    from flowtrail.pipeline import Pipeline

    worker_profile = cProfile.Profile()
    original = Pipeline._run

    def run(self: Pipeline) -> None:
        worker_profile.enable()
        try:
            original(self)
        finally:
            worker_profile.disable()

    Pipeline._run = run  # type: ignore[method-assign]
    try:
        trace = make_trace(kind, work)
        info = trace.info
        caller_profile = cProfile.Profile()
        caller_profile.enable()
        for i in range(n):
            info(f"message {i}")
        caller_profile.disable()  # the flush below only waits for the worker
        trace.flush(600)
        trace.pipelines()[0].close(60)  # the worker's _run returns: its profile stops
    finally:
        Pipeline._run = original  # type: ignore[method-assign]
    for name, profile in (("caller thread", caller_profile), ("worker thread", worker_profile)):
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(f"\n[{kind}] cProfile, {name} ({n:,} records; times include profiler overhead)")
        text = out.getvalue()
        print(text[text.find("   ncalls") :].rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kinds", nargs="*", default=["file", "sqlite"], help="file, sqlite")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--no-cprofile", action="store_true")
    args = parser.parse_args()
    if set(args.kinds) - {"file", "sqlite"}:
        parser.error("kinds are 'file' and 'sqlite'")
    for kind in args.kinds:
        for step in ("components", "contention", "cprofile"):
            if step == "cprofile" and args.no_cprofile:
                continue
            with tempfile.TemporaryDirectory(prefix=f"flowtrail-profile-{kind}-") as tmp:
                os.chdir(tmp)  # flowtrail's ./logs spool lands here
                if step == "components":
                    components(kind, args.n, Path(tmp))
                elif step == "contention":
                    contention(kind, args.n, Path(tmp))
                else:
                    profiled(kind, args.n, Path(tmp), args.top)
                os.chdir(HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
