"""The command line through its real entry point (the installed ``flowtrail`` script):
demo, runs, show (human and JSON), stats, search, report, tail, the --store URLs, and the
messages for bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from conftest import ROOT
from flowtrail.formats.document import RUN_SCHEMA

RUN_ID = re.compile(r"Demo run (demo-\S+) finished")
FAILED_ID = re.compile(r"Demo run (demo-\S+) finished \(error")


def flowtrail_script() -> str:
    beside = Path(sys.executable).parent / "flowtrail"
    if beside.exists():
        return str(beside)
    found = shutil.which("flowtrail")
    if found is None:
        pytest.fail(
            "the `flowtrail` console script is not installed: run `pip install -e .` in "
            f"{ROOT} so that the entry point exists"
        )
    return found


def cli(*args: str, cwd: Path, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_") and k != "TRACEPARENT"
    }
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    result = subprocess.run(
        [flowtrail_script(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if ok:
        assert result.returncode == 0, (
            f"flowtrail {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def run_demo(cwd: Path, *args: str) -> tuple[str, subprocess.CompletedProcess]:
    result = cli("demo", *args, cwd=cwd)
    match = RUN_ID.search(result.stdout)
    assert match is not None, result.stdout
    return match.group(1), result


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, subprocess.CompletedProcess]:
    """One demo run into the default store (./logs/flowtrail.db) of its own directory."""
    folder = tmp_path_factory.mktemp("cli")
    run_id, result = run_demo(folder)
    return folder, run_id, result


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(RUN_SCHEMA)


# ---------------------------------------------------------------------- default store


def test_demo_prints_records_and_span_lines(demo) -> None:
    folder, run_id, result = demo
    assert (folder / "logs" / "flowtrail.db").is_file()
    assert "→ workflow demo-etl" in result.stdout
    assert "[WORKFLOW]: start demo-etl" in result.stdout
    assert re.search(r"← job extract \(\d+\.\dms\) ✓", result.stdout)
    assert re.search(r"← stage validate \(\d+\.\dms\) ✗ TransientError", result.stderr)
    assert f"flowtrail show {run_id}" in result.stdout


def test_runs(demo) -> None:
    folder, run_id, _ = demo
    lines = cli("runs", cwd=folder).stdout.splitlines()
    assert lines[0].split("\t") == [
        "run_id",
        "workflow",
        "start",
        "duration",
        "status",
        "records",
        "errors",
        "failed_spans",
    ]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    row = rows[run_id]
    assert (row[0], row[1], row[4], row[5], row[6], row[7]) == (
        run_id,
        "demo-etl",
        "ok",
        "27",  # with the exception record of the validate attempt that failed
        "1",
        "1",  # the validate attempt that failed and was retried
    )
    failed_id = FAILED_ID.search(demo[2].stdout).group(1)
    assert rows[failed_id][4] == "error"

    summaries = {s["run_id"]: s for s in json.loads(cli("runs", "--json", cwd=folder).stdout)}
    summary = summaries[run_id]
    assert (summary["spans"], summary["span_errors"], summary["status"]) == (12, 1, "ok")
    assert (summary["retried"], summary["failures"]) == (1, 0)
    assert summary["duration_s"] > 0
    store = folder / "logs" / "flowtrail.db"
    nothing = f"No runs found in SQLite store {store}."
    failed = cli("runs", "--status", "error", cwd=folder).stdout.splitlines()
    assert [line.split("\t")[0] for line in failed[1:]] == [failed_id]
    assert cli("runs", "--status", "running", cwd=folder).stdout.strip() == nothing
    assert cli("runs", "--workflow", "other", cwd=folder).stdout.strip() == nothing


def test_show_json_follows_the_schema(demo, validator) -> None:
    folder, run_id, _ = demo
    document = json.loads(cli("show", run_id, "--format", "json", cwd=folder).stdout)
    validator.validate(document)
    assert document["run_id"] == run_id
    assert document["workflow_name"] == "demo-etl"
    assert document["status"] == "ok"
    assert len(document["spans"]) == 12
    assert len(document["logs"]) == 27
    assert len({s["trace_id"] for s in document["spans"]}) == 1
    assert document["trace_id"] == document["spans"][0]["trace_id"]
    assert all(log["trace_id"] == document["trace_id"] for log in document["logs"])
    operations = [s["operation"] for s in document["spans"]]
    assert operations[0] == "workflow.demo-etl"
    assert operations.count("stage.validate") == 2
    metrics = document["metrics"]
    assert (metrics["span_count"], metrics["node_count"], metrics["error_count"]) == (12, 11, 1)
    failed = [s for s in document["spans"] if s["status"] == "error"]
    assert [s["operation"] for s in failed] == ["stage.validate"]
    assert failed[0]["events"][-1]["name"] == "exception"


def test_show_human_tree(demo) -> None:
    folder, run_id, _ = demo
    out = cli("show", run_id, cwd=folder).stdout
    lines = out.splitlines()
    assert lines[0].startswith("Workflow Trace: ")
    assert lines[1] == f"Run: {run_id}"
    assert lines[2].startswith("→ workflow.demo-etl [")
    assert re.fullmatch(r"← workflow\.demo-etl \(\d+\.\dms\) ✓", lines[lines.index("") - 1])
    assert sum(line.lstrip().startswith("→ ") for line in lines) == 12
    assert sum(line.lstrip().startswith("← ") for line in lines) == 12
    assert "  → job.extract [stages=2]" in lines
    assert "    → stage.connect [attempt=1, result=ok]" in lines
    assert "      [DEBUG] opening connection to the source bucket" in lines
    assert any(
        re.fullmatch(r"    ← stage\.validate \(\d+\.\dms\) ✗ TransientError: schema .*", line)
        for line in lines
    )
    assert "    [WARNING] [STAGE]: validate failed on attempt 1; retrying" in lines
    assert "Summary:" in lines
    assert "- Spans: 12 (job 4, stage 7, workflow 1)" in lines
    assert "- Status: ok (retried): 1 failed attempt passed when retried" in lines
    assert "- Failures: 0 (1 span(s) ended in error, 1 error record(s))" in lines
    assert "- Success Rate: 91% of nodes ended ok (10 of 11)" in lines
    assert not any(line.startswith("- First Failure") for line in lines)

    text = cli("show", run_id, "--format", "text", cwd=folder).stdout
    assert f"Run {run_id}  workflow=demo-etl  status=ok (retried)  records=27  errors=1" in text
    assert "[STAGE]: validate failed on attempt 1; retrying" in text


def test_stats(demo) -> None:
    folder, run_id, _ = demo
    out = cli("stats", "--workflow", "demo-etl", cwd=folder).stdout
    lines = out.splitlines()
    assert lines[0].startswith("Statistics of workflow demo-etl (2 runs): 24 spans, 5 errors")
    assert lines[1] == "Run statuses: 1 ok, 1 error"
    assert lines[2].startswith("Run duration: min ")
    assert lines[3].split("\t") == [
        "span",
        "count",
        "errors",
        "success",
        "min",
        "p50",
        "p95",
        "max",
        "mean",
        "peak MB",
    ]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[4:]}
    assert len(rows) == 11
    assert rows["stage.validate"][1:4] == ["4", "2", "50%"]
    assert rows["job.extract"][1:4] == ["2", "0", "100%"]

    data = json.loads(cli("stats", "--workflow", "demo-etl", "--json", cwd=folder).stdout)
    by_name = {f"{s['kind']}.{s['name']}": s for s in data["by_name"]}
    validate = by_name["stage.validate"]
    assert (validate["count"], validate["errors"], validate["success_rate"]) == (4, 2, 0.5)
    assert data["run_statuses"] == {"ok": 1, "error": 1}
    assert validate["min_ms"] <= validate["p50_ms"] <= validate["p95_ms"] <= validate["max_ms"]
    assert by_name["stage.fit-model"]["min_ms"] >= 240.0  # three 80 ms epochs
    show = json.loads(cli("show", run_id, "--format", "json", cwd=folder).stdout)
    one_json = json.loads(cli("stats", "--run", run_id, "--json", cwd=folder).stdout)
    assert one_json["by_name"] == show["metrics"]["by_name"]
    assert one_json["status"] == show["status"] == "ok"

    one = cli("stats", "--run", run_id, cwd=folder).stdout
    assert one.startswith(f"Statistics of run {run_id}: 12 spans")
    assert one.splitlines()[1] == "Run status: ok (retried)"
    # With no option: the workflow of the newest run.
    assert cli("stats", cwd=folder).stdout.startswith("Statistics of workflow demo-etl")


def test_search(demo) -> None:
    folder, run_id, _ = demo
    line = cli("search", "retrying", "--run", run_id, cwd=folder).stdout.splitlines()[0]
    found_run, stamp, level, message = line.split("\t")
    assert (found_run, level) == (run_id, "warning")
    assert message == "[STAGE]: validate failed on attempt 1; retrying"

    warnings = cli("search", "--level", "warning", "--run", run_id, cwd=folder).stdout
    assert len(warnings.splitlines()) == 3  # two warnings and the exception record
    assert {line.split("\t")[2] for line in warnings.splitlines()} == {"warning", "exception"}
    assert len(cli("search", "--workflow", "demo-etl", cwd=folder).stdout.splitlines()) == 54
    assert len(cli("search", "epoch", "--run", run_id, cwd=folder).stdout.splitlines()) == 3
    nothing = f"No records found in SQLite store {folder / 'logs' / 'flowtrail.db'}."
    none = cli("search", "--workflow", "other", cwd=folder).stdout
    assert none.strip() == nothing
    assert cli("search", "--since", "2999-01-01T00:00:00+00:00", cwd=folder).stdout.strip() == (
        nothing
    )
    # The epochs were logged after the retry warning.
    before = cli("search", "epoch", "--run", run_id, "--until", stamp, cwd=folder).stdout
    assert before.strip() == nothing
    after = cli("search", "epoch", "--run", run_id, "--since", stamp, cwd=folder).stdout
    assert len(after.splitlines()) == 3


def test_report(demo, tmp_path: Path) -> None:
    folder, run_id, _ = demo
    target = tmp_path / "x.html"
    out = cli("report", run_id, "-o", str(target), cwd=folder).stdout
    assert out.strip() == f"Wrote {target} (12 spans, 27 records)."
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert run_id in page and "demo-etl" in page
    # The default name is the run id.
    cli("report", run_id, cwd=folder)
    assert (folder / f"{run_id}.html").is_file()


def test_tail(demo) -> None:
    folder, run_id, _ = demo
    out = cli("tail", run_id, "--idle-exit", "1", "--interval", "0.2", cwd=folder).stdout
    lines = out.splitlines()
    assert lines[0] == f"Following run {run_id} (Ctrl-C to stop)"
    levels = (" INFO ", " DEBUG ", " WARNING ", " EXCEPTION ")
    assert sum(any(level in line for level in levels) for line in lines) == 27
    ends = [line for line in lines if line.startswith("← ")]
    assert len(ends) == 12
    assert any(line.startswith("← stage.validate") and "✗" in line for line in ends)
    assert lines[-2].startswith("← workflow.demo-etl")
    assert lines[-1] == f"Run {run_id} ended: ok (retried)"
    failed_id = FAILED_ID.search(demo[2].stdout).group(1)
    newest = cli("tail", "--idle-exit", "0.5", "--interval", "0.2", cwd=folder).stdout
    assert newest.splitlines()[0] == f"Following run {failed_id} (Ctrl-C to stop)"
    assert newest.splitlines()[-1] == f"Run {failed_id} ended: error"


# ---------------------------------------------------------------------- other stores


def test_file_store_url(tmp_path: Path, validator) -> None:
    run_id, _ = run_demo(tmp_path, "--quiet", "--store", "file://traces")
    assert (tmp_path / "traces" / f"run_id={run_id}" / "spans.txt").is_file()
    assert not (tmp_path / "logs" / "flowtrail.db").exists()
    store = ("--store", "file://traces")
    assert run_id in cli("runs", *store, cwd=tmp_path).stdout
    document = json.loads(cli("show", run_id, "--format", "json", *store, cwd=tmp_path).stdout)
    validator.validate(document)
    assert len(document["spans"]) == 12
    assert "→ workflow.demo-etl" in cli("show", run_id, *store, cwd=tmp_path).stdout
    stats = cli("stats", "--workflow", "demo-etl", *store, cwd=tmp_path).stdout
    assert "stage.validate\t4\t2\t50%" in stats
    assert run_id in cli("search", "retrying", *store, cwd=tmp_path).stdout
    cli("report", run_id, "-o", "f.html", *store, cwd=tmp_path)
    assert (tmp_path / "f.html").stat().st_size > 0
    tail = cli("tail", run_id, "--idle-exit", "0.3", "--interval", "0.1", *store, cwd=tmp_path)
    assert tail.stdout.count("\n← ") == 12
    assert tail.stdout.splitlines()[-1] == f"Run {run_id} ended: ok (retried)"
    # A plain directory path works too.
    assert run_id in cli("runs", "--store", str(tmp_path / "traces"), cwd=tmp_path).stdout


def test_sqlite_store_urls(tmp_path: Path, validator) -> None:
    # sqlite:///relative.db is relative to the working directory; sqlite:////abs is absolute.
    run_id, _ = run_demo(tmp_path, "--quiet", "--store", "sqlite:///runs.db")
    assert (tmp_path / "runs.db").is_file()
    absolute = f"sqlite:///{tmp_path / 'runs.db'}"
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    for store in (("--store", "sqlite:///runs.db"), ("--store", "runs.db")):
        assert run_id in cli("runs", *store, cwd=tmp_path).stdout
    store = ("--store", absolute)
    assert run_id in cli("runs", *store, cwd=other_dir).stdout
    document = json.loads(cli("show", run_id, "--format", "json", *store, cwd=other_dir).stdout)
    validator.validate(document)
    assert document["run_id"] == run_id
    assert "stage.validate\t4\t2\t50%" in cli("stats", *store, cwd=other_dir).stdout
    assert run_id in cli("search", "retrying", *store, cwd=other_dir).stdout
    assert not (other_dir / "logs").exists()


# ---------------------------------------------------------------------- bad input


def test_unknown_run_id(demo) -> None:
    folder, _, _ = demo
    store = folder / "logs" / "flowtrail.db"
    for command in (("show", "no-such-run"), ("report", "no-such-run")):
        result = cli(*command, cwd=folder, ok=False)
        assert result.returncode == 2
        assert f"no run 'no-such-run' in SQLite store {store}" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (folder / "no-such-run.html").exists()


def test_run_id_that_would_leave_the_store(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    result = cli("show", "../../etc", "--store", "file://traces", cwd=tmp_path, ok=False)
    assert result.returncode == 2
    assert "run id '../../etc' is not allowed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["runs", "stats", "search", "demo"])
def test_bad_store_url(tmp_path: Path, command: str) -> None:
    result = cli(command, "--store", "bogus://somewhere", cwd=tmp_path, ok=False)
    assert result.returncode == 2
    assert "store URL 'bogus://somewhere' is not supported" in result.stderr
    assert "sqlite:///" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_sqlite_table_in_url(tmp_path: Path) -> None:
    result = cli("runs", "--store", "sqlite:///x.db?table=a;b", cwd=tmp_path, ok=False)
    assert result.returncode == 2
    assert "table_name" in result.stderr and "Traceback" not in result.stderr


def test_empty_store_and_bad_filters(tmp_path: Path) -> None:
    store = tmp_path / "logs" / "flowtrail.db"
    store.parent.mkdir()
    store.touch()  # a writer's empty database: a store without runs
    assert cli("runs", cwd=tmp_path).stdout.strip() == f"No runs found in SQLite store {store}."
    for command, message in (
        (("stats",), f"no runs in SQLite store {store}"),
        (("tail",), f"no runs in SQLite store {store} yet"),
    ):
        result = cli(*command, cwd=tmp_path, ok=False)
        assert result.returncode == 1
        assert message in result.stderr
    result = cli("search", "--level", "loud", cwd=tmp_path, ok=False)
    assert result.returncode == 2
    assert "unknown level 'loud'" in result.stderr
    result = cli("show", "--format", "xml", "some-run", cwd=tmp_path, ok=False)
    assert result.returncode == 2
    assert "'xml' is not one of" in result.stderr
