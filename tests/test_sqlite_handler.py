"""The SQLite store: the seed's schema, WAL, indexes, validated table names, parameterised
SQL, the readers and their filters, and many processes writing one database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from flowtrail import (
    ConfigError,
    FileHandler,
    Metadata,
    SQLiteHandler,
    TraceData,
    TraceNotFound,
    get_trace,
    make_handler,
)
from store_cases import ALL, _stamp, dataset, search_cases

#: The seed's CREATE TABLE: column name -> (declared type, NOT NULL).
SEED_COLUMNS = {
    "id": ("INTEGER", False),
    "run_id": ("TEXT", True),
    "parent_run_id": ("TEXT", False),
    "level": ("TEXT", True),
    "message": ("TEXT", True),
    "error_flag": ("BOOLEAN", True),
    "datetime": ("TEXT", True),
    "process": ("INTEGER", True),
    "thread": ("INTEGER", True),
    "filename": ("TEXT", True),
    "lineno": ("INTEGER", True),
    "cut_id": ("TEXT", False),
    "workflow_name": ("TEXT", False),
    "stage_name": ("TEXT", False),
    "job_name": ("TEXT", False),
    "duration_ms": ("REAL", False),
    "memory_usage_mb": ("REAL", False),
    "cpu_usage_percent": ("REAL", False),
    "trace_id": ("TEXT", False),
    "span_id": ("TEXT", False),
    "parent_span_id": ("TEXT", False),
    "exception_type": ("TEXT", False),
    "exception_message": ("TEXT", False),
    "stack_trace": ("TEXT", False),
    "error_code": ("TEXT", False),
    "user_id": ("TEXT", False),
    "tenant_id": ("TEXT", False),
    "environment": ("TEXT", False),
    "hostname": ("TEXT", False),
    "ip_address": ("TEXT", False),
    "python_version": ("TEXT", False),
    "package_version": ("TEXT", False),
    "tags": ("TEXT", False),
    "metadata": ("TEXT", False),
    "created_at": ("TIMESTAMP", False),
}


#: (search keyword arguments, expected messages oldest first)
SEARCH_CASES = search_cases()


def write_dataset(handler: SQLiteHandler) -> None:
    for records in dataset().values():
        handler.export(records)
    handler.close_exporter()


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def spawn(code: str, cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------------- schema
def test_seed_schema_every_column(tmp_path: Path) -> None:
    db = tmp_path / "workflow_traces.db"
    handler = SQLiteHandler(type="sqlite", path=str(db), table_name="traces")
    trace = get_trace("workflow-789", handlers=[handler])
    trace.info("SQLite trace initialized")
    assert trace.flush()
    with connect(db) as conn:
        info = {row[1]: row for row in conn.execute("PRAGMA table_info(traces)")}
    assert set(SEED_COLUMNS) <= set(info)
    for name, (declared, notnull) in SEED_COLUMNS.items():
        assert info[name][2].upper() == declared, name
        assert bool(info[name][3]) == notnull, name
    assert info["id"][5] == 1  # the primary key
    assert "CURRENT_TIMESTAMP" in (info["created_at"][4] or "").upper()


def test_wal_mode_and_indexes(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    handler = SQLiteHandler(path=str(db), table_name="my_traces")
    trace = get_trace("r", handlers=[handler])
    trace.info("x")
    assert trace.flush()
    with connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(my_traces)")}
        columns = {
            name: [row[2] for row in conn.execute(f"PRAGMA index_info({name})")] for name in indexes
        }
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # The readers' lookups on large stores: a run's records in time order, child runs.
    assert ["run_id", "datetime", "id"] in columns.values(), columns
    assert ["parent_run_id"] in columns.values(), columns
    assert all(name.startswith("my_traces_") for name in indexes if not name.startswith("sqlite_"))
    queries = [
        ("SELECT * FROM my_traces WHERE run_id = ? ORDER BY datetime, id", ("r",)),
        ("SELECT * FROM my_traces WHERE parent_run_id = ?", ("r",)),
        (
            "SELECT run_id, COUNT(*) FROM my_traces WHERE run_id = ? AND error_flag "
            "GROUP BY run_id",
            ("r",),
        ),
    ]
    with connect(db) as conn:
        for sql, params in queries:
            plan = " ".join(
                str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            )
            assert "INDEX" in plan.upper(), (sql, plan)
            assert "TEMP B-TREE" not in plan.upper(), (sql, plan)  # streamed, not sorted


def test_schema_is_idempotent_and_table_name_is_used(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    for table in ("first_table", "_second", "T3"):
        for _ in range(2):
            handler = SQLiteHandler(path=str(db), table_name=table)
            trace = get_trace("r", handlers=[handler])
            trace.info(f"into {table}")
            assert trace.flush()
    with connect(db) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {"first_table", "_second", "T3"} <= tables
        for table in ("first_table", "_second", "T3"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 2
    assert [r.message for r in SQLiteHandler(path=str(db), table_name="T3").search()] == [
        "into T3",
        "into T3",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "x; DROP TABLE y",
        "1abc",
        "a-b",
        "",
        "a b",
        'traces"',
        "traces--",
        "t" * 64,
        "tráces",
        "x)",
        "[x]",
    ],
)
def test_bad_table_name_is_a_config_error(tmp_path: Path, name: str) -> None:
    db = tmp_path / "t.db"
    with pytest.raises(ConfigError, match="table_name"):
        SQLiteHandler(path=str(db), table_name=name)
    with pytest.raises(ConfigError, match="table_name"):
        make_handler({"type": "sqlite", "path": str(db), "table_name": name})
    with pytest.raises(ConfigError, match="table_name"):
        get_trace("r", handlers=[{"type": "sqlite", "path": str(db), "table_name": name}])
    with pytest.raises(ConfigError, match="table_name"):
        get_trace("r", extras={"trace_type": "sqlite", "path": str(db), "table_name": name})
    assert not db.exists()


def test_good_table_names(tmp_path: Path) -> None:
    for name in ("traces", "_x", "A1_b2", "t" * 63):
        assert SQLiteHandler(path=str(tmp_path / "t.db"), table_name=name).table == name


def test_other_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="synchronous"):
        SQLiteHandler(path=str(tmp_path / "t.db"), synchronous="NORMAL; DROP TABLE x")
    with pytest.raises(ConfigError, match="busy_timeout_ms"):
        SQLiteHandler(path=str(tmp_path / "t.db"), busy_timeout_ms="soon")
    with pytest.raises(ConfigError, match="tabel_name"):
        SQLiteHandler(path=str(tmp_path / "t.db"), tabel_name="x")


# ---------------------------------------------------------------------- SQL injection
INJECTIONS = [
    "'); DROP TABLE traces; --",
    "x' OR '1'='1",
    'x" OR "1"="1',
    "Robert'); DELETE FROM traces WHERE ('1'='1",
    "%",
    "_",
    "\\",
    "?",
    ":name",
    "$1",
]


def test_sql_injection_is_stored_verbatim(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    handler = SQLiteHandler(path=str(db))
    run_ids = ["r'; DROP TABLE traces; --", 'r" OR 1=1 --', "r%", "r_"]
    for run_id in run_ids:
        trace = get_trace(
            run_id,
            parent_run_id="p') OR 1=1 --",
            handlers=[handler],
            extras={"workflow_name": "w'; DROP TABLE traces; --", "tags": ["t'x"]},
        )
        for text in INJECTIONS:
            trace.info(text)
        trace.flush()
    with connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 40
        stored = conn.execute("SELECT DISTINCT message FROM traces ORDER BY id").fetchall()
    assert [row[0] for row in stored] == INJECTIONS
    for run_id in run_ids:
        trace_data = handler.find_trace_with_id(run_id)
        assert [r.message for r in trace_data.meta] == INJECTIONS
        assert {r.run_id for r in trace_data.meta} == {run_id}
        assert {r.parent_run_id for r in trace_data.meta} == {"p') OR 1=1 --"}
        assert trace_data.meta[0].tags == ["t'x"]
        assert len(handler.search(run_id=run_id)) == 10
    assert handler.find_trace_with_id("r' OR '1'='1", force_raise=False).meta == []
    assert len(handler.search(workflow="w'; DROP TABLE traces; --")) == 40
    assert handler.search(workflow="w' OR '1'='1") == []
    assert {r.run_id for r in handler.runs()} == set(run_ids)
    assert len(handler.runs(workflow="w'; DROP TABLE traces; --")) == 4
    assert len(handler.find_trace_with_id("p') OR 1=1 --", include_children=True).meta) == 40
    for text in INJECTIONS:
        found = handler.search(text, run_id=run_ids[0])
        assert text in [r.message for r in found]
        assert all(text in r.message for r in found)
    assert handler.search("%", run_id="r%") == [
        r for r in handler.search(run_id="r%") if "%" in r.message
    ]
    assert handler.search("' OR '1'='1") == [
        r for r in handler.search() if "' OR '1'='1" in r.message
    ]


def test_every_field_round_trips(tmp_path: Path) -> None:
    handler = SQLiteHandler(path=str(tmp_path / "t.db"))
    full = Metadata(
        run_id="full",
        parent_run_id="parent",
        level="exception",
        message="all fields",
        error_flag=True,
        datetime=_stamp(1),
        process=11,
        thread=140191056857984,
        filename="f.py",
        lineno=33,
        cut_id="parent -> full",
        workflow_name="wf",
        stage_name="stage",
        job_name="job",
        duration_ms=1.5,
        memory_usage_mb=2.25,
        cpu_usage_percent=99.5,
        trace_id="a" * 32,
        span_id="b" * 16,
        parent_span_id="c" * 16,
        exception_type="ValueError",
        exception_message="bad value",
        stack_trace="Traceback\n  line",
        error_code="E42",
        user_id="user",
        tenant_id="tenant",
        environment="prod",
        hostname="host",
        ip_address="10.0.0.1",
        python_version="3.11.7",
        package_version="0.1.0",
        tags=["a", "b"],
        metadata={"k": [1, 2, {"n": None}], "s": "v"},
        created_at=_stamp(1),
        mode="stderr",
    )
    bare = Metadata(run_id="bare", datetime=_stamp(2), created_at=_stamp(2))
    handler.export([full, bare])
    handler.close_exporter()
    assert handler.find_trace_with_id("full").meta == [full]
    assert handler.find_trace_with_id("bare").meta == [bare]
    assert handler.search() == [full, bare]


# ---------------------------------------------------------------------- readers
def test_find_trace_with_id(tmp_path: Path) -> None:
    handler = SQLiteHandler(path=str(tmp_path / "t.db"), format="{level}: {message}")
    write_dataset(handler)
    alpha = handler.find_trace_with_id("alpha", include_children=False)
    assert isinstance(alpha, TraceData)
    assert [r.message for r in alpha.meta] == ALL[:4]
    assert alpha.run_id == "alpha"
    assert alpha.stdout.splitlines() == [
        "info: [WORKFLOW]: Start alpha",
        "debug: loading rows",
        "warning: Retrying upload",
    ]
    assert alpha.stderr.splitlines() == ["error: Upload FAILED"]
    with_children = handler.find_trace_with_id("alpha", include_children=True)
    assert [r.message for r in with_children.meta] == ALL[:6]
    assert "boom" in with_children.stderr
    assert handler.find_trace_with_id("alpha").meta == with_children.meta  # the default
    empty = handler.find_trace_with_id("never-ran", force_raise=False)
    assert empty.meta == [] and empty.stdout == "" and empty.stderr == ""
    with pytest.raises(TraceNotFound, match="never-ran") as raised:
        handler.find_trace_with_id("never-ran")
    assert raised.value.run_id == "never-ran" and "t.db" in raised.value.store


def test_find_traces_newest_first(tmp_path: Path) -> None:
    handler = SQLiteHandler(path=str(tmp_path / "t.db"))
    write_dataset(handler)
    traces = list(handler.find_traces())
    assert [t.run_id for t in traces] == ["gamma", "beta", "alpha"]
    assert [len(t.meta) for t in traces] == [5, 2, 4]
    assert "Upload FAILED" in traces[2].stderr and "Upload FAILED" not in traces[2].stdout


def test_readers_of_a_missing_database(tmp_path: Path) -> None:
    db = tmp_path / "nothing.db"
    handler = SQLiteHandler(path=str(db))
    assert handler.runs() == []
    assert handler.search() == []
    assert list(handler.find_traces()) == []
    assert handler.find_trace_with_id("x", force_raise=False).meta == []
    with pytest.raises(LookupError, match="nothing.db"):
        handler.find_trace_with_id("x")
    assert not db.exists()  # reading does not create a database


@pytest.mark.parametrize(("kwargs", "expected"), SEARCH_CASES)
def test_search_filters(tmp_path: Path, kwargs: dict, expected: list[str]) -> None:
    handler = SQLiteHandler(path=str(tmp_path / "t.db"))
    write_dataset(handler)
    text = kwargs.pop("text", None)
    found = handler.search(text, **kwargs)
    assert [r.message for r in found] == expected


def test_search_unknown_level(tmp_path: Path) -> None:
    handler = SQLiteHandler(path=str(tmp_path / "t.db"))
    write_dataset(handler)
    with pytest.raises(ValueError, match="unknown level"):
        handler.search(level="loud")


def test_runs_summaries_and_filters(tmp_path: Path) -> None:
    handler = SQLiteHandler(path=str(tmp_path / "t.db"))
    write_dataset(handler)
    runs = handler.runs()
    assert [r.run_id for r in runs] == ["gamma", "beta", "alpha"]
    by_id = {r.run_id: r for r in runs}
    alpha = by_id["alpha"]
    assert (alpha.records, alpha.warnings, alpha.errors) == (4, 1, 1)
    assert alpha.workflow_name == "etl"
    assert alpha.status == "error"
    assert alpha.start == _stamp(0) and alpha.end == _stamp(3)
    assert alpha.duration_s == 180.0
    beta = by_id["beta"]
    assert (beta.records, beta.warnings, beta.errors, beta.parent_run_id) == (2, 0, 1, "alpha")
    gamma = by_id["gamma"]
    assert (gamma.records, gamma.errors, gamma.status) == (5, 0, "ok")
    assert gamma.duration_s == 240.0
    assert [r.run_id for r in handler.runs(workflow="etl")] == ["gamma", "alpha"]
    assert [r.run_id for r in handler.runs(workflow="report")] == ["beta"]
    assert handler.runs(workflow="none") == []
    assert [r.run_id for r in handler.runs(limit=2)] == ["gamma", "beta"]
    assert [r.run_id for r in handler.runs(workflow="etl", limit=1)] == ["gamma"]


def test_readers_see_unflushed_records_of_this_process(tmp_path: Path) -> None:
    handler = SQLiteHandler(path=str(tmp_path / "t.db"), flush_interval=60.0)
    trace = get_trace("pending", handlers=[handler], extras={"workflow_name": "wf"})
    for i in range(10):
        trace.info(f"pending {i}")
    assert len(handler.find_trace_with_id("pending").meta) == 10
    assert len(handler.search("pending")) == 10
    assert handler.runs()[0].records == 10
    assert len(next(iter(handler.find_traces())).meta) == 10


def test_records_from_trace_carry_context(tmp_path: Path) -> None:
    handler = SQLiteHandler(path=str(tmp_path / "t.db"))
    extras = {"workflow_name": "wf", "job_name": "job", "user_id": "u", "tags": ["a"]}
    trace = get_trace("ctx", parent_run_id="parent", handlers=[handler], extras=extras)
    trace.info("hello")
    try:
        raise RuntimeError("nope")
    except RuntimeError:
        trace.exception("failed")
    trace.flush()
    hello, failed = handler.find_trace_with_id("ctx").meta
    assert (hello.workflow_name, hello.job_name, hello.user_id, hello.tags) == (
        "wf",
        "job",
        "u",
        ["a"],
    )
    assert hello.parent_run_id == "parent" and hello.cut_id == "parent -> ctx"
    assert hello.filename == "test_sqlite_handler.py" and hello.process == os.getpid()
    assert failed.error_flag and failed.exception_type == "RuntimeError"
    assert failed.exception_message == "nope" and "raise RuntimeError" in failed.stack_trace
    with connect(tmp_path / "t.db") as conn:
        flags = [row[0] for row in conn.execute("SELECT error_flag FROM traces ORDER BY id")]
    assert flags == [0, 1]


# ---------------------------------------------------------------------- many processes
WRITER = """
import os, sys, time
from flowtrail import SQLiteHandler, get_trace
name, count, db, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
handler = SQLiteHandler(path=db, batch_size=int(sys.argv[5]), flush_interval=0.01)
trace = get_trace(name, handlers=[handler])
while not os.path.exists(go):
    time.sleep(0.002)
for i in range(count):
    trace.info(f"{name} {i}")
    if i % 250 == 0:
        trace.flush()
trace.flush()
stats = trace.pipelines()[0].stats
print(stats.exported, stats.spooled, stats.dropped, stats.failed_batches)
"""


def test_many_processes_one_database(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    go = tmp_path / "go"
    count = 2000
    procs = [
        spawn(WRITER, tmp_path, f"proc{n}", str(count), str(db), str(go), str(10 + 37 * n))
        for n in range(6)
    ]
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert "locked" not in err.lower(), err
        assert "busy" not in err.lower(), err
        assert "flowtrail:" not in err, err
        exported, spooled, dropped, failed = (int(v) for v in out.split())
        assert (exported, spooled, dropped, failed) == (count, 0, 0, 0), out
    assert not (tmp_path / "logs" / "spool").exists() or not any(
        (tmp_path / "logs" / "spool").rglob("*.jsonl*")
    )
    with connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 6 * count
        per_run = dict(conn.execute("SELECT run_id, COUNT(*) FROM traces GROUP BY run_id"))
        assert per_run == {f"proc{n}": count for n in range(6)}
        for n in range(6):
            numbers = [
                int(row[0].split()[1])
                for row in conn.execute(
                    "SELECT message FROM traces WHERE run_id = ? ORDER BY id", (f"proc{n}",)
                )
            ]
            assert numbers == list(range(count))
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    handler = SQLiteHandler(path=str(db))
    assert sorted(r.run_id for r in handler.runs()) == [f"proc{n}" for n in range(6)]
    assert all(r.records == count for r in handler.runs())


def test_reader_while_another_process_writes(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    go = tmp_path / "go"
    proc = spawn(WRITER, tmp_path, "writer", "3000", str(db), str(go), "20")
    go.touch()
    handler = SQLiteHandler(path=str(db))
    seen = 0
    for _ in range(5000):  # bounded, in case the writer hangs
        if proc.poll() is not None:
            break
        if db.exists():
            found = handler.search(run_id="writer", limit=None)
            assert len(found) >= seen
            seen = len(found)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert len(handler.search(run_id="writer", limit=None)) == 3000


def test_a_store_without_the_time_index_is_read_and_indexed_or_read_only(tmp_path) -> None:
    """A store written before the time index existed: a reader adds the index; a
    read-only one is read as it is."""
    import os
    import stat

    db = tmp_path / "old.db"
    handler = SQLiteHandler(path=str(db))
    handler.export([Metadata(run_id="old", message=f"m{i}") for i in range(3)])
    handler.close()
    with connect(db) as conn:
        conn.execute("DROP INDEX traces_run_time")
    db.chmod(stat.S_IRUSR)
    os.chmod(tmp_path, stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(db, os.W_OK):  # root writes anyway: the index is added
            assert [r.message for r in SQLiteHandler(path=str(db)).iter_records("old")] == [
                "m0",
                "m1",
                "m2",
            ]
            with connect(db) as conn:
                names = {row[1] for row in conn.execute("PRAGMA index_list(traces)")}
            assert "traces_run_time" in names
        else:
            reader = SQLiteHandler(path=str(db))
            assert [r.message for r in reader.iter_records("old")] == ["m0", "m1", "m2"]
    finally:
        os.chmod(tmp_path, stat.S_IRWXU)
        db.chmod(stat.S_IRUSR | stat.S_IWUSR)


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_search_command_by_user_and_tags(tmp_path: Path, kind: str) -> None:
    from click.testing import CliRunner

    from flowtrail.cli import main

    if kind == "sqlite":
        store = SQLiteHandler(path=str(tmp_path / "s.db"))
        url = f"sqlite:///{tmp_path / 's.db'}"
    else:
        store = FileHandler(path=str(tmp_path / "files"))
        url = f"file://{tmp_path / 'files'}"
    store.export([r for run in dataset().values() for r in run])

    def messages(*args: str) -> list[str]:
        result = CliRunner().invoke(main, ["search", *args, "--store", url])
        assert result.exit_code == 0, result.output
        return [line.split("\t")[-1] for line in result.output.splitlines() if "\t" in line]

    assert messages("--user", "ana") == ["Retrying upload", "Upload FAILED"]
    assert messages("--tag", "team:data") == ["Retrying upload", "Upload FAILED", "render report"]
    assert messages("--tag", "team:data", "--tag", "retry") == ["Retrying upload"]
    assert messages("--tag", "team:data", "--user", "bo", "report") == ["render report"]
    assert messages("--user", "nobody") == []
