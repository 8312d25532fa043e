"""Build large stores fast, for the large-run tests and ``benchmarks/bench_read.py``.

`build_large_run` writes one run of ``records`` records and ``spans`` spans (a workflow,
jobs, stages; a few stages fail, and the last one fails its job and the workflow) straight
into a store: SQLite rows with ``executemany`` from `Metadata`/`Span` structs (through the
SQLite handler's own row encoder and schema), or the file store's ``metadata.txt``,
``spans.txt``, ``stdout.txt`` and ``stderr.txt`` lines with the project's own encoders.
That takes seconds where writing through ``trace.info`` would take minutes. Records carry
their span's ids, and spans carry a ``log`` event per record, as ``trace.info`` makes them.

`build_many_runs` writes ``runs`` small runs (for ``flowtrail runs``).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from itertools import chain
from pathlib import Path

from flowtrail.config import DEFAULT_LOG_FORMAT_FILE
from flowtrail.formats.line import compile_line_format
from flowtrail.handlers.sqlite import _SPAN_JSON, SQLiteHandler, _columns_and_rows
from flowtrail.records import SPAN_FIELDS, Metadata, Span, SpanEvent, encode_lines

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
START = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
START_NS = int(START.timestamp()) * 1_000_000_000
#: Every this many stages, one fails (and its run goes on).
FAIL_EVERY = 10_000
STACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/etl/stages.py", line 88, in transform\n'
    "    rows = parse(batch)\n"
    "ValueError: bad row {n}\n"
)


def _iso(us: int) -> str:
    return (START + timedelta(microseconds=us)).isoformat(timespec="microseconds")


class _Builder:
    """Walks the run in time order, yielding records and finished spans."""

    def __init__(self, run_id: str, records: int, spans: int, workflow: str) -> None:
        self.run_id, self.workflow = run_id, workflow
        self.total_records, self.total_spans = records, spans
        self.clock = 0  # microseconds since START
        self.next_id = 1

    def tick(self) -> int:
        self.clock += 7
        return self.clock

    def span_id(self) -> str:
        self.next_id += 1
        return f"{self.next_id:016x}"

    def record(self, span: dict, level: str, message: str, **extra: object) -> Metadata:
        us = self.tick()
        record = Metadata(
            run_id=self.run_id,
            level=level,
            message=message,
            error_flag=level in ("error", "exception"),
            datetime=_iso(us),
            process=4242,
            thread=1,
            filename="stages.py",
            lineno=88,
            workflow_name=self.workflow,
            job_name=span.get("job"),
            stage_name=span.get("stage"),
            trace_id=TRACE_ID,
            span_id=span["id"],
            parent_span_id=span["parent"],
            hostname="worker-1",
            mode="stderr" if level in ("error", "exception") else "stdout",
            **extra,  # type: ignore[arg-type]
        )
        span["events"].append(
            SpanEvent(
                name="log",
                time=record.datetime,
                time_ns=START_NS + us * 1000,
                level=level,
                attributes={"message": message, "lineno": 88},
            )
        )
        return record

    def open(self, kind: str, name: str, parent: dict | None, **names: str) -> dict:
        return {
            "kind": kind,
            "name": name,
            "id": self.span_id(),
            "parent": parent["id"] if parent else None,
            "start": self.tick(),
            "events": [],
            **names,
        }

    def close(self, span: dict, error: str | None = None, **attributes: object) -> Span:
        end = self.tick()
        events = span["events"]
        if error:
            events.append(
                SpanEvent(
                    name="exception",
                    time=_iso(end),
                    time_ns=START_NS + end * 1000,
                    level="exception",
                    attributes={
                        "exception.type": "ValueError",
                        "exception.message": error,
                        "exception.stacktrace": STACK.format(n=error.split()[-1]),
                    },
                )
            )
        return Span(
            run_id=self.run_id,
            trace_id=TRACE_ID,
            span_id=span["id"],
            name=span["name"],
            kind=span["kind"],
            parent_span_id=span["parent"],
            start_time=_iso(span["start"]),
            end_time=_iso(end),
            start_ns=START_NS + span["start"] * 1000,
            end_ns=START_NS + end * 1000,
            duration_ms=(end - span["start"]) / 1000,
            status="error" if error else "ok",
            status_message=f"ValueError: {error}" if error else None,
            attributes=attributes,
            events=events,
            workflow_name=self.workflow,
            job_name=span.get("job"),
            stage_name=span.get("stage"),
            process=4242,
            thread=1,
            hostname="worker-1",
        )

    def items(self) -> Iterator[Metadata | Span]:
        """Records and spans in the order a tracer writes them (a span when it ends)."""
        jobs = max(1, (self.total_spans - 1) // 100)
        stages = self.total_spans - 1 - jobs
        workflow = self.open("workflow", self.workflow, None)
        yield self.record(workflow, "info", f"workflow {self.workflow} starts")
        written = 1
        stage_index = 0
        for j in range(jobs):
            job = self.open("job", f"job-{j}", workflow, job=f"job-{j}")
            my_stages = stages // jobs + (1 if j < stages % jobs else 0)
            for s in range(my_stages):
                last = j == jobs - 1 and s == my_stages - 1
                stage = self.open(
                    "stage", f"stage-{s % 10}", job, job=f"job-{j}", stage=f"stage-{s % 10}"
                )
                # Records so far, spread evenly over the stages (the last takes the rest).
                quota = (self.total_records - 1) * (stage_index + 1) // stages - (written - 1)
                failing = last or (stage_index % FAIL_EVERY == FAIL_EVERY // 2)
                for k in range(quota):
                    if failing and k == quota - 1:
                        yield self.record(
                            stage,
                            "exception",
                            f"stage {s} of job-{j} failed",
                            exception_type="ValueError",
                            exception_message=f"bad row {stage_index}",
                            stack_trace=STACK.format(n=stage_index),
                        )
                    elif k % 50 == 49:
                        yield self.record(stage, "warning", f"slow batch {k} in stage {s}")
                    elif k % 10 == 3:
                        yield self.record(stage, "debug", f"batch {k} details of stage {s}")
                    else:
                        yield self.record(stage, "info", f"row batch {k} of stage {s} done")
                    written += 1
                stage_index += 1
                yield self.close(
                    stage, f"bad row {stage_index - 1}" if failing else None, index=s, job=j
                )
            yield self.close(job, "bad row (last stage)" if j == jobs - 1 else None, stages=s)
        yield self.close(workflow, "bad row (last stage)")


def build_large_run(
    store: Path,
    kind: str,
    *,
    run_id: str = "big-run",
    records: int = 1_000_000,
    spans: int = 100_000,
    workflow: str = "big-etl",
) -> None:
    """Write one run of ``records`` records and ``spans`` spans to the SQLite database
    ``store`` (``kind="sqlite"``) or under the file store ``store`` (``kind="file"``)."""
    items = _Builder(run_id, records, spans, workflow).items()
    if kind == "sqlite":
        _write_sqlite(store, items)
    else:
        _write_files(store / f"run_id={run_id}", items)


def build_many_runs(
    store: Path, kind: str, *, runs: int = 10_000, records: int = 10, spans: int = 3
) -> None:
    """Write ``runs`` runs of ``records`` records and ``spans`` spans each."""
    builders = []
    for n in range(runs):
        builder = _Builder(f"run-{n:06d}", records, spans, f"flow-{n % 7}")
        builder.clock = n * 10_000_000
        builders.append(builder)
    if kind == "sqlite":
        _write_sqlite(store, chain.from_iterable(b.items() for b in builders))
    else:
        for builder in builders:
            _write_files(store / f"run_id={builder.run_id}", builder.items())


def _chunks(items: Iterator[Metadata | Span], size: int = 20_000) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_sqlite(path: Path, items: Iterator[Metadata | Span]) -> None:
    handler = SQLiteHandler(path=str(path))
    table = handler.table
    handler._connect().close()  # the handler's own schema and indexes
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    for chunk in _chunks(items):
        for cls, name in ((Metadata, table), (Span, f"{table}_spans")):
            group = [item for item in chunk if item.__class__ is cls]
            if not group:
                continue
            if cls is Metadata:
                columns, rows = _columns_and_rows(group)
            else:
                columns, rows = _columns_and_rows(group, SPAN_FIELDS, _SPAN_JSON)
            marks = ", ".join("?" for _ in columns)
            conn.executemany(f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({marks})", rows)
    conn.execute("COMMIT")
    conn.close()


def _write_files(folder: Path, items: Iterator[Metadata | Span]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    line = compile_line_format(DEFAULT_LOG_FORMAT_FILE)
    with (
        (folder / "metadata.txt").open("wb") as meta,
        (folder / "spans.txt").open("wb") as spans_file,
        (folder / "stdout.txt").open("w") as out,
        (folder / "stderr.txt").open("w") as err,
    ):
        for chunk in _chunks(items):
            logs = [item for item in chunk if item.__class__ is Metadata]
            spans = [item for item in chunk if item.__class__ is Span]
            if logs:
                meta.write(encode_lines(logs))
                out.writelines(line(r) + "\n" for r in logs if not r.error_flag)
                err.writelines(line(r) + "\n" for r in logs if r.error_flag)
            if spans:
                spans_file.write(encode_lines(spans))


#: Runs ``argv`` as its own child and writes that child's peak RSS (KB) to a file. The
#: peak RSS of a process counts what the process was before its ``exec``: a child forked
#: straight from pytest (or a benchmark holding a store in memory) would carry that
#: process's size. Forked from this small interpreter, the command carries a few MB.
_PEAK_RSS = """
import os, sys
result, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(result, "w") as handle:
    handle.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_argv(argv: list[str], result: Path) -> list[str]:
    """``argv`` run so that its peak RSS is written to ``result`` (read it with
    `peak_rss_mb` once the process has ended)."""
    return [sys.executable, "-S", "-c", _PEAK_RSS, str(result), *argv]


def peak_rss_mb(result: Path) -> float:
    """The peak RSS written by a command from `peak_rss_argv`, in MB."""
    return int(result.read_text()) / 1024
