"""Issue 7 points 1, 2, 4 and 5 through the real CLI on real SQLite and file stores: one
run status everywhere (runs, runs --status, show, show --format json, report, stats, the
readers' runs()), writers that are alive, SIGTERM'd or SIGKILL'd, retried and failed
stages, the demo's failed run, tail, and failures found by search."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, run_python

STORES = {"sqlite": "flowtrail.db", "file": "traces"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


def cli(
    *args: str, cwd: Path, code: int = 0, timeout: float = 60, env: dict[str, str] | None = None
) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flowtrail", *args],
        cwd=cwd,
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == code, (args, result.stdout, result.stderr)
    return result.stdout


def handler_code(kind: str) -> str:
    if kind == "sqlite":
        return "SQLiteHandler(path='flowtrail.db', flush_interval=0.05)"
    return "FileHandler(path='traces', flush_interval=0.05)"


def writer(kind: str, body: str) -> str:
    """A child's program writing run ``r1`` of workflow ``wf`` to the store."""
    return (
        "import sys, time\n"
        "from flowtrail import get_trace, SQLiteHandler, FileHandler\n"
        f"trace = get_trace('r1', handlers=[{handler_code(kind)}], "
        "extras={'workflow_name': 'wf'})\n" + body
    )


def runs_json(folder: Path, kind: str) -> dict[str, Any]:
    out = cli("runs", "--json", "--store", STORES.get(kind, kind), cwd=folder)
    return {s["run_id"]: s for s in json.loads(out)}


def wait_for_status(folder: Path, kind: str, status: str, deadline: float = 8.0) -> dict:
    end = time.monotonic() + deadline
    last: dict = {}
    while time.monotonic() < end:
        last = runs_json(folder, kind).get("r1", {})
        if last.get("status") == status:
            return last
        time.sleep(0.1)
    raise AssertionError(f"run r1 never became {status!r}: {last}")


def status_everywhere(folder: Path, kind: str, run_id: str = "r1") -> dict[str, str]:
    """The status of one run as each reading path tells it (``kind``: a key of `STORES`
    or a store path)."""
    path = STORES.get(kind, kind)
    store = ("--store", path)
    found: dict[str, str] = {}
    found["runs --json"] = runs_json(folder, kind)[run_id]["status"]
    table = cli("runs", *store, cwd=folder).splitlines()
    row = next(line.split("\t") for line in table[1:] if line.startswith(run_id + "\t"))
    found["runs"] = row[4]
    document = json.loads(cli("show", run_id, "--format", "json", *store, cwd=folder))
    found["show --format json"] = document["status"]
    text = cli("show", run_id, *store, cwd=folder)
    status_line = next(line for line in text.splitlines() if line.startswith("- Status: "))
    found["show"] = status_line[len("- Status: ") :].split(" ")[0].rstrip(":")
    cli("report", run_id, "-o", "r.html", *store, cwd=folder)
    page = (folder / "r.html").read_text(encoding="utf-8")
    found["report"] = re.search(r"class='status status-(\w+)'", page).group(1)  # type: ignore[union-attr]
    stats = subprocess.run(
        [sys.executable, "-m", "flowtrail", "stats", "--run", run_id, *store],
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if stats.returncode == 0:
        stats_text = stats.stdout.splitlines()[1]
        found["stats"] = stats_text[len("Run status: ") :].split(" ")[0]
        as_json = cli("stats", "--run", run_id, "--json", *store, cwd=folder)
        found["stats --json"] = json.loads(as_json)["status"]
    else:  # no finished span yet: the message says how the run is
        found["stats"] = re.search(r"\(status (\w+)", stats.stderr).group(1)  # type: ignore[union-attr]
    reader = run_python(
        "import sys\nfrom flowtrail.stores import open_store\n"
        f"print({{s.run_id: s.status for s in open_store({path!r}).runs()}}[{run_id!r}])",
        folder,
    )
    assert reader.returncode == 0, reader.stderr
    found["runs()"] = reader.stdout.strip()
    return found


def assert_one_status(folder: Path, kind: str, status: str, run_id: str = "r1") -> None:
    found = status_everywhere(folder, kind, run_id)
    assert set(found.values()) == {status}, found


OPEN_SPANS_THEN_WAIT = """
with trace.span('workflow', name='wf'):
    with trace.span('job', name='load'):
        trace.info('working')
        trace.flush()
        print('ready', flush=True)
        time.sleep(60)
"""


def start_writer(folder: Path, kind: str, body: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", writer(kind, body)],
        cwd=folder,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


@pytest.mark.parametrize("kind", list(STORES))
def test_live_writer_is_running_then_sigterm_is_interrupted(tmp_path: Path, kind: str) -> None:
    child = start_writer(tmp_path, kind, OPEN_SPANS_THEN_WAIT)
    try:
        running = wait_for_status(tmp_path, kind, "running")
        assert running["failures"] == 0
        failed = cli("runs", "--status", "running", "--store", STORES[kind], cwd=tmp_path)
        assert "r1\t" in failed
        assert_one_status(tmp_path, kind, "running")
        os.kill(child.pid, signal.SIGTERM)
        child.wait(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGTERM
    summary = runs_json(tmp_path, kind)["r1"]
    assert (summary["status"], summary["interrupted_by"]) == ("interrupted", "SIGTERM")
    assert_one_status(tmp_path, kind, "interrupted")
    table = cli("runs", "--status", "interrupted", "--store", STORES[kind], cwd=tmp_path)
    assert "r1\t" in table
    # The stopped record is level error, but a signal is not a failure of the run.
    assert cli("runs", "--status", "error", "--store", STORES[kind], cwd=tmp_path).startswith(
        "No runs found"
    )


@pytest.mark.parametrize("kind", list(STORES))
def test_sigkilled_writer_is_interrupted(tmp_path: Path, kind: str) -> None:
    child = start_writer(tmp_path, kind, OPEN_SPANS_THEN_WAIT)
    try:
        wait_for_status(tmp_path, kind, "running")  # its span starts are stored
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    summary = runs_json(tmp_path, kind)["r1"]
    # No stopped record, no span ended: only the span starts and a writer that is gone.
    assert (summary["status"], summary["interrupted_by"], summary["spans"]) == (
        "interrupted",
        None,
        0,
    )
    assert_one_status(tmp_path, kind, "interrupted")


RETRIED_THEN_FAILED = """
def attempt(n, fail_until):
    with trace.span('stage', name='validate', attempt=n):
        trace.info(f'attempt {n}')
        if n <= fail_until:
            raise ValueError(f'schema registry timed out on attempt {n}')

with trace.span('workflow', name='wf'):
    with trace.span('job', name='transform'):
        for n in (1, 2):
            try:
                attempt(n, int(sys.argv[1]))
                break
            except ValueError:
                trace.warning('retrying')
trace.flush()
"""


@pytest.mark.parametrize("kind", list(STORES))
def test_retried_stage_is_ok_and_a_stage_that_fails_for_good_is_error(
    tmp_path: Path, kind: str
) -> None:
    code = writer(kind, RETRIED_THEN_FAILED)
    result = subprocess.run(
        [sys.executable, "-c", code, "1"], cwd=tmp_path, env=_env(), capture_output=True
    )
    assert result.returncode == 0, result.stderr
    summary = runs_json(tmp_path, kind)["r1"]
    assert (summary["status"], summary["retried"], summary["failures"]) == ("ok", 1, 0)
    assert summary["span_errors"] == 1 and summary["errors"] == 1  # the recorded exception
    assert_one_status(tmp_path, kind, "ok")
    table = cli("runs", "--status", "retried", "--store", STORES[kind], cwd=tmp_path)
    assert "r1\t" in table
    human = cli("show", "r1", "--store", STORES[kind], cwd=tmp_path)
    assert "- Status: ok (retried): 1 failed attempt passed when retried" in human
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<span class='status status-ok' id='run-status'>ok (retried)</span>" in page

    # Both attempts fail: the stage failed for good, the run failed, once.
    (tmp_path / "flowtrail.db").unlink(missing_ok=True)
    if kind == "file":
        import shutil

        shutil.rmtree(tmp_path / "traces")
    result = subprocess.run(
        [sys.executable, "-c", code, "2"], cwd=tmp_path, env=_env(), capture_output=True
    )
    assert result.returncode == 0, result.stderr
    summary = runs_json(tmp_path, kind)["r1"]
    assert (summary["status"], summary["retried"], summary["failures"]) == ("error", 0, 2)
    assert_one_status(tmp_path, kind, "error")
    failed = cli("show", "--failed", "--store", STORES[kind], cwd=tmp_path)
    assert "- First Failure: stage.validate: ValueError: schema registry timed out" in failed


NESTED_FAILURE = """
try:
    with trace.span('workflow', name='wf'):
        with trace.span('job', name='load'):
            with trace.span('stage', name='write'):
                trace.info('writing')
                raise PermissionError('warehouse.sales is read-only')
except PermissionError:
    pass
trace.flush()
"""


@pytest.mark.parametrize("kind", list(STORES))
def test_one_exception_through_nested_spans_is_one_failure_and_searchable(
    tmp_path: Path, kind: str
) -> None:
    result = run_python(writer(kind, NESTED_FAILURE), tmp_path)
    assert result.returncode == 0, result.stderr
    # The console is not among the handlers: nothing printed.
    summary = runs_json(tmp_path, kind)["r1"]
    assert (summary["status"], summary["failures"], summary["span_errors"]) == ("error", 1, 3)
    assert summary["errors"] == 1  # one exception record, written by the innermost span
    human = cli("show", "r1", "--store", STORES[kind], cwd=tmp_path).splitlines()
    assert "- Failures: 1 (3 span(s) ended in error, 1 error record(s))" in human
    assert "- Nodes Executed: 2 (spans below the workflow, retried attempts included)" in human
    assert "- Success Rate: 0% of nodes ended ok (0 of 2)" in human
    store = ("--store", STORES[kind])
    for args in (("read-only",), ("--level", "error"), ("PermissionError", "--level", "error")):
        (line,) = cli("search", *args, *store, cwd=tmp_path).splitlines()
        run_id, _, level, message = line.split("\t")
        assert (run_id, level) == ("r1", "exception")
        assert message == "stage write failed: PermissionError: warehouse.sales is read-only"
    document = json.loads(cli("show", "r1", "--format", "json", *store, cwd=tmp_path))
    (record,) = [log for log in document["logs"] if log["level"] == "exception"]
    write = next(s for s in document["spans"] if s["name"] == "write")
    assert record["span_id"] == write["span_id"]
    assert record["exception_type"] == "PermissionError"
    assert record["stack_trace"].startswith("Traceback (most recent call last):")
    assert record["stack_trace"].rstrip().endswith("PermissionError: warehouse.sales is read-only")


def test_console_prints_type_message_and_traceback(tmp_path: Path) -> None:
    code = """
from flowtrail import get_trace, ConsoleHandler
trace = get_trace('c1', handlers=[ConsoleHandler()])
try:
    {}['missing']
except KeyError:
    trace.exception('lookup failed')
try:
    with trace.span('stage', name='parse'):
        int('x7')
except ValueError:
    pass
"""
    (tmp_path / "job.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "job.py"], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr
    # As stdlib's logger.exception: the line, then the traceback ending with type: message.
    lookup = err[err.index("lookup failed") :]
    assert lookup.splitlines()[1] == "Traceback (most recent call last):"
    assert "KeyError: 'missing'" in lookup
    escaped = err[err.index("stage parse failed") :]
    assert "Traceback (most recent call last):" in escaped
    assert "    int('x7')" in escaped
    assert "ValueError: invalid literal for int() with base 10: 'x7'" in escaped
    assert re.search(r"← stage parse \(\d+\.\dms\) ✗ ValueError", err)
    # Recorded once: a single traceback for each exception.
    assert err.count("Traceback (most recent call last):") == 2


@pytest.mark.parametrize("kind", list(STORES))
def test_show_failed_right_after_demo(tmp_path: Path, kind: str) -> None:
    args = ("--quiet", "--store", STORES[kind]) if kind == "file" else ()
    out = cli("demo", *args, cwd=tmp_path)
    ok_id = re.search(r"Demo run (\S+) finished \(ok", out).group(1)  # type: ignore[union-attr]
    failed_id = re.search(r"Demo run (\S+) finished \(error", out).group(1)  # type: ignore[union-attr]
    path = "logs/flowtrail.db" if kind == "sqlite" else "traces"
    commands = re.findall(r"^  (flowtrail .*?)\s+# ", out, re.MULTILINE)
    assert f"flowtrail show --failed --store {path}" in commands
    assert f"flowtrail show {ok_id} --store {path}" in commands
    # The printed commands work as printed, from the same directory.
    for command in commands:
        words = command.split()[1:]
        if words[0] == "report":
            words[words.index("-o") + 1] = str(tmp_path / "x.html")
        cli(*words, cwd=tmp_path)
    failed = cli("show", "--failed", "--store", path, cwd=tmp_path)
    assert f"Run: {failed_id}" in failed
    assert "- Status: error" in failed
    assert "- First Failure: stage.write: PermissionError" in failed
    assert_one_status(tmp_path, path, "error", failed_id)
    assert_one_status(tmp_path, path, "ok", ok_id)
    summaries = json.loads(cli("runs", "--json", "--store", path, cwd=tmp_path))
    statuses = {s["run_id"]: (s["status"], s["retried"]) for s in summaries}
    assert statuses == {ok_id: ("ok", 1), failed_id: ("error", 1)}


def test_demo_names_the_store_it_wrote_to(tmp_path: Path) -> None:
    # A config file moves the store: the printed commands name it.
    (tmp_path / "flowtrail.toml").write_text('log_dir = "elsewhere"\n')
    out = cli("demo", cwd=tmp_path)
    assert "--store elsewhere/flowtrail.db" in out
    assert (tmp_path / "elsewhere" / "flowtrail.db").is_file()
    assert "- Status: error" in cli("show", "--failed", "--store", "elsewhere", cwd=tmp_path)
    # So does FLOWTRAIL_STORE, where the reading commands look without --store.
    moved = {"FLOWTRAIL_STORE": str(tmp_path / "moved.db")}
    out = cli("demo", "--quiet", cwd=tmp_path, env=moved)
    assert "--store moved.db" in out
    assert "- Status: error" in cli("show", "--failed", cwd=tmp_path, env=moved)
    # And with no configuration at all, plain `show --failed` reads the demo's store.
    (tmp_path / "flowtrail.toml").unlink()
    cli("demo", "--quiet", cwd=tmp_path)
    assert "- Status: error" in cli("show", "--failed", cwd=tmp_path)


SLOW_WORKFLOW = """
print('ready', flush=True)
with trace.span('workflow', name='wf'):
    for i in range(6):
        with trace.span('stage', name=f's{i}'):
            trace.info(f'step {i}')
            time.sleep(0.15)
    trace.info('[WORKFLOW]: wf finished')
"""


@pytest.mark.parametrize("kind", list(STORES))
def test_tail_follows_a_run_being_written_and_stops_when_it_ends(tmp_path: Path, kind: str) -> None:
    child = start_writer(tmp_path, kind, SLOW_WORKFLOW)
    try:
        wait_for_status(tmp_path, kind, "running")
        tail = subprocess.run(
            [sys.executable, "-m", "flowtrail", "tail", "r1", "--interval", "0.1"]
            + ["--store", STORES[kind]],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,  # no --idle-exit: it stops by itself
        )
        child.wait(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert lines[0] == "Following run r1 (Ctrl-C to stop)"
    body = lines[1:-1]
    expected = []
    for i in range(6):
        expected.append(f"INFO      step {i}")
        expected.append(f"← stage.s{i}")
    expected += ["INFO      [WORKFLOW]: wf finished", "← workflow.wf"]
    # Every record and span end once, in the order written.
    assert len(body) == len(expected), body
    for line, start in zip(body, expected, strict=True):
        assert start in line, (line, start)
    assert lines[-1] == "Run r1 ended: ok"
    # A finished run: the same lines, and it stops at once.
    again = cli("tail", "r1", "--interval", "0.1", "--store", STORES[kind], cwd=tmp_path)
    assert again.splitlines() == lines


def test_tail_idle_exit_on_a_run_without_spans(tmp_path: Path) -> None:
    result = run_python(writer("sqlite", "trace.info('one')\ntrace.flush()\n"), tmp_path)
    assert result.returncode == 0, result.stderr
    started = time.monotonic()
    store = ("--store", "flowtrail.db")
    out = cli("tail", "r1", "--idle-exit", "0.5", "--interval", "0.1", *store, cwd=tmp_path)
    assert time.monotonic() - started < 20
    assert [line.split()[-1] for line in out.splitlines()[1:]] == ["one"]
    assert cli("tail", "nope", *store, cwd=tmp_path, code=2) == ""
