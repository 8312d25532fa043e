"""``flowtrail show`` of large runs (issue 7, point 8), through the real command line on
real stores: ``--summary``, the filters (``--level``, ``--span``, ``--errors``,
``--depth``, ``--limit``), the pager on a terminal (a pseudo-terminal here) and never
when piped, ``--format json`` holding each log once, and a run of 1,000,000 records and
100,000 spans read in bounded memory (peak RSS of the ``show`` process)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import sqlite3
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import ROOT, run_python
from large_run import build_large_run, peak_rss_argv, peak_rss_mb

STORES = {"sqlite": "sqlite:///runs.db", "file": "file://traces"}

WRITE_RUN = """
import sys
from flowtrail import Trace, FileHandler, SQLiteHandler
handler = SQLiteHandler(path="runs.db") if sys.argv[1] == "sqlite" else FileHandler(path="traces")
trace = Trace(run_id="filters-run", handlers=[handler], extras={"workflow_name": "filters"})
with trace.span("workflow", name="filters"):
    trace.info("workflow starts")
    with trace.span("job", name="a"):
        with trace.span("stage", name="x"):
            trace.debug("a-x debug")
            trace.info("a-x info")
            trace.warning("a-x warning")
        try:
            with trace.span("stage", name="y"):
                trace.info("a-y info")
                raise ValueError("y broke")
        except ValueError:
            trace.error("a saw y fail")
    with trace.span("job", name="b"):
        with trace.span("stage", name="x"):
            trace.info("b-x info")
            trace.debug("b-x debug")
trace.info("after the workflow")
trace.flush()
"""
MESSAGES = [
    "workflow starts",
    "a-x debug",
    "a-x info",
    "a-x warning",
    "a-y info",
    # Written by the span the exception left (one way to find failures: issue 7).
    "stage y failed: ValueError: y broke",
    "a saw y fail",
    "b-x info",
    "b-x debug",
    "after the workflow",
]


def env() -> dict[str, str]:
    values = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FLOWTRAIL_") and k not in ("TRACEPARENT", "PAGER", "LINES")
    }
    values["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + values.get("PYTHONPATH", "")
    values["COLUMNS"] = "200"
    return values


def show(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "flowtrail", "show", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(params=sorted(STORES), scope="module")
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A run written by a real process through the tracing API, in each store."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"filters-{kind}")
    result = run_python(WRITE_RUN.replace("sys.argv[1]", repr(kind)), folder)
    assert result.returncode == 0, result.stderr
    return folder, ("--store", STORES[kind])


def log_lines(out: str) -> list[str]:
    """The record lines of a tree: ``[LEVEL] message`` (indented)."""
    return [line.strip() for line in out.splitlines() if line.lstrip().startswith("[")]


def span_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.lstrip().startswith("→ ")]


def test_unfiltered_tree_prints_each_record_once(written) -> None:
    folder, store = written
    out = show("filters-run", *store, cwd=folder).stdout
    messages = [line.split("] ", 1)[1] for line in log_lines(out)]
    assert sorted(messages) == sorted(MESSAGES)
    assert [line.split(" [")[0] for line in span_lines(out)] == [
        "→ workflow.filters",
        "→ job.a",
        "→ stage.x",
        "→ stage.y",
        "→ job.b",
        "→ stage.x",
    ]
    lines = out.splitlines()
    # Records in their span, in written order; the one written after the workflow last.
    assert lines.index("      [INFO] a-y info") > lines.index("    → stage.y")
    workflow_end = next(i for i, line in enumerate(lines) if line.startswith("← workflow."))
    assert lines.index("[INFO] after the workflow") > workflow_end
    assert "- Records: 10" in lines
    # Caught inside job a, but stage y failed and was not retried: the run failed.
    assert "- Status: error" in lines


def test_summary_option_prints_only_the_summary(written) -> None:
    folder, store = written
    out = show("filters-run", *store, "--summary", cwd=folder).stdout
    lines = out.splitlines()
    assert lines[0] == "Summary:"
    assert not span_lines(out) and not log_lines(out)
    assert "- Status: error" in lines
    assert "- Spans: 6 (job 2, stage 3, workflow 1)" in lines
    assert "- Records: 10" in lines
    assert "- Failures: 2 (1 span(s) ended in error, 2 error record(s))" in lines
    assert any(line.startswith("- First Failure: stage.y: ValueError: y broke") for line in lines)
    assert any(line.startswith("- Slowest: ") for line in lines)
    assert "- First Error Record: [EXCEPTION] stage y failed: ValueError: y broke" in " ".join(
        lines
    )


def test_level_filter(written) -> None:
    folder, store = written
    out = show("filters-run", *store, "--level", "warning", cwd=folder).stdout
    assert log_lines(out) == [
        "[WARNING] a-x warning",
        "[EXCEPTION] stage y failed: ValueError: y broke",
        "[ERROR] a saw y fail",
    ]
    assert len(span_lines(out)) == 6  # every span is still there
    assert "- Shown: 3 of 10 record(s) (--level warning)" in out.splitlines()
    bad = show("filters-run", *store, "--level", "loud", cwd=folder, ok=False)
    assert bad.returncode == 2 and "unknown level 'loud'" in bad.stderr


def test_span_filter_shows_the_span_and_the_path_to_it(written) -> None:
    folder, store = written
    out = show("filters-run", *store, "--span", "stage.y", cwd=folder).stdout
    assert [line.split(" [")[0] for line in span_lines(out)] == [
        "→ workflow.filters",
        "→ job.a",
        "→ stage.y",
    ]
    assert log_lines(out) == ["[INFO] a-y info", "[EXCEPTION] stage y failed: ValueError: y broke"]
    # By name alone: both stages named x, with their own records only.
    out = show("filters-run", *store, "--span", "x", cwd=folder).stdout
    assert [line.split(" [")[0] for line in span_lines(out)] == [
        "→ workflow.filters",
        "→ job.a",
        "→ stage.x",
        "→ job.b",
        "→ stage.x",
    ]
    assert sorted(log_lines(out)) == sorted(
        ["[DEBUG] a-x debug", "[INFO] a-x info", "[WARNING] a-x warning"]
        + ["[INFO] b-x info", "[DEBUG] b-x debug"]
    )


def test_errors_filter(written) -> None:
    folder, store = written
    out = show("filters-run", *store, "--errors", cwd=folder).stdout
    assert [line.split(" [")[0] for line in span_lines(out)] == [
        "→ workflow.filters",
        "→ job.a",
        "→ stage.y",
    ]
    # The failed span's logs, and the error record written in job a (not failed).
    assert log_lines(out) == [
        "[INFO] a-y info",
        "[EXCEPTION] stage y failed: ValueError: y broke",
        "[ERROR] a saw y fail",
    ]
    assert any("← stage.y" in line and "✗ ValueError: y broke" in line for line in out.splitlines())


def test_depth_and_limit(written) -> None:
    folder, store = written
    out = show("filters-run", *store, "--depth", "2", cwd=folder).stdout
    assert [line.split(" [")[0] for line in span_lines(out)] == [
        "→ workflow.filters",
        "→ job.a",
        "→ job.b",
    ]
    assert log_lines(out) == ["[INFO] workflow starts", "[ERROR] a saw y fail"] + [
        "[INFO] after the workflow"
    ]
    out = show("filters-run", *store, "--limit", "3", cwd=folder).stdout
    assert [line.split("] ", 1)[1] for line in log_lines(out)] == MESSAGES[:3]
    lines = out.splitlines()
    assert any(line.startswith("… stopped after 3 record(s)") for line in lines)
    assert "- Records: 10" in lines  # the summary is of the whole run
    text = show("filters-run", *store, "--format", "text", "--limit", "2", cwd=folder).stdout
    assert sum(" INFO " in line or " DEBUG " in line for line in text.splitlines()) == 2


def test_json_holds_each_log_once(written) -> None:
    folder, store = written
    text = show("filters-run", *store, "--format", "json", cwd=folder).stdout
    document = json.loads(text)
    assert sorted(log["message"] for log in document["logs"]) == sorted(MESSAGES)
    assert all(event["name"] != "log" for span in document["spans"] for event in span["events"])
    for message in MESSAGES:
        assert text.count(f'"{message}"') == 1, message
    stage_y = next(s for s in document["spans"] if s["name"] == "y")
    assert [event["name"] for event in stage_y["events"]] == ["exception"]
    filtered = json.loads(
        show("filters-run", *store, "--format", "json", "--level", "error", cwd=folder).stdout
    )
    assert [log["message"] for log in filtered["logs"]] == [
        "stage y failed: ValueError: y broke",
        "a saw y fail",
    ]


THREADS_RUN = """
import contextvars, sys, threading, time
from flowtrail import Trace, FileHandler, SQLiteHandler
handler = SQLiteHandler(path="runs.db") if KIND == "sqlite" else FileHandler(path="traces")
trace = Trace(run_id="threads-run", handlers=[handler], extras={"workflow_name": "threads"})

def work(name):
    with trace.span("stage", name=name):
        for i in range(40):
            trace.info(f"{name} {i}")
            time.sleep(0.0005)

with trace.span("workflow", name="threads"):
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(work, name))
        for name in ("left", "right")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trace.info("joined")
child = Trace(run_id="threads-child", parent_run_id="threads-run", handlers=[handler])
child.info("child record")
child.flush()
trace.flush()
"""


@pytest.mark.parametrize("kind", sorted(STORES))
def test_spans_in_threads_get_their_own_records_once(tmp_path: Path, kind: str) -> None:
    """Two stages run at once, their records interleaved in the store: each record is
    printed once, under its own stage (held back while the other stage is printed)."""
    result = run_python(THREADS_RUN.replace("KIND", repr(kind)), tmp_path)
    assert result.returncode == 0, result.stderr
    out = show("threads-run", "--store", STORES[kind], cwd=tmp_path).stdout
    open_spans: list[str] = []
    seen: list[str] = []
    for line in out.splitlines():
        text = line.strip()
        if text.startswith("→ "):
            open_spans.append(text[2:].split(" ")[0].split(".")[1])
        elif text.startswith("← "):
            open_spans.pop()
        elif text.startswith("[INFO] "):
            message = text[len("[INFO] ") :]
            seen.append(message)
            if message.split(" ")[0] in ("left", "right"):
                assert open_spans[-1] == message.split(" ")[0], line
    expected = [f"{name} {i}" for name in ("left", "right") for i in range(40)]
    assert sorted(seen) == sorted([*expected, "joined", "child record"])
    alone = show("threads-run", "--store", STORES[kind], "--no-children", cwd=tmp_path).stdout
    assert "child record" not in alone and alone.count("[INFO] ") == 81


# ---------------------------------------------------------------------- the pager


def run_in_terminal(args: list[str], cwd: Path, rows: int, extra: dict[str, str]) -> str:
    """Run ``flowtrail show ARGS`` with a pseudo-terminal of ``rows`` rows as its
    stdin, stdout and stderr; return what it printed on the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "flowtrail", "show", *args],
        cwd=cwd,
        env={**env(), "TERM": "xterm", **extra},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            process.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every end of the terminal is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(timeout=60) == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


@pytest.fixture
def pager(tmp_path: Path) -> tuple[Path, Path]:
    """A pager program that copies what it is given to a file."""
    script = tmp_path / "pager.py"
    paged = tmp_path / "paged.txt"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(paged)!r}, 'w').write(sys.stdin.read())\n"
    )
    script.chmod(0o755)
    return script, paged


def test_long_output_on_a_terminal_goes_through_the_pager(written, pager) -> None:
    folder, store = written
    script, paged = pager
    seen = run_in_terminal(["filters-run", *store], folder, rows=10, extra={"PAGER": str(script)})
    text = paged.read_text()
    assert "→ workflow.filters" in text and "Summary:" in text
    assert "a saw y fail" in text
    assert "a saw y fail" not in seen  # the terminal itself got nothing of it

    paged.unlink()
    seen = run_in_terminal(
        ["filters-run", *store, "--no-pager"], folder, rows=10, extra={"PAGER": str(script)}
    )
    assert not paged.exists()
    assert "a saw y fail" in seen and "Summary:" in seen


def test_short_output_and_piped_output_never_page(written, pager) -> None:
    folder, store = written
    script, paged = pager
    seen = run_in_terminal(
        ["filters-run", *store, "--summary"], folder, rows=200, extra={"PAGER": str(script)}
    )
    assert not paged.exists()
    assert "- Records: 10" in seen
    piped = subprocess.run(
        [sys.executable, "-m", "flowtrail", "show", "filters-run", *store],
        cwd=folder,
        env={**env(), "PAGER": str(script), "LINES": "5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0 and "Summary:" in piped.stdout
    assert not paged.exists()


# ---------------------------------------------------------------------- 1M records

BIG_RECORDS = 1_000_000
BIG_SPANS = 100_000
#: Peak RSS allowed to ``show`` of the big run (issue 7's target).
MAX_RSS_MB = 200


def measured(args: list[str], cwd: Path) -> tuple[list[bytes], int, float]:
    """Run ``flowtrail ARGS``, reading its stdout as it comes; return the first and last
    lines, the number of record lines, and the process's own peak RSS in MB."""
    result = cwd / "peak-rss"
    process = subprocess.Popen(
        peak_rss_argv([sys.executable, "-m", "flowtrail", *args], result),
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    head: list[bytes] = []
    tail = b""
    records = 0
    rest = b""
    while chunk := process.stdout.read(1 << 20):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        records += sum(1 for line in lines if line.lstrip().startswith(b"["))
        if len(head) < 50:
            head += lines[: 50 - len(head)]
        tail = (tail + chunk)[-4000:]
    assert process.wait() == 0
    return head + tail.split(b"\n"), records, peak_rss_mb(result)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_show_of_a_million_records_streams_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    store = tmp_path / ("big.db" if kind == "sqlite" else "traces")
    build_large_run(store, kind, records=BIG_RECORDS, spans=BIG_SPANS)
    url = f"sqlite:///{store}" if kind == "sqlite" else f"file://{store}"
    if kind == "sqlite":
        with sqlite3.connect(store) as conn:
            assert conn.execute("SELECT COUNT(*) FROM traces").fetchone() == (BIG_RECORDS,)

    lines, records, rss = measured(["show", "big-run", "--store", url], tmp_path)
    assert records == BIG_RECORDS  # every record printed once, none held back or lost
    assert lines[2].startswith(b"\xe2\x86\x92 workflow.big-etl")  # "→ workflow.big-etl"
    assert b"- Records: 1000000" in lines
    assert b"- Spans: 100000 (job 999, stage 99000, workflow 1)" in lines
    assert rss < MAX_RSS_MB, f"show of {BIG_RECORDS} records peaked at {rss:.0f} MB"

    lines, records, rss = measured(["show", "big-run", "--store", url, "--summary"], tmp_path)
    assert lines[0] == b"Summary:" and b"- Status: error" in lines
    assert any(
        line.startswith(b"- First Failure: stage.stage-0: ValueError: bad row 5000")
        for line in lines
    )
    assert rss < MAX_RSS_MB

    lines, records, rss = measured(
        ["show", "big-run", "--store", url, "--errors", "--level", "error"], tmp_path
    )
    assert records == 11  # the failed stages' exception records
    assert rss < MAX_RSS_MB
