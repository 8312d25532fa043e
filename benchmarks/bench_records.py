"""Records until durable: flowtrail against stdlib logging, structlog, loguru and OpenTelemetry.

Every case logs N records of 35 fields (the caller's file and line among them) as JSON lines
(or SQLite rows), then flushes and fsyncs. Each run is a fresh interpreter in a fresh
temporary directory (its working directory too, so flowtrail's ``./logs`` spool lands there).

    python benchmarks/bench_records.py [--n 200000] [--repeat 3] [--only CASE[,CASE]] [--src DIR]

Per case: caller cost (µs per logging call = loop time / N) and records/s until durable
(N / (loop time + flush/fsync time)); the best of ``--repeat`` runs of each is reported.
The output is counted (lines or rows, every JSON line parsed, 35 fields, the caller's file):
a run that falls short is reported FAILED and the process exits 1 at the end. Targets are
reported as PASS/MISS; a miss does not fail the process. Results are also written to
``benchmarks/out/records.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "records.json"
FIELDS = 35

# Context that a workflow run puts on every record (the flowtrail `extras`).
FLOWTRAIL_EXTRAS: dict[str, Any] = {
    "workflow_name": "etl-daily",
    "stage_name": "transform",
    "job_name": "job-42",
    "user_id": "u-1001",
    "tenant_id": "acme",
    "environment": "prod",
    "package_version": "1.4.2",
    "tags": ["nightly", "bench"],
    "metadata": {"source": "s3", "batch": 7},
}

# The same context as peers carry it: the 25 per-run fields of a flowtrail record, with
# the values flowtrail fills in itself (ids, host). Peers take the first `35 - native`
# of them (their own per-record fields count as native), so every record has 35 fields.
PEER_CONTEXT: list[tuple[str, Any]] = [
    *FLOWTRAIL_EXTRAS.items(),
    ("run_id", "bench"),
    ("cut_id", "bench"),
    ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("hostname", platform.node()),
    ("ip_address", "127.0.0.1"),
    ("python_version", platform.python_version()),
    ("parent_run_id", None),
    ("span_id", None),
    ("parent_span_id", None),
    ("duration_ms", None),
    ("memory_usage_mb", None),
    ("cpu_usage_percent", None),
    ("error_code", None),
    ("exception_type", None),
    ("exception_message", None),
    ("stack_trace", None),
    # Per-record in flowtrail; constants here (single thread, no errors) - the peers get
    # these for free, which only favours them.
    ("process", os.getpid()),
    ("thread", threading.get_ident()),
    ("error_flag", False),
    ("mode", "stdout"),
    ("logger", "bench"),
]


def peer_context(native: int, null: Any = None) -> dict[str, Any]:
    """The first ``35 - native`` context fields (``None`` replaced by ``null``)."""
    chosen = PEER_CONTEXT[: FIELDS - native]
    return {key: (null if value is None else value) for key, value in chosen}


# ---------------------------------------------------------------------------- verifying
def _loads() -> Callable[[bytes], Any]:
    try:
        import orjson

        return orjson.loads
    except ImportError:  # pragma: no cover
        return json.loads


def check_json_lines(path: Path, n: int, count_fields: Callable[[dict[str, Any]], int]) -> int:
    """Parse every line of ``path``; require ``n`` lines; return the fields of the first."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) != n:
        raise SystemExit(f"FAIL: {path} has {len(lines)} lines, expected {n}")
    loads = _loads()
    first = None
    for number, raw in enumerate(lines, 1):
        try:
            obj = loads(raw)
        except ValueError as exc:
            raise SystemExit(f"FAIL: {path} line {number} is not JSON: {exc}: {raw[:200]!r}")
        if first is None:
            first = obj
    assert first is not None
    fields = count_fields(first)
    if fields != FIELDS:
        raise SystemExit(f"FAIL: {path} records have {fields} fields, expected {FIELDS}: {first}")
    if "bench_records.py" not in json.dumps(first):
        raise SystemExit(f"FAIL: {path} records do not name the caller's file: {first}")
    return fields


def top_level(obj: dict[str, Any]) -> int:
    return len(obj)


# ---------------------------------------------------------------------------- cases
# Each returns (loop seconds, flush seconds, details) and leaves its output in `work`.


def case_flowtrail_file(n: int, work: Path) -> dict[str, Any]:
    from flowtrail import FileHandler, Trace

    trace = Trace(
        run_id="bench", handlers=[FileHandler(path=str(work / "ft"))], extras=FLOWTRAIL_EXTRAS
    )
    info = trace.info
    start = time.perf_counter()
    for i in range(n):
        info(f"message {i}")
    loop = time.perf_counter()
    progress = trace.pipelines()[0].stats.exported  # written by the worker during the loop
    ok = trace.flush(timeout=600)
    end = time.perf_counter()
    stats = trace.pipelines()[0].stats
    _measured(
        start,
        loop,
        end,
        exported_during_loop=progress,
        spooled=stats.spooled,
        dropped=stats.dropped,
    )
    if not ok:
        raise SystemExit(f"FAIL: flush timed out ({stats})")
    try:
        fields = check_json_lines(work / "ft" / "run_id=bench" / "metadata.txt", n, top_level)
    except SystemExit as exc:
        raise SystemExit(f"{exc.code} ({stats})") from None
    return _result(fields)


def _flowtrail_sqlite(n: int, work: Path, **options: Any) -> dict[str, Any]:
    import sqlite3

    from flowtrail import SQLiteHandler, Trace
    from flowtrail.records import METADATA_FIELDS

    db = work / "b.db"
    trace = Trace(
        run_id="bench", handlers=[SQLiteHandler(path=str(db), **options)], extras=FLOWTRAIL_EXTRAS
    )
    info = trace.info
    start = time.perf_counter()
    for i in range(n):
        info(f"message {i}")
    loop = time.perf_counter()
    progress = trace.pipelines()[0].stats.exported  # written by the worker during the loop
    ok = trace.flush(timeout=600)
    end = time.perf_counter()
    stats = trace.pipelines()[0].stats
    _measured(
        start,
        loop,
        end,
        exported_during_loop=progress,
        spooled=stats.spooled,
        dropped=stats.dropped,
    )
    if not ok:
        raise SystemExit(f"FAIL: flush timed out ({stats})")
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute("SELECT COUNT(*) FROM traces WHERE run_id = 'bench'").fetchone()[0]
        first = conn.execute("SELECT * FROM traces ORDER BY id LIMIT 1").fetchone()
        columns = [d[0] for d in conn.execute("SELECT * FROM traces LIMIT 0").description]
    finally:
        conn.close()
    if rows != n:
        raise SystemExit(f"FAIL: {db} has {rows} rows, expected {n} ({stats})")
    record = dict(zip(columns, first, strict=True))
    fields = sum(1 for name in METADATA_FIELDS if name in record)
    if fields != FIELDS or record["filename"] != "bench_records.py" or not record["lineno"]:
        raise SystemExit(f"FAIL: unexpected row {record}")
    return _result(fields)


def case_flowtrail_sqlite(n: int, work: Path) -> dict[str, Any]:
    return _flowtrail_sqlite(n, work)


def case_flowtrail_sqlite_queue(n: int, work: Path) -> dict[str, Any]:
    # A queue that holds every record: nothing spills to the spool, so this measures how
    # fast the worker really gets rows into the database.
    return _flowtrail_sqlite(n, work, queue_size=max(n, 100_000))


def case_flowtrail_sqlite_full(n: int, work: Path) -> dict[str, Any]:
    # Commits fsync the WAL (durable against power loss), same big queue.
    return _flowtrail_sqlite(n, work, synchronous="FULL", queue_size=max(n, 100_000))


def case_stdlib_json(n: int, work: Path) -> dict[str, Any]:
    import datetime as dt
    import logging

    context = peer_context(native=10)  # the 25 per-run fields
    keys = tuple(context)
    utc = dt.timezone.utc

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            stamp = dt.datetime.fromtimestamp(record.created, utc).isoformat()
            error = record.levelno >= logging.ERROR
            data = {
                "level": record.levelname.lower(),
                "message": record.getMessage(),
                "error_flag": error,
                "datetime": stamp,
                "process": record.process,
                "thread": record.thread,
                "filename": record.filename,
                "lineno": record.lineno,
                "created_at": stamp,
                "mode": "stderr" if error else "stdout",
            }
            values = record.__dict__
            for key in keys:
                data[key] = values[key]
            return json.dumps(data)

    path = work / "stdlib.jsonl"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    base = logging.getLogger("bench.stdlib")
    base.propagate = False
    base.setLevel(logging.INFO)
    base.addHandler(handler)
    log = logging.LoggerAdapter(base, context)
    start = time.perf_counter()
    for i in range(n):
        log.info(f"message {i}")
    loop = time.perf_counter()
    handler.flush()
    os.fsync(handler.stream.fileno())
    end = time.perf_counter()
    _measured(start, loop, end)
    handler.close()
    return _result(check_json_lines(path, n, top_level))


def case_structlog_orjson(n: int, work: Path) -> dict[str, Any]:
    import logging

    import orjson
    import structlog
    from structlog.processors import CallsiteParameter

    path = work / "structlog.jsonl"
    out = open(path, "wb")  # noqa: SIM115 - closed below
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.CallsiteParameterAdder(
                [CallsiteParameter.FILENAME, CallsiteParameter.LINENO]
            ),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.BytesLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # native: event, level, timestamp, filename, lineno
    log = structlog.get_logger().bind(**peer_context(native=5))
    start = time.perf_counter()
    for i in range(n):
        log.info(f"message {i}")
    loop = time.perf_counter()
    out.flush()
    os.fsync(out.fileno())
    end = time.perf_counter()
    _measured(start, loop, end)
    out.close()
    return _result(check_json_lines(path, n, top_level))


def case_loguru(n: int, work: Path) -> dict[str, Any]:
    from loguru import logger

    path = work / "loguru.jsonl"
    logger.remove()
    sink = logger.add(str(path), serialize=True, level="INFO")
    # native: text + record{elapsed, exception, file, function, level, line, message,
    # module, name, process, thread, time}
    log = logger.bind(**peer_context(native=13))
    start = time.perf_counter()
    for i in range(n):
        log.info(f"message {i}")
    loop = time.perf_counter()
    logger.complete()
    logger.remove(sink)  # flushes and closes the file
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    end = time.perf_counter()
    _measured(start, loop, end)

    def count(obj: dict[str, Any]) -> int:
        record = obj["record"]
        return 1 + len(record) - 1 + len(record["extra"])

    return _result(check_json_lines(path, n, count))


def case_otel(n: int, work: Path) -> dict[str, Any]:
    import logging
    import warnings

    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        LogRecordExporter,
        LogRecordExportResult,
    )

    class JsonLinesExporter(LogRecordExporter):
        """Each record as ``ReadableLogRecord.to_json`` on one line; one write per batch."""

        def __init__(self, file_path: Path) -> None:
            self.out = open(file_path, "w", encoding="utf-8")  # noqa: SIM115

        def export(self, batch: Any) -> LogRecordExportResult:
            self.out.write("".join(record.to_json(indent=None) + "\n" for record in batch))
            return LogRecordExportResult.SUCCESS

        def sync(self) -> None:
            self.out.flush()
            os.fsync(self.out.fileno())

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

        def shutdown(self) -> None:
            self.out.close()

    path = work / "otel.jsonl"
    exporter = JsonLinesExporter(path)
    provider = LoggerProvider()
    # The default queue (2048) drops records under a burst; give it room for all of them.
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, max_queue_size=max(2048, n))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(logger_provider=provider)
    base = logging.getLogger("bench.otel")
    base.propagate = False
    base.setLevel(logging.INFO)
    base.addHandler(handler)
    # native: body, severity_number, severity_text, dropped_attributes, timestamp,
    # observed_timestamp, trace_id, span_id, trace_flags, resource, event_name and the
    # code.file.path / code.function.name / code.line.number attributes.
    log = logging.LoggerAdapter(base, peer_context(native=14, null=""))
    start = time.perf_counter()
    for i in range(n):
        log.info(f"message {i}")
    loop = time.perf_counter()
    if not provider.force_flush(600_000):
        raise SystemExit("FAIL: OpenTelemetry force_flush timed out")
    exporter.sync()
    end = time.perf_counter()
    _measured(start, loop, end)
    provider.shutdown()

    def count(obj: dict[str, Any]) -> int:
        return len(obj) - 1 + len(obj["attributes"])

    return _result(check_json_lines(path, n, count))


#: Timings of the case running in this process, kept for the report if verifying fails.
MEASURED: dict[str, Any] = {}


def _measured(start: float, loop: float, end: float, **extra: Any) -> None:
    MEASURED.update(loop_s=loop - start, flush_s=end - loop, **extra)


def _result(fields: int) -> dict[str, Any]:
    return {**MEASURED, "fields": fields}


CASES: dict[str, tuple[str, Callable[[int, Path], dict[str, Any]]]] = {
    "flowtrail-file": ("flowtrail FileHandler", case_flowtrail_file),
    "flowtrail-sqlite": ("flowtrail SQLiteHandler", case_flowtrail_sqlite),
    "flowtrail-sqlite-q": ("flowtrail SQLite queue_size=N", case_flowtrail_sqlite_queue),
    "flowtrail-sqlite-full": ("flowtrail SQLite q=N synchronous=FULL", case_flowtrail_sqlite_full),
    "stdlib-json": ("stdlib FileHandler + json", case_stdlib_json),
    "structlog-orjson": ("structlog + orjson", case_structlog_orjson),
    "loguru": ("loguru serialize=True", case_loguru),
    "otel": ("OpenTelemetry SDK logs", case_otel),
}


# ---------------------------------------------------------------------------- driver
def run_child(case: str, n: int, work: Path) -> dict[str, Any]:
    try:
        result = CASES[case][1](n, work)
    except SystemExit as exc:
        if not MEASURED or not str(exc.code).startswith("FAIL"):
            raise
        result = {**MEASURED, "error": str(exc.code)}  # timed, but the output is wrong
    result["caller_us"] = result["loop_s"] / n * 1e6
    result["records_per_s"] = n / (result["loop_s"] + result["flush_s"])
    module = sys.modules.get("flowtrail")
    if module is not None:
        result["flowtrail_from"] = str(Path(module.__file__ or "").parent.parent)
    return result


def run_once(case: str, n: int, timeout: float, src: str | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"flowtrail-bench-{case}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWTRAIL_", "OTEL_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if src:  # measure flowtrail from this tree (ahead of the installed one on sys.path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", case, "--n", str(n)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        reason = next((line for line in reversed(lines) if line.startswith("FAIL")), None)
        reason = reason or (lines[-1] if lines else f"exit status {proc.returncode}")
        sys.stderr.write(f"\n*** {case} run FAILED: {reason}\n")
        if not reason.startswith("FAIL"):
            sys.stderr.write("\n".join(lines[-30:]) + "\n")
        return {"error": reason}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "error" in result:
        sys.stderr.write(f"\n*** {case} run FAILED: {result['error']}\n")
    return result


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("flowtrail", "msgspec", "structlog", "orjson", "loguru", "opentelemetry-sdk"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def source_digest(src: Path) -> str:
    """A digest of every file of the flowtrail package measured (to notice edits)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((src / "flowtrail").rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def source_state() -> dict[str, Any]:
    """The commit measured and whether src/ had uncommitted changes."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=HERE.parent, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "src").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "src_changes": [line[3:] for line in changed]}


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="records per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (best is kept)")
    parser.add_argument("--only", default="", help=f"comma-separated cases: {', '.join(CASES)}")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument(
        "--src",
        help="measure flowtrail from this source directory (holding flowtrail/), e.g. an "
        "extracted `git archive`, instead of the installed package",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_child(args.child, args.n, Path.cwd())))
        return 0

    selected = [name.strip() for name in args.only.split(",") if name.strip()] or list(CASES)
    unknown = [name for name in selected if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}")

    print(f"{args.n:,} records x {FIELDS} fields, best of {args.repeat}, fresh process per run")
    src = Path(args.src).resolve() if args.src else HERE.parent / "src"
    if not (src / "flowtrail" / "__init__.py").is_file():
        parser.error(f"--src {src} does not hold flowtrail/__init__.py")
    state = source_state() if not args.src else {"commit": "", "src_changes": []}
    state["src"] = str(src)
    state["digest_before"] = source_digest(src)
    if args.src:
        print(f"flowtrail from {src} (digest {state['digest_before']})")
    else:
        dirty = f", uncommitted changes in {len(state['src_changes'])} src file(s)"
        print(
            f"flowtrail at {state['commit'][:10]}{dirty if state['src_changes'] else ''} "
            f"(digest {state['digest_before']})"
        )
    results: dict[str, Any] = {}
    for case in selected:
        runs = [run_once(case, args.n, args.timeout, args.src) for _ in range(args.repeat)]
        good = [r for r in runs if "error" not in r]
        for r in good:
            if r.get("flowtrail_from", str(src)) != str(src):
                raise SystemExit(f"FAIL: {case} imported flowtrail from {r['flowtrail_from']}")
        best = None
        if good:
            best = {
                "caller_us": min(r["caller_us"] for r in good),
                "records_per_s": max(r["records_per_s"] for r in good),
                "fields": good[0]["fields"],
            }
        results[case] = {"best": best, "runs": runs, "failed": len(runs) - len(good)}
        shown = ", ".join(
            (f"FAIL (caller {r['caller_us']:.2f} µs)" if "caller_us" in r else "FAIL")
            if "error" in r
            else f"{r['records_per_s']:,.0f}"
            for r in runs
        )
        print(f"  {case:<22} records/s per run: {shown}", flush=True)
        if any("exported_during_loop" in r for r in good):
            during = ", ".join(f"{r['exported_during_loop']:,}" for r in good)
            print(f"  {'':<22} written by the worker while the caller looped: {during}")

    def best(case: str, key: str) -> float | None:
        found = results.get(case, {}).get("best")
        return found[key] if found else None

    ours = [c for c in ("flowtrail-file", "flowtrail-sqlite") if best(c, "records_per_s")]
    print()
    header = f"{'case':<36} {'fields':>6} {'caller µs/call':>15} {'records/s':>12}"
    header += "".join(f" {'ft-' + c.split('-')[1] + ' x':>10}" for c in ours)
    print(header)
    print("-" * len(header))
    for case in selected:
        found = results[case]["best"]
        failed = results[case]["failed"]
        note = f"  ({failed} of {args.repeat} runs FAILED)" if failed else ""
        if found is None:
            timed_runs = [r["caller_us"] for r in results[case]["runs"] if "caller_us" in r]
            caller = f"{min(timed_runs):>15.2f}" if timed_runs else f"{'-':>15}"
            print(f"{CASES[case][0]:<36} {'-':>6} {caller}  FAILED: output incomplete{note}")
            continue
        rate = found["records_per_s"]
        line = (
            f"{CASES[case][0]:<36} {found['fields']:>6} "
            f"{found['caller_us']:>15.2f} {fmt_rate(rate):>12}"
        )
        for mine in ours:
            line += f" {results[mine]['best']['records_per_s'] / rate:>9.2f}x"
        print(line + note)
    print("(ft-file x / ft-sqlite x: flowtrail's records/s divided by the row's records/s)")

    targets = []

    def target(
        name: str, value: float | None, goal: float, higher: bool, unit: str, *cases: str
    ) -> None:
        if value is None:
            failed = [c for c in cases if c in results and results[c]["best"] is None]
            status = "FAIL" if failed else "n/a"
            why = f"{', '.join(failed)} did not write every record" if failed else "not run"
            targets.append({"target": name, "value": None, "status": status, "why": why})
            print(f"  {status:<5} {name} ({why})")
            return
        ok = value >= goal if higher else value <= goal
        status = "PASS" if ok else "MISS"
        targets.append({"target": name, "value": value, "goal": goal, "status": status})
        print(f"  {status:<5} {name}: {value:,.2f}{unit}")

    state["digest_after"] = source_digest(src)
    if state["digest_after"] != state["digest_before"]:
        print(
            f"\nWARNING: flowtrail's source changed during the run (digest "
            f"{state['digest_before']} -> {state['digest_after']}): results mix versions"
        )
    print("\ntargets:")
    file_rate, structlog_rate = (
        best("flowtrail-file", "records_per_s"),
        best("structlog-orjson", "records_per_s"),
    )
    ratio = file_rate / structlog_rate if file_rate and structlog_rate else None
    target(
        "flowtrail file >= 3x structlog+orjson records/s",
        ratio,
        3.0,
        True,
        "x",
        "flowtrail-file",
        "structlog-orjson",
    )
    for case in ("flowtrail-sqlite", "flowtrail-sqlite-q"):
        target(
            f"{case} >= 120,000 records/s",
            best(case, "records_per_s"),
            120_000,
            True,
            " records/s",
            case,
        )
    for case in ("flowtrail-file", "flowtrail-sqlite", "flowtrail-sqlite-q"):
        target(f"{case} caller cost <= 5 µs/call", best(case, "caller_us"), 5.0, False, " µs", case)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "records",
        "n": args.n,
        "fields": FIELDS,
        "repeat": args.repeat,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
        "source": state,
        "cases": results,
        "targets": targets,
    }
    OUT.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten {OUT.relative_to(HERE.parent)}")
    failures = sum(entry["failed"] for entry in results.values())
    if failures:
        print(f"FAIL: {failures} run(s) did not leave exactly {args.n:,} records; see above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
