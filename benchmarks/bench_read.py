"""Reading large runs back: ``flowtrail show``, ``show --summary``, ``search``, ``runs``
and ``report`` against the ``sqlite3`` command-line shell running the equivalent SELECT
(the floor: what reading the same rows costs without Python).

Stores (built once per invocation, in a temporary folder, by ``tests/large_run.py``,
which writes SQLite rows with ``executemany`` and the file store's lines with flowtrail's
own encoders):

- one run of 1,000,000 records and 100,000 spans, in SQLite and in the file store;
- 10,000 runs of 10 records and 3 spans each, in SQLite and in the file store.

Each case is a fresh process; its wall time and its peak RSS (``os.wait4``) are taken.
flowtrail and its floor run alternately, ``--repeat`` times, and the medians are
compared (the machine is shared and noisy: medians of alternating runs, not best-of).
The file store is compared against the same SQL floor, and against its own: the shell
reading the same files once (``cat``, ``wc -l``, ``grep -i``, ``grep -c -r``).

Targets (issue 7): ``show --summary`` and ``search`` within 3x of the floor; ``show``
streamed with peak RSS under 200 MB; ``runs`` on a store of 10,000 runs under 3x the
floor. ``report`` is measured, with no target here.

Needs the ``sqlite3`` shell: on Debian/Ubuntu ``apt-get install sqlite3``.

    python benchmarks/bench_read.py [--repeat 5] [--records 1000000] [--spans 100000]
        [--runs 10000] [--only show,summary,search,runs,runs-1M,report]
        [--stores sqlite,file] [--report-repeat 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from flowtrail.records import METADATA_FIELDS, SPAN_FIELDS  # noqa: E402
from large_run import build_large_run, build_many_runs, peak_rss_argv, peak_rss_mb  # noqa: E402

RUN = "big-run"
SEARCH = "bad row 95000"
#: Memory allowed to ``report`` (today's report reads the whole run; it is someone
#: else's work to make it bounded), so that a shared machine is not driven to swap.
REPORT_MEMORY = 8 << 30


def env() -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    values["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + values.get("PYTHONPATH", "")
    values["COLUMNS"] = "200"
    return values


def measure(argv: list[str], cwd: Path, limit: int | None = None) -> tuple[float, float, int]:
    """Seconds, peak RSS in MB and exit code of ``argv``, its output read and dropped. The
    RSS is the command's own (`peak_rss_argv`: not this process's size at the fork)."""

    def cap() -> None:
        if limit:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = cwd / "peak-rss"
    start = time.perf_counter()
    # Output to a pipe that is read and dropped, not to /dev/null: GNU grep stops at its
    # first match when its output is /dev/null.
    process = subprocess.Popen(
        peak_rss_argv(argv, result),
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=cap if limit else None,
    )
    assert process.stdout is not None
    while process.stdout.read(1 << 20):
        pass
    code = process.wait()
    seconds = time.perf_counter() - start
    return seconds, peak_rss_mb(result), code


def flowtrail(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowtrail", *args]


def sqlite3_cli(db: Path, *statements: str) -> list[str]:
    return ["sqlite3", "-batch", str(db), *statements]


def cases(big_db: Path, big_files: Path, many_db: Path, many_files: Path, out: Path) -> list:
    """(name, store, flowtrail argv, floor argv, memory cap)."""
    records = ", ".join(METADATA_FIELDS)
    spans = ", ".join(SPAN_FIELDS)
    where = f"run_id = '{RUN}'"
    all_rows = (
        f"SELECT {records} FROM traces WHERE {where} ORDER BY id;",
        f"SELECT {spans} FROM traces_spans WHERE {where} ORDER BY start_ns, id;",
    )
    summary_rows = (
        f"SELECT {spans} FROM traces_spans WHERE {where} ORDER BY start_ns, id;",
        f"SELECT COUNT(*) FROM traces WHERE {where};",
        f"SELECT COUNT(*) FROM traces WHERE {where} AND error_flag;",
        f"SELECT {records} FROM traces WHERE {where} AND error_flag ORDER BY id LIMIT 1;",
    )
    like = f"%{SEARCH}%"
    search_rows = (
        f"SELECT {records} FROM traces WHERE (message LIKE '{like}' ESCAPE '\\' OR "
        f"exception_message LIKE '{like}' ESCAPE '\\') ORDER BY id LIMIT 200;",
    )
    runs_rows = (
        "SELECT run_id, MAX(parent_run_id), MAX(workflow_name), MIN(datetime), MAX(datetime), "
        "COUNT(*), SUM(level = 'warning'), SUM(level IN ('error', 'exception')) FROM traces "
        "GROUP BY run_id;",
        "SELECT run_id, MAX(parent_run_id), MAX(workflow_name), MIN(start_time), "
        "MAX(end_time), COUNT(*), SUM(status = 'error') FROM traces_spans GROUP BY run_id;",
        "SELECT run_id, MAX(status = 'error') FROM traces_spans WHERE parent_span_id IS NULL "
        "GROUP BY run_id;",
    )
    # The file store's own floor: the shell reading the same files once (no SQL there).
    run_dir = big_files / f"run_id={RUN}"
    meta, span_file = str(run_dir / "metadata.txt"), str(run_dir / "spans.txt")
    every_file = ["grep", "-c", "-r", "--include=metadata.txt", "--include=spans.txt", ""]
    file_floor = {
        "show": ["cat", meta, span_file],
        "summary": ["wc", "-l", meta, span_file],
        "search": [
            "grep",
            "-i",
            "-m",
            "200",
            "-r",
            "--include=metadata.txt",
            SEARCH,
            str(big_files),
        ],
        "runs": [*every_file, str(many_files)],
        "runs-1M": [*every_file, str(big_files)],
        "report": ["cat", meta, span_file],
    }
    sql = {
        "show": all_rows,
        "summary": summary_rows,
        "search": search_rows,
        "runs": runs_rows,
        "runs-1M": runs_rows,
        "report": all_rows,
    }
    found = []
    for store, big, many in (
        ("sqlite", f"sqlite:///{big_db}", f"sqlite:///{many_db}"),
        ("file", f"file://{big_files}", f"file://{many_files}"),
    ):
        commands = {
            "show": flowtrail("show", RUN, "--store", big),
            "summary": flowtrail("show", RUN, "--summary", "--store", big),
            "search": flowtrail("search", SEARCH, "--store", big),
            "runs": flowtrail("runs", "--store", many),
            "runs-1M": flowtrail("runs", "--store", big),
            "report": flowtrail("report", RUN, "-o", str(out / f"{store}.html"), "--store", big),
        }
        for name, argv in commands.items():
            found.append(
                (
                    name,
                    store,
                    argv,
                    sql[name],
                    file_floor[name] if store == "file" else None,
                    REPORT_MEMORY if name == "report" else None,
                )
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--only", default="show,summary,search,runs,runs-1M,report")
    parser.add_argument("--stores", default="sqlite,file")
    parser.add_argument(
        "--report-repeat", type=int, default=1, help="Rounds that include report (slow)."
    )
    parser.add_argument("--keep", default=None, help="Build (or reuse) the stores here.")
    args = parser.parse_args()
    if shutil.which("sqlite3") is None:
        sys.exit("the sqlite3 shell is needed for the floor: apt-get install sqlite3")
    only, stores = set(args.only.split(",")), set(args.stores.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        big_db, big_files = folder / "big.db", folder / "big-files"
        many_db, many_files = folder / "many.db", folder / "many-files"
        started = time.perf_counter()
        # The SQLite store is the floor's database for the file-store cases too.
        if not big_db.exists():
            build_large_run(big_db, "sqlite", records=args.records, spans=args.spans)
        if "file" in stores and not big_files.exists():
            build_large_run(big_files, "file", records=args.records, spans=args.spans)
        if not many_db.exists():
            build_many_runs(many_db, "sqlite", runs=args.runs)
        if "file" in stores and not many_files.exists():
            build_many_runs(many_files, "file", runs=args.runs)
        print(f"stores built in {time.perf_counter() - started:.0f} s under {folder}")
        chosen = [
            c
            for c in cases(big_db, big_files, many_db, many_files, folder)
            if c[0] in only and c[1] in stores
        ]
        results: dict[str, dict[str, list]] = {}
        for round_ in range(args.repeat):
            for name, store, argv, floor_sql, file_floor, cap in chosen:
                if name == "report" and round_ >= args.report_repeat:
                    continue
                db = many_db if name == "runs" else big_db
                key = f"{name} [{store}]"
                row = results.setdefault(key, {"flowtrail": [], "floor": [], "files": []})
                row["flowtrail"].append(measure(argv, folder, cap))
                row["floor"].append(measure(sqlite3_cli(db, *floor_sql), folder))
                if file_floor:
                    row["files"].append(measure(file_floor, folder))
        report(results, args)


def report(results: dict[str, dict[str, list]], args: argparse.Namespace) -> None:
    targets = {
        "summary": ("time", 3.0),
        "search": ("time", 3.0),
        "runs": ("time", 3.0),
        "show": ("rss", 200.0),
    }
    print(
        f"\n{args.records:,} records / {args.spans:,} spans; runs: {args.runs:,} runs; "
        f"medians of {args.repeat} alternating runs ({args.report_repeat} for report)"
    )
    header = f"{'case':<18}{'flowtrail s':>12}{'RSS MB':>8}{'SQL floor s':>12}{'ratio':>7}"
    print(header + f"{'file floor s':>13}{'ratio':>7}  target (against the SQL floor)")
    saved = {}
    for key, row in results.items():
        ok = [m for m in row["flowtrail"] if m[2] == 0]
        seconds = statistics.median(m[0] for m in row["flowtrail"])
        rss = statistics.median(m[1] for m in row["flowtrail"])
        floor_s = statistics.median(m[0] for m in row["floor"])
        ratio = seconds / floor_s
        files_s = statistics.median(m[0] for m in row["files"]) if row["files"] else None
        name = key.split(" ")[0]
        verdict = ""
        if name in targets:
            kind, bound = targets[name]
            value = ratio if kind == "time" else rss
            unit = "x floor" if kind == "time" else " MB RSS"
            verdict = f"< {bound:g}{unit}: {'PASS' if value < bound else 'MISS'}"
        if len(ok) < len(row["flowtrail"]):
            verdict += f" ({len(row['flowtrail']) - len(ok)} run(s) FAILED, exit != 0)"
        files = f"{files_s:>13.2f}{seconds / files_s:>6.1f}x" if files_s else f"{'':>20}"
        print(
            f"{key:<18}{seconds:>12.2f}{rss:>8.0f}{floor_s:>12.2f}{ratio:>6.1f}x{files}  {verdict}"
        )
        saved[key] = {
            "flowtrail_s": seconds,
            "flowtrail_rss_mb": rss,
            "sql_floor_s": floor_s,
            "ratio": ratio,
            "file_floor_s": files_s,
            "runs": row,
        }
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "read.json").write_text(json.dumps(saved, indent=2))


if __name__ == "__main__":
    main()
