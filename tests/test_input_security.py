"""Input that could hurt: run ids and options that are refused up front, log files that are
never written through a symbolic link and are private by default, secrets that no error
message shows, stdout redirected into `logging`, and handlers refused half-built."""

from __future__ import annotations

import logging
import math
import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import run_python
from flowtrail import (
    ConfigError,
    FileHandler,
    MemoryHandler,
    Settings,
    SQLiteHandler,
    get_trace,
    make_handler,
)
from flowtrail.config import mask_text
from flowtrail.context import check_run_id, safe_run_id

SECRET = "hunter2-s3cr3t"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------- 17: refused input
@pytest.mark.parametrize("where", ["run_id", "parent_run_id"])
def test_a_run_id_with_a_lone_surrogate_is_refused(where: str) -> None:
    # Today such an id is accepted and every record of the run is dropped in the
    # background (it cannot be encoded for a file name, a JSON line or SQLite).
    ids = {"run_id": "run-ok", where: "run-\ud800-x"}
    with pytest.raises(ValueError, match="lone surrogates"):
        get_trace(ids["run_id"], ids.get("parent_run_id"), handlers=[MemoryHandler()])
    with pytest.raises(ValueError, match="lone surrogates"):
        FileHandler(run_id=ids["run_id"], parent_run_id=ids.get("parent_run_id"))


def test_a_logger_name_with_a_lone_surrogate_becomes_an_allowed_run_id() -> None:
    # The stdlib bridge names a run after its logger when no run is given.
    assert check_run_id(safe_run_id("jobs.\udcff.loader")) == "jobs._.loader"


def test_a_table_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match="table_name"):
        SQLiteHandler(table_name="traces\n")


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("exit_timeout", math.nan, "finite"),
        ("exit_timeout", math.inf, "finite"),
        ("exit_timeout", -1.0, "finite"),
    ],
)
def test_float_settings_must_be_finite_and_not_negative(
    key: str, value: float, accepted: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        get_trace("run-1", handlers=[MemoryHandler()], **{key: value})
    text = str(caught.value)
    assert repr(key) in text and repr(value) in text and accepted in text


def test_a_nan_exit_timeout_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWTRAIL_EXIT_TIMEOUT", "nan")
    with pytest.raises(ConfigError, match="FLOWTRAIL_EXIT_TIMEOUT.*finite"):
        get_trace("run-1", handlers=[MemoryHandler()])


@pytest.mark.parametrize(
    ("handler", "key", "value", "accepted"),
    [
        (FileHandler, "flush_interval", 1e-7, ">= 0.001"),
        (FileHandler, "flush_interval", math.inf, "finite"),
        (FileHandler, "flush_interval", -0.5, ">= 0.001"),
        (SQLiteHandler, "flush_interval", 0.0, ">= 0.001"),
        (FileHandler, "retry_deadline", math.nan, "finite"),
        (FileHandler, "retry_deadline", math.inf, "finite"),
        (SQLiteHandler, "retry_deadline", -1.0, ">= 0"),
        (SQLiteHandler, "busy_timeout_ms", -1, ">= 0"),
        (MemoryHandler, "capacity", -1, ">= 0"),
    ],
)
def test_handler_timeouts_and_intervals_are_checked(
    handler: type, key: str, value: Any, accepted: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        handler(**{key: value})
    text = str(caught.value)
    assert repr(key) in text and repr(value) in text and accepted in text


def test_a_handler_dict_with_a_tiny_flush_interval_is_refused_at_get_trace() -> None:
    with pytest.raises(ConfigError, match="flush_interval.*1e-07.*>= 0.001"):
        get_trace("run-1", handlers=[{"type": "file", "flush_interval": 1e-7}])


# ---------------------------------------------------------------------- 18: no symlinks
def _trace_to(base: Path, run_id: str) -> Any:
    return get_trace(run_id, handlers=[FileHandler(path=str(base), flush_interval=0.01)])


def test_the_file_store_never_writes_through_a_symlink(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "traces"
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    (base / "run_id=x").mkdir(parents=True)
    (base / "run_id=x" / "stdout.txt").symlink_to(outside)

    bad, good = _trace_to(base, "x"), _trace_to(base, "y")
    assert bad.pipelines() == good.pipelines()  # one pipeline: one batch holds both runs
    for i in range(5):
        bad.info(f"to the link {i}")
        good.info(f"kept {i}")
    assert good.flush(10.0)

    assert outside.read_text() == "keep\n"
    # The refused run is refused whole: nothing of it half written beside the link.
    assert sorted(p.name for p in (base / "run_id=x").iterdir()) == ["stdout.txt"]
    stored = FileHandler(path=str(base)).find_trace_with_id("y")
    assert [r.message for r in stored.meta] == [f"kept {i}" for i in range(5)]
    stats = good.pipelines()[0].stats
    assert stats.exported == 5
    assert stats.spooled + stats.dropped == 5
    assert stats.errors.get("RefusedFile")
    err = capfd.readouterr().err
    assert err.count("symbolic link") == 1, err


def test_a_fifo_planted_as_a_log_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    base = tmp_path / "traces"
    (base / "run_id=x").mkdir(parents=True)
    os.mkfifo(base / "run_id=x" / "metadata.txt")
    code = textwrap.dedent(
        f"""
        from flowtrail import FileHandler, get_trace
        handler = FileHandler(path={str(base)!r}, flush_interval=0.01, retry_deadline=0)
        trace = get_trace("x", handlers=[handler])
        trace.info("into the fifo")
        print("flushed", trace.flush(5.0))
        """
    )
    result = run_python(code, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "flushed True" in result.stdout
    assert "not a regular file" in result.stderr


def test_log_files_are_private_by_default(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        trace = _trace_to(tmp_path / "traces", "run-1")
        trace.info("hello")
        trace.error("bad")
        assert trace.flush(10.0)
    finally:
        os.umask(old)
    folder = tmp_path / "traces" / "run_id=run-1"
    modes = {p.name: _mode(p) for p in folder.iterdir()}
    assert modes == {"stdout.txt": 0o600, "stderr.txt": 0o600, "metadata.txt": 0o600}


def test_the_file_mode_option_sets_the_log_files_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        handler = FileHandler(path=str(tmp_path / "traces"), file_mode=0o640)
        trace = get_trace("run-1", handlers=[handler])
        trace.info("hello")
        assert trace.flush(10.0)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "traces" / "run_id=run-1" / "stdout.txt") == 0o640
    with pytest.raises(ConfigError, match="file_mode"):
        FileHandler(file_mode=0o1777)


def test_the_sqlite_database_is_private_by_default(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = tmp_path / "logs" / "flowtrail.db"
        trace = get_trace("run-1", handlers=[SQLiteHandler(path=str(db))])
        trace.info("hello")
        assert trace.flush(10.0)
    finally:
        os.umask(old)
    files = {p.name: _mode(p) for p in db.parent.iterdir() if p.name.startswith("flowtrail.db")}
    assert "flowtrail.db" in files and "flowtrail.db-wal" in files
    assert set(files.values()) == {0o600}, files


# ---------------------------------------------------------------------- 19: secrets
def _refusal(action: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        action()
    return str(caught.value)


def test_a_handler_dict_without_type_does_not_show_its_password() -> None:
    text = _refusal(lambda: make_handler({"path": "./x", "password": SECRET}))
    assert SECRET not in text
    assert "'password': '***'" in text and "has no 'type'" in text


def test_invalid_handler_json_in_the_environment_does_not_show_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = (
        f'[{{"type": "sqlite", "api_key": "{SECRET}", "headers": {{"Authorization": "{SECRET}"}},]'
    )
    monkeypatch.setenv("FLOWTRAIL_TRACE_HANDLERS", raw)
    text = _refusal(lambda: get_trace("run-1"))
    assert SECRET not in text
    assert "not valid JSON" in text and '"api_key": "***"' in text


def test_trace_handlers_given_as_a_dict_does_not_show_the_token() -> None:
    handlers = {"type": "file", "token": SECRET, "url": f"https://bob:{SECRET}@host/x"}
    text = _refusal(lambda: get_trace("run-1", extras={"trace_handlers": handlers}))
    assert SECRET not in text
    assert "'trace_handlers'" in text and "'token': '***'" in text


def test_a_wrong_option_value_with_secrets_inside_is_masked() -> None:
    text = _refusal(lambda: FileHandler(path={"dir": "x", "secret": SECRET}))
    assert SECRET not in text and "'path'" in text


def test_repr_of_settings_and_handlers_masks_secrets() -> None:
    settings = Settings(trace_handlers=({"type": "file", "password": SECRET},))
    assert SECRET not in repr(settings) and "'password': '***'" in repr(settings)
    assert SECRET not in repr(FileHandler(path=f"https://u:{SECRET}@h/x"))


def test_an_unsupported_store_url_does_not_show_its_password() -> None:
    from flowtrail.stores import open_store

    text = _refusal(lambda: open_store(f"postgresql://bob:{SECRET}@db/traces?token={SECRET}"))
    assert SECRET not in text and "postgresql://bob:***@db" in text


@pytest.mark.parametrize(
    "text",
    [
        f"password={SECRET}&user=bob",
        f'{{"DD-API-KEY": "{SECRET}"}}',
        f"basic_auth=('bob', '{SECRET}')",
        f"credentials: {SECRET}",
        f"postgres://bob:{SECRET}@db/x",
    ],
)
def test_mask_text_hides_secret_looking_values(text: str) -> None:
    assert SECRET not in mask_text(text)


# ---------------------------------------------------------------------- 20: echoes
_REDIRECT = """
import logging, sys
from flowtrail import ConsoleHandler, FlowtrailLogHandler, MemoryHandler, get_trace

class ToLogger:
    # What Airflow and Celery do: print() and sys.stderr become log records.
    def __init__(self, name, level):
        self.logger, self.level = logging.getLogger(name), level
    def write(self, text):
        if text.strip():
            self.logger.log(self.level, text.rstrip())
    def flush(self):
        pass

root = logging.getLogger()
root.setLevel(logging.INFO)
root.addHandler(logging.StreamHandler(sys.__stderr__))
memory = MemoryHandler()
"""


@pytest.mark.parametrize(
    "body",
    [
        # the bridge on the root logger, records from the trace given to it
        """
        trace = get_trace("run-echo", handlers=[ConsoleHandler(), memory])
        root.addHandler(FlowtrailLogHandler(trace))
        sys.stdout, sys.stderr = ToLogger("stdout", 20), ToLogger("stderr", 40)
        trace.info("hello")
        trace.error("bad")
        """,
        # the bridge on the root logger, records from the active ``with`` block
        """
        root.addHandler(FlowtrailLogHandler())
        sys.stdout, sys.stderr = ToLogger("stdout", 20), ToLogger("stderr", 40)
        with get_trace("run-echo", handlers=[ConsoleHandler(), memory]) as trace:
            trace.info("hello")
            trace.flush()
            trace.error("bad")
        """,
    ],
)
def test_stdout_redirected_into_logging_does_not_loop(tmp_path: Path, body: str) -> None:
    report = "from flowtrail.logrecords import dropped_echoes\n"
    report += "print(memory.messages, dropped_echoes[0], file=sys.__stdout__)\n"
    result = run_python(_REDIRECT + textwrap.dedent(body) + report, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    # Each record is recorded once; its console line's echo is dropped (and counted:
    # one on stdout, one on stderr) and said once.
    assert result.stdout.strip() == "['hello', 'bad'] 2"
    assert result.stderr.count("dropped a record of logger") == 1, result.stderr[-2000:]
    assert "Logging error" not in result.stderr


def test_a_direct_console_handler_with_stdout_redirected_into_logging_returns(
    tmp_path: Path,
) -> None:
    code = _REDIRECT + textwrap.dedent(
        """
        root.addHandler(ConsoleHandler(run_id="run-direct"))
        root.addHandler(memory_bridge := FlowtrailLogHandler(get_trace("run-direct",
                        handlers=[memory])))
        sys.stdout = ToLogger("stdout", 20)
        logging.getLogger("app").info("from the app")
        print(memory.messages, file=sys.__stdout__)
        """
    )
    result = run_python(code, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "['from the app']"
    assert "RecursionError" not in result.stderr and "Logging error" not in result.stderr


# ---------------------------------------------------------------------- 21: half-built
_REFUSED = [
    lambda: FileHandler(batch_size=0),
    lambda: FileHandler(flush_interval=1e-7),
    lambda: SQLiteHandler(table_name="x y"),
    lambda: FileHandler(run_id="../x"),
    lambda: make_handler({"type": "sqlite", "table_name": "traces\n"}),
]


def _registered() -> list[Any]:
    return [ref() for ref in logging._handlerList if ref() is not None]  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", _REFUSED)
def test_a_refused_handler_leaves_nothing_registered(make: Any) -> None:
    before = len(_registered())
    with pytest.raises(ValueError) as caught:
        make()
    # The exception (and its traceback) keeps the half-built object alive, as an
    # uncaught error at the top of a script does until exit.
    assert caught.value.__traceback__ is not None
    assert len(_registered()) == before


def test_a_refused_handler_leaves_a_clean_exit(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        from flowtrail import ConfigError, FileHandler, SQLiteHandler
        kept = []
        for make in (lambda: FileHandler(batch_size=0), lambda: SQLiteHandler(table_name="a b")):
            try:
                make()
            except ConfigError as exc:
                kept.append(exc)
        print(len(kept), "refused")
        FileHandler(batch_size=0)  # uncaught: the clear error, then a clean exit
        """
    )
    result = run_python(code, tmp_path, timeout=60)
    assert result.stdout.strip() == "2 refused"
    assert result.returncode == 1
    assert "ConfigError" in result.stderr and "batch_size" in result.stderr
    assert "AttributeError" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert not (tmp_path / "logs").exists()  # nothing was started at exit either


def test_mask_text_keeps_an_exception_name_readable() -> None:
    text = "NoCredentialsError: Unable to locate credentials; InvalidTokenError: expired"
    assert mask_text(text) == text
    assert SECRET not in mask_text(f"NoCredentialsError: x; credentials: {SECRET}")
