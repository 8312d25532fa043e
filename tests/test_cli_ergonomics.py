"""Issue 7, points 3, 6 and 7, through the real command line (``python -m flowtrail`` in a
subprocess) on real SQLite and file stores:

- run ids are never cut short: ``runs`` at 80 columns on a terminal (a pty) and piped,
  the console prefix is an id ``show`` accepts, and every command that takes a run id
  takes any unique prefix of it ("did you mean ..." otherwise, exit code 2);
- time filters: ISO dates and times, relative times, today/yesterday; anything else is
  exit code 2 naming the option, the value and the accepted forms;
- stores say where they are: missing paths and files that are not flowtrail stores are
  one-line errors naming the path, "nothing found" names the store, a directory holding
  flowtrail.db reads it, log_dir in a config file is relative to that file,
  FLOWTRAIL_STORE sets the default store, an unknown FLOWTRAIL_* variable is a warning.
"""

from __future__ import annotations

import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT, run_python
from flowtrail.cli import main
from flowtrail.handlers import FileHandler, SQLiteHandler
from flowtrail.runids import AmbiguousRunId, UnknownRunId, resolve_run_id
from flowtrail.timeparse import TimeFilterError, parse_time_filter

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_") and k != "TRACEPARENT"
    }
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "80"
    env.update(extra or {})
    return env


def cli(
    *args: str, cwd: Path, code: int | None = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m flowtrail ARGS`` piped; asserts the exit code when ``code`` is given."""
    result = subprocess.run(
        [sys.executable, "-m", "flowtrail", *args],
        cwd=cwd,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if code is not None:
        assert result.returncode == code, (
            f"flowtrail {' '.join(args)} exited {result.returncode}, not {code}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def cli_tty(*args: str, cwd: Path, columns: int = 80) -> tuple[int, str]:
    """``python -m flowtrail ARGS`` on a pseudo-terminal of ``columns`` columns: the
    rich output a person sees (escape codes removed)."""
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "flowtrail", *args],
        cwd=cwd,
        env=_env({"COLUMNS": str(columns), "TERM": "xterm-256color"}),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    code = process.wait(timeout=60)
    os.close(master)
    return code, ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")


WRITE_RUNS = """
import sys
from flowtrail import FileHandler, SQLiteHandler, get_trace
kind, path, *ids = sys.argv[1:]
handler = SQLiteHandler(path=path) if kind == "sqlite" else FileHandler(path=path)
for run_id in ids:
    with get_trace(run_id, handlers=[handler], extras={"workflow_name": "wf"}) as trace:
        with trace.span("job", name="load"):
            trace.info(f"hello from {run_id}")
            trace.warning("a warning")
"""


def write_runs(cwd: Path, kind: str, path: str, *run_ids: str) -> None:
    """Runs ``run_ids`` written by a child process, each a job span with two records."""
    result = subprocess.run(
        [sys.executable, "-c", WRITE_RUNS, kind, path, *run_ids],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


STORES = {
    "sqlite": ("sqlite", "runs.db", "runs.db"),
    "file": ("file", "traces", "file://traces"),
}


# ------------------------------------------------------------------- point 3: run ids


def test_runs_keeps_whole_ids_at_80_columns(tmp_path: Path) -> None:
    ids = [
        "nightly-ingest-20261202T091500-0a1b2c3d",  # 39 characters
        "nightly-ingest-20261202T091500-0a1b2c3e",
        "short",
    ]
    write_runs(tmp_path, "sqlite", "runs.db", *ids)
    code, screen = cli_tty("runs", "--store", "runs.db", cwd=tmp_path)
    assert code == 0, screen
    lines = screen.splitlines()
    for run_id in ids:
        assert any(re.search(rf"(^|\s){re.escape(run_id)}(\s|$)", line) for line in lines), (
            run_id,
            screen,
        )
    assert max(len(line) for line in lines) <= 80, screen
    assert "…" not in screen
    # Piped, each row holds the whole id in its first field.
    piped = cli("runs", "--store", "runs.db", cwd=tmp_path).stdout.splitlines()
    assert sorted(line.split("\t")[0] for line in piped[1:]) == sorted(ids)


CONSOLE_RUN = """
import sys
from flowtrail import get_trace
run_id = sys.argv[1] if len(sys.argv) > 1 else None
with get_trace(run_id, extras={"workflow_name": "wf"}) as trace:
    trace.info("the line a person copies the id from")
child = get_trace("child-" + trace.run_id[-8:], parent_run_id=trace.run_id)
child.info("a child run")
child.flush()
"""


@pytest.mark.parametrize("given", [None, "x" * 30 + "-a-very-long-run-identifier-0123456789"])
def test_console_prefix_is_an_id_show_accepts(tmp_path: Path, given: str | None) -> None:
    """The default console line shows the run id whole (a generated id) or in a
    head…tail form for a long one; either pasted into `show` reads the run."""
    args = [given] if given else []
    result = subprocess.run(
        [sys.executable, "-c", CONSOLE_RUN, *args],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "the line a person copies" in x)
    shown = re.search(r"\] \((\S+)\) the line", line).group(1)
    if given is None:
        assert re.fullmatch(r"run-\d{8}T\d{6}-[0-9a-f]{8}", shown), line
    else:
        assert "…" in shown and len(shown) <= 40, line
    show = cli("show", shown, "--format", "json", "--no-children", cwd=tmp_path).stdout
    document = json.loads(show)
    assert document["run_id"] == (given or shown)
    assert [log["message"] for log in document["logs"]] == ["the line a person copies the id from"]
    # A child run's line shows "parent -> child", each part pasteable.
    child_line = next(x for x in result.stdout.splitlines() if "a child run" in x)
    parent_part, child_part = re.search(r"\((\S+) -> (\S+)\) a child", child_line).groups()
    assert parent_part == shown
    assert json.loads(cli("show", child_part, "--format", "json", cwd=tmp_path).stdout)["logs"]


@pytest.mark.parametrize("kind", list(STORES))
def test_every_command_takes_a_unique_prefix(tmp_path: Path, kind: str) -> None:
    kind, path, url = STORES[kind]
    ids = ["etl-20261202T090000-aaaa1111", "etl-20261202T090000-bbbb2222", "other-run"]
    write_runs(tmp_path, kind, path, *ids)
    store = ("--store", url)
    wanted = ids[1]
    prefix = "etl-20261202T090000-b"
    document = json.loads(cli("show", prefix, "--format", "json", *store, cwd=tmp_path).stdout)
    assert document["run_id"] == wanted
    assert f"Run: {wanted}" in cli("show", prefix, *store, cwd=tmp_path).stdout
    cli("report", prefix, "-o", "r.html", *store, cwd=tmp_path)
    assert wanted in (tmp_path / "r.html").read_text(encoding="utf-8")
    stats = cli("stats", "--run", prefix, *store, cwd=tmp_path).stdout
    assert stats.startswith(f"Statistics of run {wanted}:")
    tail = cli("tail", prefix, "--idle-exit", "0.2", "--interval", "0.05", *store, cwd=tmp_path)
    assert tail.stdout.startswith(f"Following run {wanted}")
    assert f"hello from {wanted}" in tail.stdout
    found = cli("search", "hello", "--run", prefix, *store, cwd=tmp_path).stdout.splitlines()
    assert [line.split("\t")[0] for line in found] == [wanted]
    # The whole id still works, and an id that is a prefix of no other.
    assert json.loads(cli("show", "other", "--format", "json", *store, cwd=tmp_path).stdout)[
        "run_id"
    ] == ("other-run")


@pytest.mark.parametrize("kind", list(STORES))
def test_ambiguous_and_unknown_run_ids_say_did_you_mean(tmp_path: Path, kind: str) -> None:
    kind, path, url = STORES[kind]
    ids = ["etl-20261202T090000-aaaa1111", "etl-20261202T090000-bbbb2222"]
    write_runs(tmp_path, kind, path, *ids)
    store = ("--store", url)
    where = str(tmp_path / path)
    commands = [
        ("show", "{}"),
        ("report", "{}"),
        ("stats", "--run", "{}"),
        ("tail", "{}", "--idle-exit", "0.1"),
        ("search", "--run", "{}"),
    ]
    for command in commands:
        ambiguous = cli(*(a.format("etl-") for a in command), *store, cwd=tmp_path, code=2)
        text = ambiguous.stderr
        assert "'etl-' is ambiguous" in text and "did you mean" in text, text
        assert all(run_id in text for run_id in ids), text
        assert where in text, text
        unknown = cli(
            *(a.format("etl-20261202T090000-bbbb2223") for a in command),
            *store,
            cwd=tmp_path,
            code=2,
        )
        text = unknown.stderr
        assert "no run 'etl-20261202T090000-bbbb2223'" in text and where in text, text
        assert "did you mean" in text and ids[1] in text, text
    assert not (tmp_path / "etl-.html").exists()


def test_resolve_run_id_python_api(tmp_path: Path) -> None:
    write_runs(tmp_path, "sqlite", "runs.db", "a-1", "a-2", "b-1")
    store = SQLiteHandler(path=str(tmp_path / "runs.db"))
    assert resolve_run_id(store, "b") == "b-1"
    assert resolve_run_id(store, "a-2") == "a-2"
    with pytest.raises(AmbiguousRunId) as ambiguous:
        resolve_run_id(store, "a")
    assert ambiguous.value.candidates == ["a-1", "a-2"]
    assert isinstance(ambiguous.value, LookupError)
    with pytest.raises(UnknownRunId) as unknown:
        resolve_run_id(store, "c-1")
    assert "b-1" in unknown.value.candidates and "did you mean" in str(unknown.value)
    assert store.run_ids("a") == ["a-1", "a-2"] and store.run_ids(limit=1) == ["a-1"]


# ------------------------------------------------------------------- point 6: times


def test_parse_time_filter_forms() -> None:
    plus7 = timezone(timedelta(hours=7))
    now = datetime(2026, 12, 2, 3, 30, tzinfo=timezone.utc)  # 10:30 on Dec 2 at +07:00
    parse = lambda text, tz=None: parse_time_filter(text, tz=tz, now=now)  # noqa: E731
    assert parse("2026-11-21T09:00:00+01:00") == datetime(2026, 11, 21, 8, tzinfo=timezone.utc)
    assert parse("2026-11-21T09:00:00Z") == datetime(2026, 11, 21, 9, tzinfo=timezone.utc)
    assert parse("2026-11-21") == datetime(2026, 11, 21, tzinfo=timezone.utc)
    assert parse("2026-11-21", plus7) == datetime(2026, 11, 21, tzinfo=plus7)
    assert parse("2026-11-21T09:00", plus7) == datetime(2026, 11, 21, 9, tzinfo=plus7)
    assert parse("30m") == now - timedelta(minutes=30)
    assert parse("2h") == now - timedelta(hours=2)
    assert parse("1d") == now - timedelta(days=1)
    assert parse("1w") == now - timedelta(weeks=1)
    assert parse("today") == datetime(2026, 12, 2, tzinfo=timezone.utc)
    assert parse("yesterday") == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert parse("today", plus7) == datetime(2026, 12, 2, tzinfo=plus7)
    for bad in ("last week", "2026", "1y", "-2h", "2026-13-01", "soon", ""):
        with pytest.raises(TimeFilterError, match="is not a time"):
            parse(bad)


@pytest.mark.parametrize("kind", list(STORES))
def test_time_filters_of_search_runs_and_stats(tmp_path: Path, kind: str) -> None:
    kind, path, url = STORES[kind]
    write_runs(tmp_path, kind, path, "timed-run")
    store = ("--store", url)
    today = datetime.now(timezone.utc).date()
    tomorrow = (today + timedelta(days=1)).isoformat()
    found = {"search": 2, "runs": 1, "stats": 1}

    runner = CliRunner()

    def count(command: str, *args: str) -> int:
        # In process: forty runs of the command, each a subprocess, would take seconds.
        result = runner.invoke(main, [command, *args, *store], catch_exceptions=False)
        assert result.exit_code in (0, 1), result.output
        if command == "search":
            return 0 if result.stdout.startswith("No records") else len(result.stdout.splitlines())
        if command == "runs":
            return 0 if result.stdout.startswith("No runs") else len(result.stdout.splitlines()) - 1
        return 0 if result.exit_code else 1  # stats: exit 1 when no span is in range

    for command, expected in found.items():
        for since in ("1h", "30m", "today", "yesterday", "1d", today.isoformat(), "2000-01-01"):
            assert count(command, "--since", since) == expected, (command, since)
        for since in (tomorrow, f"{tomorrow}T00:00:00Z"):
            assert count(command, "--since", since) == 0, (command, since)
        for until in ("1h", "yesterday", "today"):
            assert count(command, "--until", until) == 0, (command, until)
        assert count(command, "--until", tomorrow) == expected


@pytest.mark.parametrize("command", ["search", "runs", "stats"])
@pytest.mark.parametrize("option", ["--since", "--until"])
def test_bad_time_filter_is_exit_2_naming_option_value_and_forms(
    tmp_path: Path, command: str, option: str
) -> None:
    write_runs(tmp_path, "sqlite", "runs.db", "r")
    for bad in ("last tuesday", "2026-02-30", "5 parsecs"):
        result = cli(command, option, bad, "--store", "runs.db", cwd=tmp_path, code=2)
        assert f"'{option}'" in result.stderr and repr(bad) in result.stderr, result.stderr
        assert "ISO-8601" in result.stderr and "30m" in result.stderr, result.stderr
        assert "yesterday" in result.stderr, result.stderr


def test_naive_times_are_in_log_tz(tmp_path: Path) -> None:
    """A time without zone is read in the configured log_tz, as the records show it."""
    (tmp_path / "flowtrail.toml").write_text('log_tz = "+07:00"\n', encoding="utf-8")
    write_runs(tmp_path, "sqlite", "runs.db", "zoned")
    local_hour_ago = datetime.now(timezone(timedelta(hours=7))) - timedelta(hours=1)
    naive = local_hour_ago.strftime("%Y-%m-%dT%H:%M")
    # In UTC this naive time would be 6 hours in the future, and find the records.
    result = cli("search", "--until", naive, "--store", "runs.db", cwd=tmp_path)
    assert result.stdout.startswith("No records found"), result.stdout
    result = cli("search", "--since", naive, "--store", "runs.db", cwd=tmp_path)
    assert len(result.stdout.splitlines()) == 2


def test_readers_refuse_a_bad_time(tmp_path: Path) -> None:
    """The Python API used to read an unknown time as 'the beginning of time'."""
    write_runs(tmp_path, "sqlite", "runs.db", "r")
    write_runs(tmp_path, "file", "traces", "r")
    for store in (SQLiteHandler(path="runs.db"), FileHandler(path="traces")):
        assert len(store.search(since="1h")) == 2
        with pytest.raises(TimeFilterError, match="since='garbage'"):
            store.search(since="garbage")
        with pytest.raises(ValueError, match="until="):
            store.search(until="tomorrow-ish")


# ------------------------------------------------------------------- point 7: stores

READERS = [
    ("runs",),
    ("show",),
    ("show", "some-run"),
    ("search", "x"),
    ("stats",),
    ("tail", "--idle-exit", "0.1"),
    ("report", "some-run"),
]


@pytest.mark.parametrize("missing", ["gone.db", "gone", "file://gone", "sqlite:///gone.db"])
def test_a_missing_store_is_an_error_naming_it(tmp_path: Path, missing: str) -> None:
    for command in READERS:
        result = cli(*command, "--store", missing, cwd=tmp_path, code=2)
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"no store at {tmp_path / 'gone'}" in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path)) == []  # nothing created by reading


def test_the_default_store_missing_says_how_it_was_chosen(tmp_path: Path) -> None:
    result = cli("runs", cwd=tmp_path, code=2)
    assert str(tmp_path / "logs" / "flowtrail.db") in result.stderr
    assert "FLOWTRAIL_STORE" in result.stderr and "--store" in result.stderr
    assert not (tmp_path / "logs").exists()


def _corrupt_copy(source: Path, target: Path) -> None:
    """``source`` with its pages after the first overwritten: the header and schema read
    fine, the tables do not."""
    data = bytearray(source.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    data[page:] = b"\xde\xad\xbe\xef" * ((len(data) - page) // 4) + b"\x00" * (
        (len(data) - page) % 4
    )
    target.write_bytes(bytes(data))


def test_files_that_are_not_flowtrail_stores(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database\n" * 100, encoding="utf-8")
    (tmp_path / "random.db").write_bytes(os.urandom(8192))
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    other_bytes = other.read_bytes()
    for name, expected in (
        ("notes.txt", "is not a flowtrail store"),
        ("random.db", "is not a flowtrail store"),
        ("other.db", "is an SQLite database but not a flowtrail store"),
    ):
        for command in READERS:
            result = cli(*command, "--store", name, cwd=tmp_path, code=2)
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and expected in lines[0], result.stderr
            assert str(tmp_path / name) in lines[0], result.stderr
    assert other.read_bytes() == other_bytes  # reading did not add flowtrail's tables


def test_a_store_damaged_inside_is_one_line(tmp_path: Path) -> None:
    write_runs(tmp_path, "sqlite", "good.db", *(f"run-{i}" for i in range(30)))
    with sqlite3.connect(tmp_path / "good.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _corrupt_copy(tmp_path / "good.db", tmp_path / "bad.db")
    for command in (("runs",), ("show", "run-1"), ("search", "hello"), ("stats",)):
        result = cli(*command, "--store", "bad.db", cwd=tmp_path, code=None)
        assert result.returncode in (1, 2), result
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and str(tmp_path / "bad.db") in lines[0], result.stderr


@pytest.mark.parametrize("kind", list(STORES))
def test_nothing_found_names_the_store(tmp_path: Path, kind: str) -> None:
    kind, path, url = STORES[kind]
    write_runs(tmp_path, kind, path, "r")
    described = f"{'SQLite' if kind == 'sqlite' else 'file'} store {tmp_path / path}"
    store = ("--store", url)
    assert cli("runs", "--workflow", "nope", *store, cwd=tmp_path).stdout == (
        f"No runs found in {described}.\n"
    )
    assert cli("search", "nothing-like-this", *store, cwd=tmp_path).stdout == (
        f"No records found in {described}.\n"
    )
    result = cli("stats", "--workflow", "nope", *store, cwd=tmp_path, code=1)
    assert described in result.stderr
    result = cli("show", "--failed", *store, cwd=tmp_path, code=1)
    assert described in result.stderr


def test_a_directory_holding_flowtrail_db_is_that_database(tmp_path: Path) -> None:
    write_runs(tmp_path, "sqlite", "logs/flowtrail.db", "in-the-db")
    for store in ("logs", str(tmp_path / "logs"), "logs/"):
        runs = cli("runs", "--store", store, cwd=tmp_path).stdout
        assert "in-the-db" in runs, runs
    show = cli("show", "in-the", "--store", "logs", "--format", "json", cwd=tmp_path)
    assert json.loads(show.stdout)["run_id"] == "in-the-db"


WORKFLOW = """
from flowtrail import get_trace
with get_trace("{run_id}", extras={{"workflow_name": "wf"}}) as trace:
    with trace.span("job", name="j"):
        trace.info("written with the project's config")
"""


@pytest.mark.parametrize("config", ["flowtrail.toml", "pyproject.toml"])
def test_log_dir_is_relative_to_the_config_file(tmp_path: Path, config: str) -> None:
    project = tmp_path / "project"
    (project / "src" / "pkg").mkdir(parents=True)
    (project / "docs").mkdir()
    if config == "flowtrail.toml":
        (project / "flowtrail.toml").write_text('log_dir = "var/traces"\n', encoding="utf-8")
    else:
        (project / "pyproject.toml").write_text(
            '[project]\nname = "p"\n\n[tool.flowtrail]\nlog_dir = "var/traces"\n',
            encoding="utf-8",
        )
    for run_id, cwd in (("from-root", project), ("from-src", project / "src" / "pkg")):
        result = run_python(WORKFLOW.format(run_id=run_id), cwd)
        assert result.returncode == 0, result.stderr
    store = project / "var" / "traces" / "flowtrail.db"
    assert store.is_file()
    assert sorted(os.listdir(project)) == sorted([config, "src", "docs", "var"])
    assert os.listdir(project / "src" / "pkg") == []
    # Any working directory in the project reads the same store.
    for cwd in (project, project / "docs", project / "src" / "pkg"):
        runs = cli("runs", cwd=cwd).stdout.splitlines()
        assert sorted(line.split("\t")[0] for line in runs[1:]) == ["from-root", "from-src"]
    # The spool of the default handlers is the project's too.
    spool = run_python(
        "from flowtrail import get_trace\n"
        "t = get_trace('s')\n"
        "print([p.exporter.config.spool_dir for p in t._pipes])",
        project / "docs",
    )
    assert spool.returncode == 0, spool.stderr
    assert str(project / "var" / "traces" / "spool") in spool.stdout


def test_flowtrail_store_sets_the_default_store(tmp_path: Path) -> None:
    write_runs(tmp_path, "file", "elsewhere/traces", "via-env")
    env = {"FLOWTRAIL_STORE": str(tmp_path / "elsewhere" / "traces")}
    work = tmp_path / "work"
    work.mkdir()
    assert "via-env" in cli("runs", cwd=work, env=env).stdout
    assert "via-env" in cli("show", "via", cwd=work, env=env).stdout
    missing = cli("runs", cwd=work, env={"FLOWTRAIL_STORE": "nowhere.db"}, code=2)
    assert "nowhere.db" in missing.stderr and "FLOWTRAIL_STORE" in missing.stderr
    # A workflow run with FLOWTRAIL_STORE set is not disturbed by it.
    result = run_python(WORKFLOW.format(run_id="w"), work, env=env)
    assert result.returncode == 0 and "FLOWTRAIL_STORE" not in result.stderr, result.stderr


def test_unknown_flowtrail_variable_is_one_warning(tmp_path: Path) -> None:
    code = (
        "from flowtrail import get_trace\n"
        "for i in range(20):\n"
        "    get_trace(f'stage-{i}').info('still running')\n"
        "import flowtrail; flowtrail.flush_all(10)\n"
        "print('finished')\n"
    )
    result = run_python(code, tmp_path, env={"FLOWTRAIL_LOG_TZZ": "UTC", "FLOWTRAIL_XYZ": "1"})
    assert result.returncode == 0, result.stderr
    assert "finished" in result.stdout
    assert result.stderr.count("FLOWTRAIL_LOG_TZZ") == 1, result.stderr
    assert "did you mean FLOWTRAIL_LOG_TZ?" in result.stderr, result.stderr
    assert result.stderr.count("FLOWTRAIL_XYZ") == 1, result.stderr
    assert len(cli("runs", cwd=tmp_path).stdout.splitlines()) == 21
