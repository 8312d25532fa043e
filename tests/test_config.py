"""Settings and handler configuration: sources and their order, validation and errors,
handler objects and dicts, the default handlers."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flowtrail
from flowtrail import (
    ConfigError,
    ConsoleHandler,
    FileHandler,
    MemoryHandler,
    SQLiteHandler,
    Trace,
    get_trace,
    make_handler,
)
from flowtrail.config import DEFAULT_LOG_FORMAT, SETTING_KEYS, Settings


@pytest.fixture(autouse=True)
def close_pipelines():
    """Stop the workers after each test (relative store paths are process-wide)."""
    yield
    flowtrail.shutdown(10.0)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def write_toml(path: Path, values: dict[str, Any], table: str | None = None) -> None:
    lines = [f"[{table}]"] if table else []
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------- sources and order

LAYERS = ("arguments", "extras", "environment", "flowtrail.toml", "pyproject.toml")

#: For each key: a value per layer (highest first), then the default.
PRECEDENCE_VALUES: dict[str, tuple[Any, ...]] = {
    "log_tz": (
        "Asia/Bangkok",
        "Europe/Paris",
        "Asia/Tokyo",
        "America/Chicago",
        "Australia/Sydney",
        "UTC",
    ),
    "log_format": ("{message} A", "{message} B", "{message} C", "{message} D", "{message} E")
    + (DEFAULT_LOG_FORMAT,),
    "log_format_file": ("{level} A", "{level} B", "{level} C", "{level} D", "{level} E")
    + (Settings().log_format_file,),
    "log_datetime_format": ("%H A", "%H B", "%H C", "%H D", "%H E", "%Y-%m-%d %H:%M:%S"),
    "log_dir": ("dir-a", "dir-b", "dir-c", "dir-d", "dir-e", "./logs"),
    "logs_trace_frame_layer": (2, 3, 4, 5, 6, 1),
    "exit_timeout": (1.5, 2.5, 3.5, 4.5, 5.5, 10.0),
}


@pytest.mark.parametrize("key", list(PRECEDENCE_VALUES))
@pytest.mark.parametrize("top", range(len(LAYERS) + 1), ids=[*LAYERS, "defaults"])
def test_each_layer_wins_over_the_ones_below(
    key: str, top: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layers ``top`` and below are given; the value of layer ``top`` is used."""
    values = PRECEDENCE_VALUES[key]
    folder = tmp_path / f"case-{top}"
    folder.mkdir()
    monkeypatch.chdir(folder)
    arguments: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    if top <= 4:
        write_toml(folder / "pyproject.toml", {key: values[4]}, table="tool.flowtrail")
    if top <= 3:
        write_toml(folder / "flowtrail.toml", {key: values[3]})
    if top <= 2:
        monkeypatch.setenv(f"FLOWTRAIL_{key.upper()}", str(values[2]))
    if top <= 1:
        extras[key] = values[1]
    if top == 0:
        arguments[key] = values[0]
    trace = get_trace("r", handlers=[MemoryHandler()], extras=extras, **arguments)
    expected = values[top]
    if key == "log_dir" and top in (3, 4):
        expected = str(folder / expected)  # relative to the config file's folder
    assert getattr(trace.settings, key) == expected


def test_flowtrail_toml_falls_back_to_pyproject_per_key(tmp_path: Path) -> None:
    """The order is per key: a key flowtrail.toml does not set comes from
    ``[tool.flowtrail]`` in pyproject.toml before the defaults."""
    write_toml(tmp_path / "flowtrail.toml", {"log_tz": "Asia/Bangkok"})
    write_toml(
        tmp_path / "pyproject.toml",
        {"log_tz": "Europe/Paris", "log_level": "warning"},
        table="tool.flowtrail",
    )
    settings = get_trace("r", handlers=[MemoryHandler()]).settings
    assert settings.log_tz == "Asia/Bangkok"
    assert settings.log_level == "warning"


@pytest.mark.parametrize(
    ("env", "file_value", "expected"), [("false", True, False), ("true", False, True)]
)
def test_boolean_settings_from_environment_over_file(
    env: str, file_value: bool, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(tmp_path / "flowtrail.toml", {"log_add_emoji": file_value, "strict": file_value})
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_add_emoji is file_value
    monkeypatch.setenv("FLOWTRAIL_LOG_ADD_EMOJI", env)
    monkeypatch.setenv("FLOWTRAIL_STRICT", env)
    settings = get_trace("r", handlers=[MemoryHandler()]).settings
    assert settings.log_add_emoji is expected
    assert settings.strict is expected


def test_environment_values_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWTRAIL_LOGS_TRACE_FRAME_LAYER", "2")
    monkeypatch.setenv("FLOWTRAIL_EXIT_TIMEOUT", "2.5")
    monkeypatch.setenv("FLOWTRAIL_LOG_LEVEL", "error")
    settings = get_trace("r", handlers=[MemoryHandler()]).settings
    assert settings.logs_trace_frame_layer == 2
    assert settings.exit_timeout == 2.5
    assert settings.log_level == "error"


def test_defaults_without_any_configuration() -> None:
    settings = get_trace("r", handlers=[MemoryHandler()]).settings
    assert settings.log_tz == "UTC"
    assert settings.log_add_emoji is True
    assert settings.logs_trace_frame_layer == 1
    assert settings.log_level == "debug"
    assert settings.log_dir == "./logs"
    assert settings.strict is False
    assert settings.log_format == DEFAULT_LOG_FORMAT


def test_pyproject_in_a_parent_directory_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(tmp_path / "pyproject.toml", {"log_tz": "Asia/Tokyo"}, table="tool.flowtrail")
    child = tmp_path / "src" / "deeper"
    child.mkdir(parents=True)
    monkeypatch.chdir(child)
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "Asia/Tokyo"


def test_pyproject_without_flowtrail_table_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(tmp_path / "flowtrail.toml", {"log_tz": "Asia/Tokyo"})
    child = tmp_path / "project"
    child.mkdir()
    (child / "pyproject.toml").write_text('[project]\nname = "x"\n', encoding="utf-8")
    monkeypatch.chdir(child)
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "Asia/Tokyo"


def test_flowtrail_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "elsewhere" / "settings.toml"
    named.parent.mkdir()
    write_toml(named, {"log_tz": "Europe/Paris"})
    write_toml(tmp_path / "flowtrail.toml", {"log_tz": "Asia/Tokyo"})
    monkeypatch.setenv("FLOWTRAIL_CONFIG", str(named))
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "Europe/Paris"
    monkeypatch.setenv("FLOWTRAIL_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml"):
        get_trace("r", handlers=[MemoryHandler()])


def test_flowtrail_table_in_flowtrail_toml(tmp_path: Path) -> None:
    write_toml(tmp_path / "flowtrail.toml", {"log_tz": "Asia/Tokyo"}, table="flowtrail")
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "Asia/Tokyo"


def test_an_edited_config_file_is_read_again(tmp_path: Path) -> None:
    config = tmp_path / "flowtrail.toml"
    write_toml(config, {"log_tz": "Asia/Tokyo"})
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "Asia/Tokyo"
    write_toml(config, {"log_tz": "Europe/Paris"})
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "Europe/Paris"


def test_a_config_file_created_later_is_used(tmp_path: Path) -> None:
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "UTC"
    write_toml(tmp_path / "flowtrail.toml", {"log_tz": "Asia/Tokyo"})
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "Asia/Tokyo"


def test_a_removed_config_file_is_no_longer_used(tmp_path: Path) -> None:
    write_toml(tmp_path / "pyproject.toml", {"log_tz": "Europe/Paris"}, table="tool.flowtrail")
    write_toml(tmp_path / "flowtrail.toml", {"log_tz": "Asia/Tokyo"})
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "Asia/Tokyo"
    (tmp_path / "flowtrail.toml").unlink()
    assert get_trace("r", handlers=[MemoryHandler()]).settings.log_tz == "Europe/Paris"


def test_settings_shape_what_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    trace = get_trace(
        "shaped",
        handlers=[ConsoleHandler()],
        log_format="{level}|{message}|{datetime}",
        log_datetime_format="%Y",
        log_add_emoji=False,
        log_tz="Asia/Bangkok",
    )
    trace.info("[WORKFLOW]: go")
    line = capsys.readouterr().out.strip()
    level, message, year = line.split("|")
    assert (level, message) == ("info", "[WORKFLOW]: go")
    assert len(year) == 4 and year.isdigit()


def test_emoji_setting_on_console(capsys: pytest.CaptureFixture[str]) -> None:
    get_trace("e", handlers=[ConsoleHandler()], log_format="{message}").info("[STAGE]: go")
    assert capsys.readouterr().out == "⚙️ [STAGE]: go\n"


# ---------------------------------------------------------------------- handlers


def test_handlers_from_environment_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "env-store"
    monkeypatch.setenv(
        "FLOWTRAIL_TRACE_HANDLERS",
        json.dumps([{"type": "file", "path": str(store)}, {"type": "memory"}]),
    )
    trace = get_trace("from-env")
    assert [type(h) for h in trace.handlers] == [FileHandler, MemoryHandler]
    trace.info("configured by the environment")
    data = FileHandler(path=str(store)).find_trace_with_id("from-env")
    assert [r.message for r in data.meta] == ["configured by the environment"]


def test_handlers_from_config_file(tmp_path: Path) -> None:
    store = tmp_path / "toml-store"
    (tmp_path / "flowtrail.toml").write_text(
        f'log_tz = "Asia/Tokyo"\n\n[[trace_handlers]]\ntype = "file"\npath = "{store}"\n',
        encoding="utf-8",
    )
    trace = get_trace("from-file")
    assert [type(h) for h in trace.handlers] == [FileHandler]
    trace.info("configured by the file")
    data = FileHandler(path=str(store)).find_trace_with_id("from-file")
    assert data.meta[0].datetime.endswith("+09:00")


def test_handler_objects_and_dicts_are_equivalent(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    by_object = get_trace("by-object", handlers=[FileHandler(type="file", path=store)])
    by_dict = get_trace("by-dict", handlers=[{"type": "file", "path": store}])
    by_extras = get_trace("by-extras", extras={"trace_handlers": [{"type": "file", "path": store}]})
    assert by_object.pipelines()[0] is by_dict.pipelines()[0] is by_extras.pipelines()[0]
    for trace in (by_object, by_dict, by_extras):
        trace.info(f"hello from {trace.run_id}")
    reader = FileHandler(path=store)
    for run_id in ("by-object", "by-dict", "by-extras"):
        assert [r.message for r in reader.find_trace_with_id(run_id).meta] == [
            f"hello from {run_id}"
        ]


def test_handlers_argument_wins_over_extras(tmp_path: Path) -> None:
    memory = MemoryHandler()
    trace = get_trace(
        "r", handlers=[memory], extras={"trace_handlers": [{"type": "file", "path": "x"}]}
    )
    assert trace.handlers == [memory]


def test_trace_type_shortcut_in_extras(tmp_path: Path) -> None:
    store = str(tmp_path / "shortcut")
    trace = get_trace("short", extras={"trace_type": "file", "path": store, "job_name": "j"})
    assert [type(h) for h in trace.handlers] == [FileHandler]
    trace.info("x")
    record = FileHandler(path=store).find_trace_with_id("short").meta[0]
    assert record.job_name == "j"


def test_make_handler_from_dicts_and_objects(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path))
    assert make_handler(handler) is handler
    assert isinstance(make_handler({"type": "console"}), ConsoleHandler)
    assert isinstance(
        make_handler({"type": "sqlite", "path": str(tmp_path / "a.db")}), SQLiteHandler
    )
    assert isinstance(make_handler({"type": "memory"}), MemoryHandler)
    built = make_handler({"type": "file", "path": str(tmp_path), "batch_size": "50"})
    assert built.config.batch_size == 50


def test_trace_class_takes_settings_like_get_trace() -> None:
    trace = Trace("r", handlers=[MemoryHandler()], log_tz="Asia/Tokyo")
    assert trace.settings.log_tz == "Asia/Tokyo"


def test_default_handlers_are_console_and_sqlite(capsys: pytest.CaptureFixture[str]) -> None:
    trace = get_trace("default-run")
    assert [type(h) for h in trace.handlers] == [ConsoleHandler, SQLiteHandler]
    assert trace.handlers[1].config.path == "./logs/flowtrail.db"
    trace.info("stored by default")
    assert trace.flush(10.0)
    conn = sqlite3.connect("logs/flowtrail.db")
    try:
        rows = conn.execute("SELECT run_id, level, message FROM traces").fetchall()
    finally:
        conn.close()
    assert rows == [("default-run", "info", "stored by default")]
    assert "stored by default" in capsys.readouterr().out
    found = SQLiteHandler(path="./logs/flowtrail.db").find_trace_with_id("default-run")
    assert [r.message for r in found.meta] == ["stored by default"]


def test_log_dir_moves_the_default_store() -> None:
    trace = get_trace("moved", log_dir="elsewhere")
    trace.info("x")
    assert trace.flush(10.0)
    assert Path("elsewhere/flowtrail.db").is_file()
    assert not Path("logs/flowtrail.db").exists()


def test_extras_with_other_keys_are_accepted() -> None:
    trace = get_trace("r", handlers=[MemoryHandler()], extras={"custom_config": "value"})
    assert trace.extras == {"custom_config": "value"}


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("log_tzz", "log_tz"), ("log_formatt", "log_format"), ("trace_handler", "trace_handlers")],
)
def test_extras_typo_of_a_setting_is_refused(typo: str, meant: str) -> None:
    with pytest.raises(ConfigError) as info:
        get_trace("r", handlers=[MemoryHandler()], extras={typo: "UTC"})
    assert repr(typo) in str(info.value)
    assert repr(meant) in str(info.value)


def test_unknown_keyword_argument_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        get_trace("r", handlers=[MemoryHandler()], log_tzz="UTC")
    assert "'log_tzz'" in str(info.value)
    assert "'log_tz'" in str(info.value)


# ---------------------------------------------------------------------- errors


def _args(**kwargs: Any) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        get_trace("r", handlers=kwargs.pop("handlers", [MemoryHandler()]), **kwargs)

    return call


def _handler(spec: dict[str, Any]) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        get_trace("r", handlers=[spec])

    return call


def _env(name: str, value: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(name, value)
        get_trace("r", handlers=[MemoryHandler()])

    return call


def _toml(text: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "flowtrail.toml").write_text(text, encoding="utf-8")
        get_trace("r", handlers=[MemoryHandler()])

    return call


ERROR_CASES = {
    "log_tz": (_args(log_tz="Mars/Base"), ["'log_tz'", "'Mars/Base'", "IANA time zone"]),
    "log_add_emoji": (
        _args(log_add_emoji="maybe"),
        ["'log_add_emoji'", "'maybe'", "true or false"],
    ),
    "frame_layer": (
        _args(logs_trace_frame_layer=0),
        ["'logs_trace_frame_layer'", "= 0", "an integer >= 1"],
    ),
    "log_format": (_args(log_format="{nope}"), ["'log_format'", "{nope}", "str.format string"]),
    "log_format_file": (
        _args(log_format_file="{message} {nope}"),
        ["'log_format_file'", "{nope}", "str.format string"],
    ),
    "log_level": (_args(log_level="verbose"), ["'log_level'", "'verbose'", "debug, info"]),
    "exit_timeout": (_args(exit_timeout=-1), ["'exit_timeout'", "-1", ">= 0"]),
    "trace_handlers_str": (
        _args(handlers="console"),
        ["'trace_handlers'", "'console'", "list of handler"],
    ),
    "toml_unknown_key": (
        _toml('log_tzz = "UTC"\n'),
        ["'log_tzz'", "flowtrail.toml", "did you mean 'log_tz'", "Known keys"],
    ),
    "toml_bad_value": (
        _toml('log_add_emoji = "maybe"\n'),
        ["'log_add_emoji'", "'maybe'", "flowtrail.toml", "true or false"],
    ),
    "toml_syntax": (_toml("log_tz = \n"), ["flowtrail.toml"]),
    "env_bad_value": (
        _env("FLOWTRAIL_LOG_TZ", "Mars/Base"),
        ["'log_tz'", "'Mars/Base'", "environment", "IANA"],
    ),
    "env_handlers_json": (
        _env("FLOWTRAIL_TRACE_HANDLERS", "not json"),
        ["FLOWTRAIL_TRACE_HANDLERS", "'not json'", "JSON list"],
    ),
    "handler_type": (
        _handler({"type": "nope"}),
        ["'nope'", "console", "file", "memory", "sqlite"],
    ),
    "handler_no_type": (_handler({"path": "x"}), ["'type'", "console"]),
    "handler_option": (
        _handler({"type": "file", "paht": "x"}),
        ["'paht'", "'file'", "did you mean 'path'"],
    ),
    "handler_batch_size": (
        _handler({"type": "file", "batch_size": "x"}),
        ["'batch_size'", "'x'", "a positive integer"],
    ),
    "handler_overflow": (
        _handler({"type": "file", "overflow": "explode"}),
        ["'overflow'", "'explode'", "spill"],
    ),
    "sqlite_table_name": (
        _handler({"type": "sqlite", "table_name": "traces; DROP TABLE x"}),
        ["'table_name'", "DROP TABLE", "letters, digits"],
    ),
    "extras_record_field": (
        _args(extras={"lineno_typo": 1, "tags": "not-a-list"}),
        ["tags"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_config_errors_name_key_value_and_what_is_accepted(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    call, expected = ERROR_CASES[case]
    with pytest.raises(ConfigError) as info:
        call(tmp_path, monkeypatch)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "file", "batch_size": 0},
        {"type": "file", "batch_size": -5},
        {"type": "file", "queue_size": 0},
        {"type": "sqlite", "batch_size": 0},
    ],
    ids=["batch_size=0", "batch_size=-5", "queue_size=0", "sqlite batch_size=0"],
)
def test_non_positive_sizes_are_config_errors(spec: dict[str, Any], tmp_path: Path) -> None:
    """'batch_size' and 'queue_size' accept "a positive integer"; 0 must not reach the
    pipeline (``len(queue) % 0`` raises into the caller and the worker spins)."""
    key = next(k for k in spec if k.endswith("_size"))
    spec = {**spec, "path": str(tmp_path / "store"), "spool_dir": str(tmp_path / "spool")}
    with pytest.raises(ConfigError) as info:
        get_trace("r", handlers=[spec])
    assert repr(key) in str(info.value)
    assert "positive" in str(info.value)


def test_handler_object_with_a_bad_option_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="'batch_size'"):
        FileHandler(type="file", batch_size="x")
    with pytest.raises(ConfigError, match="'paht'"):
        FileHandler(paht="x")
    with pytest.raises(ConfigError, match="'sqlite'"):
        FileHandler(type="sqlite")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        get_trace("r", handlers=[MemoryHandler()], log_tz="Mars/Base")


def test_every_setting_is_documented_in_errors() -> None:
    from flowtrail.config import _ACCEPTED

    assert set(SETTING_KEYS) == set(_ACCEPTED)


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWTRAIL_LOG_ADD_EMOJI", "maybe")
    with pytest.raises(ConfigError) as caught:
        get_trace("env-error")
    text = str(caught.value)
    assert "FLOWTRAIL_LOG_ADD_EMOJI" in text and "'maybe'" in text and "true or false" in text


@pytest.mark.parametrize(
    ("value", "offset"),
    [
        ("+07:00", "+07:00"),
        ("-05:30", "-05:30"),
        ("UTC", "+00:00"),
    ],
)
def test_log_tz_takes_names_offsets_and_tzinfo_objects(value: str, offset: str) -> None:
    import datetime as dt
    from zoneinfo import ZoneInfo

    for given in (
        value,
        dt.timezone(dt.timedelta(hours=int(offset[:3]), minutes=int(offset[0] + offset[4:]))),
    ):
        memory = MemoryHandler()
        get_trace("tz-run", handlers=[memory], log_tz=given).info("x")
        assert memory.records[0].datetime.endswith(offset), given
    memory = MemoryHandler()
    get_trace("tz-run", handlers=[memory], extras={"log_tz": ZoneInfo("Asia/Bangkok")}).info("x")
    assert memory.records[0].datetime.endswith("+07:00")
