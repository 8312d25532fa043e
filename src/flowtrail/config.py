"""Settings and handler configuration.

Each setting is looked up in this order, first found wins:

1. keyword arguments to `get_trace` (and ``handlers=``),
2. ``extras`` given to `get_trace`/`Trace`,
3. environment variables ``FLOWTRAIL_<KEY>`` (``FLOWTRAIL_TRACE_HANDLERS`` is JSON),
4. ``flowtrail.toml`` (top-level keys) or ``[tool.flowtrail]`` in ``pyproject.toml``, the
   nearest one from the working directory upwards (or the file named by
   ``FLOWTRAIL_CONFIG``); a relative ``log_dir`` (and handler ``path``/``spool_dir``)
   there is relative to that file's folder,
5. the defaults below.

A wrong key or value raises `ConfigError` naming the key, the value, where it came from
and what is accepted. An environment variable ``FLOWTRAIL_*`` that is not a setting (nor
``FLOWTRAIL_CONFIG``, ``FLOWTRAIL_STORE``, the reading commands' default store, or the
``FLOWTRAIL_ES_*`` credentials) is ignored with a `ConfigWarning`, once per process.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
import warnings
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX: Final = "FLOWTRAIL_"

DEFAULT_LOG_FORMAT: Final = "{datetime} [{level:<9}] ({cut_id}) {message} ({filename}:{lineno})"
DEFAULT_LOG_FORMAT_FILE: Final = (
    "{datetime} ({process:5d}, {thread:5d}) ({cut_id}) {message} ({filename}:{lineno})"
)
DEFAULT_DATETIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"


class ConfigError(ValueError):
    """A configuration key or value is wrong. The message names the key, the bad value,
    where it came from and what is accepted."""


# ---------------------------------------------------------------- secrets in messages
#: Parts of option names whose values are secrets: never shown in errors, repr or warnings.
_SECRET_WORDS: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "credential",
    "cookie",
    "apikey",
    "api_key",
    "private_key",
    "access_key",
    "signature",
)
#: Whole last parts of names (``dd_api_key``, ``basic_auth``, ``key``) that are secrets.
_SECRET_ENDINGS: Final = frozenset({"key", "auth", "pwd", "pass", "sig"})
MASK: Final = "***"
#: ``NoCredentialsError: Unable to ...`` names an exception, not a secret's field.
_NOT_NAMES: Final = ("Error", "Exception", "Warning")
#: ``name: value`` / ``name=value`` / ``"name": "value"`` in free text (invalid JSON,
#: query strings, headers), and the value after it: a quoted string, a bracketed group
#: or a word.
_NAME = re.compile(r"""(["']?)([A-Za-z_][\w.-]*)\1\s*[:=]\s*""")
_VALUE = re.compile(r""""(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[\[({][^\])}]*[\])}]?|[^\s,;&}\]]+""")
#: The password of ``scheme://user:password@host``.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^/:@\s]*:)[^@/\s]+@")


def is_secret_key(name: Any) -> bool:
    """Whether an option or header named ``name`` holds a secret (password, token, key,
    secret, authorization, api_key, credentials ...)."""
    if not isinstance(name, str):
        return False
    lowered = name.lower().replace("-", "_")
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    return lowered.rsplit("_", 1)[-1].rsplit(".", 1)[-1] in _SECRET_ENDINGS


def mask_text(text: str) -> str:
    """``text`` with the value of every secret-looking ``name=value`` or ``"name": value``
    and every password in a URL replaced by ``***``."""
    parts: list[str] = []
    start = pos = 0
    while (name := _NAME.search(text, pos)) is not None:
        pos = name.end()
        if not is_secret_key(name[2]) or name[2].endswith(_NOT_NAMES):
            continue  # its value may hold secret-looking names: look inside it too
        value = _VALUE.match(text, pos)
        if value is None:
            continue
        quote = value[0][0] if value[0][0] in "'\"" else ""
        parts += [text[start:pos], quote, MASK, quote]
        start = pos = value.end()
    parts.append(text[start:])
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}@", "".join(parts))


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` safe to show: in mappings (at any depth) the value of every
    secret-looking key becomes ``***``; strings are masked with `mask_text`."""
    if isinstance(value, Mapping):
        return {
            key: MASK if is_secret_key(key) and item is not None else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        masked = [mask_secrets(item) for item in value]
        return masked if isinstance(value, list) else tuple(masked)
    if isinstance(value, str):
        return mask_text(value)
    return value


def shown(value: Any) -> str:
    """``repr(value)`` with its secrets masked (see `mask_secrets`)."""
    return repr(mask_secrets(value))


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Resolved settings of one trace. See the module docstring for their sources."""

    #: Handlers: objects or dicts with ``type``; None means console + SQLite under log_dir.
    trace_handlers: tuple[Any, ...] | None = None
    #: Console line format (``{field:spec}`` over `Metadata` fields).
    log_format: str = DEFAULT_LOG_FORMAT
    #: Line format of ``stdout.txt``/``stderr.txt`` in the file store.
    log_format_file: str = DEFAULT_LOG_FORMAT_FILE
    #: strftime format of ``{datetime}`` in text lines.
    log_datetime_format: str = DEFAULT_DATETIME_FORMAT
    #: Time zone of record time stamps: ``UTC`` or an IANA name.
    log_tz: str = "UTC"
    #: Put the prefix's emoji before ``[WORKFLOW]: ...`` messages in text lines.
    log_add_emoji: bool = True
    #: Which frame is the caller: 1 is the code that called ``trace.info()``; raise it by
    #: one for each wrapper function between your code and the trace method.
    logs_trace_frame_layer: int = 1
    #: Records below this level are not recorded.
    log_level: Literal["debug", "info", "warning", "error", "exception"] = "debug"
    #: Base directory of the default SQLite store and of spools.
    log_dir: str = "./logs"
    #: Raise handler failures into the caller (for tests) instead of reporting them.
    strict: bool = False
    #: Seconds that flushing at interpreter exit may take before the rest is spooled.
    exit_timeout: float = 10.0
    #: Fraction of traces recorded in full (decided from the trace id, so every process
    #: of a trace agrees); the others keep warnings, errors and the spans on the path to
    #: an error. 1.0 (the default) records everything.
    sample_ratio: float = 1.0
    #: On ``SIGTERM`` with the default disposition: end open spans as interrupted, record
    #: that the run stopped, flush, then die of the signal (see `flowtrail.lifecycle`).
    handle_signals: bool = True

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={shown(getattr(self, name))}" for name in self.__struct_fields__
        )
        return f"Settings({fields})"


SETTING_KEYS: Final[tuple[str, ...]] = Settings.__struct_fields__
_ACCEPTED: Final[dict[str, str]] = {
    "trace_handlers": "a list of handler objects or dicts with a 'type' key",
    "log_format": "a str.format string over record fields, e.g. '{datetime} {message}'",
    "log_format_file": "a str.format string over record fields, e.g. '{datetime} {message}'",
    "log_datetime_format": "a strftime format such as '%Y-%m-%d %H:%M:%S'",
    "log_tz": "'UTC', an IANA time zone name such as 'Europe/Paris', or an offset like '+07:00'",
    "log_add_emoji": "true or false",
    "logs_trace_frame_layer": "an integer >= 1",
    "log_level": "one of debug, info, warning, error, exception",
    "log_dir": "a directory path",
    "strict": "true or false",
    "exit_timeout": "a finite number of seconds >= 0",
    "sample_ratio": "a number from 0.0 to 1.0",
    "handle_signals": "true or false",
}


def describe_validation_error(
    exc: msgspec.ValidationError, data: Mapping[str, Any], accepted: Mapping[str, str]
) -> tuple[str | None, str]:
    """Turn a msgspec error (``... - at `$.key` ``) into (key, 'what is accepted')."""
    text = str(exc)
    key = None
    if "at `$." in text:
        key = text.split("at `$.", 1)[1].split("`", 1)[0].split("[", 1)[0].split(".", 1)[0]
    elif text.startswith("Object contains unknown field"):
        key = text.split("`", 2)[1]
    reason = text.split(" - at ", 1)[0]
    if key is not None and key in accepted:
        reason = f"expected {accepted[key]} ({reason})"
    return key, reason


def unknown_key_error(key: str, where: str, known: tuple[str, ...] | list[str]) -> ConfigError:
    """The error for a key that is not a setting, with the closest known key."""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return ConfigError(
        f"flowtrail config: unknown key {key!r} in {where}{hint} Known keys: {', '.join(known)}."
    )


def _parse_env_value(key: str, raw: str) -> Any:
    if key == "trace_handlers":
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise ConfigError(
                f"flowtrail config: {ENV_PREFIX}TRACE_HANDLERS={mask_text(raw)!r} "
                "(from the environment) "
                "is not valid JSON; expected a JSON list such as "
                '\'[{"type": "console"}, {"type": "sqlite", "path": "./logs/flowtrail.db"}]\''
            ) from None
    return raw


def _flowtrail_environ() -> list[tuple[str, str]]:
    # os.environ decodes every key on iteration; its raw dict lets a scan for our prefix
    # cost a few microseconds per get_trace instead of tens.
    raw = getattr(os.environ, "_data", None)
    if isinstance(raw, dict):
        prefix = ENV_PREFIX.encode()
        return [
            (os.fsdecode(key), os.fsdecode(value))
            for key, value in raw.items()
            if isinstance(key, bytes) and key.startswith(prefix)
        ]
    return [(k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIX)]


#: ``FLOWTRAIL_*`` variables that are not settings: the config file to read, the
#: default store of the reading commands, and Elasticsearch credentials (see
#: `flowtrail.handlers.elastic.CREDENTIAL_VARIABLES`).
OTHER_VARIABLES: Final = (
    f"{ENV_PREFIX}CONFIG",
    f"{ENV_PREFIX}STORE",
    f"{ENV_PREFIX}ES_USERNAME",
    f"{ENV_PREFIX}ES_PASSWORD",
    f"{ENV_PREFIX}ES_API_KEY",
    f"{ENV_PREFIX}ES_BEARER_TOKEN",
)


class ConfigWarning(UserWarning):
    """Something in the configuration is ignored (an unknown ``FLOWTRAIL_*`` variable)."""


_warned_variables: set[str] = set()


def _warn_unknown_variable(name: str) -> None:
    """Warn once per process about an environment variable that is no setting: a
    variable set for another version or with a typo must not stop a workflow."""
    if name in _warned_variables:
        return
    _warned_variables.add(name)
    known = [f"{ENV_PREFIX}{key.upper()}" for key in SETTING_KEYS] + list(OTHER_VARIABLES)
    # Compare what follows the prefix: every name shares it.
    tails = {known_name[len(ENV_PREFIX) :]: known_name for known_name in known}
    close = difflib.get_close_matches(name[len(ENV_PREFIX) :], list(tails), n=1)
    hint = f"; did you mean {tails[close[0]]}?" if close else f"; known: {', '.join(known)}"
    warnings.warn(
        f"flowtrail: ignoring the environment variable {name}, which is not a setting{hint}",
        ConfigWarning,
        stacklevel=2,
    )


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings given as ``FLOWTRAIL_*`` environment variables. A variable that is
    not a setting (nor one of `OTHER_VARIABLES`) is ignored with a `ConfigWarning`,
    once per process."""
    items = _flowtrail_environ() if environ is None else list(environ.items())
    found: dict[str, Any] = {}
    for name, raw in items:
        if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in SETTING_KEYS:
            _warn_unknown_variable(name)
            continue
        found[key] = _parse_env_value(key, raw)
    return found


def find_config_files(start: Path | None = None) -> list[Path]:
    """The config files in force: the file named by ``FLOWTRAIL_CONFIG``, else the nearest
    ``flowtrail.toml`` and the nearest ``pyproject.toml`` with a ``[tool.flowtrail]``
    table, from ``start`` (the working directory) upwards; flowtrail.toml first."""
    named = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if named:
        return [Path(named)]
    here = (start or Path.cwd()).resolve()
    toml: Path | None = None
    pyproject: Path | None = None
    for folder in (here, *here.parents):
        if toml is None and (folder / "flowtrail.toml").is_file():
            toml = folder / "flowtrail.toml"
        candidate = folder / "pyproject.toml"
        if pyproject is None and candidate.is_file():
            try:
                data = _load_toml(candidate)
            except ConfigError:
                data = {}
            if "flowtrail" in data.get("tool", {}):
                pyproject = candidate
        if toml is not None and pyproject is not None:
            break
    return [path for path in (toml, pyproject) if path is not None]


def find_config_file(start: Path | None = None) -> Path | None:
    """The first config file in force (see `find_config_files`)."""
    files = find_config_files(start)
    return files[0] if files else None


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"flowtrail config: cannot read {path}: {exc}") from None


def _stamp(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def _folders(start: Path) -> list[Path]:
    here = start.resolve()
    return [here, *here.parents]


#: Config files read, keyed by working directory and FLOWTRAIL_CONFIG; valid while the
#: modification times of the folders searched and of the files found are unchanged (a
#: file created, removed or edited changes one of them).
_file_cache: dict[tuple[str, str], tuple[tuple[float, ...], list[tuple[str, dict[str, Any]]]]] = {}


def read_config_files(start: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(path, settings)`` of each config file in force, flowtrail.toml first."""
    cwd = start or Path.cwd()
    named = os.environ.get(f"{ENV_PREFIX}CONFIG", "")
    if named and not Path(named).is_file():
        raise ConfigError(f"flowtrail config: FLOWTRAIL_CONFIG={named!r} is not a file")
    folders = [Path(named)] if named else _folders(cwd)
    cache_key = (str(cwd), named)
    cached = _file_cache.get(cache_key)
    if cached is not None:
        stamps = tuple(_stamp(p) for p in folders) + tuple(
            _stamp(Path(path)) for path, _ in cached[1]
        )
        if stamps == cached[0]:
            return cached[1]
    layers: list[tuple[str, dict[str, Any]]] = []
    for path in find_config_files(cwd):
        raw = _load_toml(path)
        if path.name == "pyproject.toml":
            table = raw.get("tool", {}).get("flowtrail", {})
        elif "flowtrail" in raw and len(raw) == 1 and isinstance(raw["flowtrail"], dict):
            table = raw["flowtrail"]
        else:
            table = raw
        for key in table:
            if key not in SETTING_KEYS:
                raise unknown_key_error(key, str(path), SETTING_KEYS)
        layers.append((str(path), _paths_relative_to(table, path.resolve().parent)))
    stamps = tuple(_stamp(p) for p in folders) + tuple(_stamp(Path(path)) for path, _ in layers)
    _file_cache[cache_key] = (stamps, layers)
    return layers


#: Options of handler tables that are paths.
_PATH_OPTIONS: Final = ("path", "spool_dir")


def _paths_relative_to(table: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``table`` with a relative ``log_dir``, and the relative ``path``/``spool_dir`` of
    its handler tables, made absolute from ``folder`` (the config file's): one project
    reads and writes one store from any working directory."""
    fixed = dict(table)
    log_dir = fixed.get("log_dir")
    if isinstance(log_dir, str) and log_dir and not os.path.isabs(log_dir):
        fixed["log_dir"] = os.path.normpath(folder / os.path.expanduser(log_dir))
    handlers = fixed.get("trace_handlers")
    if isinstance(handlers, list):
        fixed["trace_handlers"] = [
            {
                key: os.path.normpath(folder / value)
                if key in _PATH_OPTIONS
                and isinstance(value, str)
                and value not in ("", ":memory:")
                and not os.path.isabs(os.path.expanduser(value))
                else value
                for key, value in spec.items()
            }
            if isinstance(spec, dict)
            else spec
            for spec in handlers
        ]
    return fixed


def read_config_file(start: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """The settings of the config files in force merged (flowtrail.toml wins), and the
    path of the first."""
    layers = read_config_files(start)
    merged: dict[str, Any] = {}
    for _, table in reversed(layers):
        merged.update(table)
    return merged, layers[0][0] if layers else None


def validate_settings(layers: list[tuple[str, Mapping[str, Any]]]) -> Settings:
    """Merge ``(source, values)`` layers (first wins) into `Settings`, or raise a
    `ConfigError` that names the key, the value, its source and what is accepted."""
    merged: dict[str, Any] = {}
    source_of: dict[str, str] = {}
    for source, values in reversed(layers):
        for key, value in values.items():
            merged[key] = value
            source_of[key] = source
    if "log_tz" in merged:
        from flowtrail.context import tz_name

        merged["log_tz"] = tz_name(merged["log_tz"])
    if merged.get("trace_handlers") is not None:
        handlers = merged["trace_handlers"]
        if isinstance(handlers, (str, bytes, Mapping)) or not hasattr(handlers, "__iter__"):
            raise ConfigError(
                f"flowtrail config: 'trace_handlers' = {shown(handlers)} "
                f"(from {source_of['trace_handlers']}) is not valid: expected "
                f"{_ACCEPTED['trace_handlers']}"
            )
        merged["trace_handlers"] = tuple(handlers)
    try:
        settings = msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        key, reason = describe_validation_error(exc, merged, _ACCEPTED)
        if key is None:
            raise ConfigError(f"flowtrail config: {reason}") from None
        raise ConfigError(
            f"flowtrail config: {key!r} = {shown(merged.get(key))} (from {_where(key, source_of)})"
            f" is not valid: {reason}"
        ) from None
    _check_values(settings, source_of)
    return settings


def _where(key: str, source_of: Mapping[str, str]) -> str:
    source = source_of.get(key, "the defaults")
    if source == "the environment":
        return f"the environment variable {ENV_PREFIX}{key.upper()}"
    return source


def _check_values(settings: Settings, source_of: Mapping[str, str]) -> None:
    from flowtrail.context import clock_for
    from flowtrail.formats.line import LineFormatError, compile_line_format

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(
            f"flowtrail config: {key!r} = {shown(getattr(settings, key))} "
            f"(from {_where(key, source_of)}) is not valid: {why}; "
            f"expected {_ACCEPTED[key]}"
        )

    try:
        clock_for(settings.log_tz)
    except Exception:
        raise fail("log_tz", "unknown time zone") from None
    for key in ("log_format", "log_format_file"):
        try:
            compile_line_format(getattr(settings, key), settings.log_datetime_format)
        except LineFormatError as exc:
            raise fail(key, str(exc)) from None
    if settings.logs_trace_frame_layer < 1:
        raise fail("logs_trace_frame_layer", "must be at least 1")
    if not math.isfinite(settings.exit_timeout) or settings.exit_timeout < 0:
        raise fail("exit_timeout", "must be a finite number, not negative")
    if not 0.0 <= settings.sample_ratio <= 1.0:
        raise fail("sample_ratio", "must be between 0 and 1")


@lru_cache(maxsize=1024)
def check_extras_key(key: str) -> None:
    """Extras may hold anything, but a near-miss of a setting name is almost surely a
    typo: refuse it rather than silently ignore it."""
    close = difflib.get_close_matches(key, SETTING_KEYS, n=1, cutoff=0.88)
    if close and close[0] != key:
        raise ConfigError(
            f"flowtrail config: extras key {key!r} is not a setting; did you mean {close[0]!r}?"
        )


def resolve_settings(
    arguments: Mapping[str, Any] | None = None, extras: Mapping[str, Any] | None = None
) -> Settings:
    """Resolve settings from arguments, extras, environment, config file and defaults."""
    arguments = dict(arguments or {})
    for key in arguments:
        if key not in SETTING_KEYS:
            raise unknown_key_error(key, "the arguments", SETTING_KEYS)
    from_extras: dict[str, Any] = {}
    for key, value in (extras or {}).items():
        if key in SETTING_KEYS:
            from_extras[key] = value
        else:
            check_extras_key(key)
    file_layers = read_config_files()
    env_values = read_env()
    cache_key: tuple[Any, ...] | None = None
    if "trace_handlers" not in arguments and "trace_handlers" not in from_extras:
        try:
            cache_key = (
                tuple(sorted(arguments.items())),
                tuple(sorted(from_extras.items())),
                tuple(sorted((k, str(v)) for k, v in env_values.items())),
                msgspec.json.encode(file_layers),
            )
            hash(cache_key)
        except TypeError:
            cache_key = None
    if cache_key is not None and (cached := _settings_cache.get(cache_key)) is not None:
        return cached
    settings = validate_settings(
        [
            ("the arguments", arguments),
            ("extras", from_extras),
            ("the environment", env_values),
            *file_layers,
        ]
    )
    if cache_key is not None:
        if len(_settings_cache) > 256:
            _settings_cache.clear()
        _settings_cache[cache_key] = settings
    return settings


_settings_cache: dict[tuple[Any, ...], Settings] = {}
