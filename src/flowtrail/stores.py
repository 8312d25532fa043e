"""Open a store for reading by URL: ``sqlite:///relative/to.db`` (``sqlite:////abs.db``
for an absolute path, as in SQLAlchemy), ``file://dir`` or a plain path (a ``.db`` or
``.sqlite`` file, a directory that holds ``flowtrail.db``, or a directory of
``run_id=...`` folders), or ``elasticsearch+http(s)://[user:password@]host:9200/index``
(see `flowtrail.handlers.elastic.options_from_url`). With no URL, the
``FLOWTRAIL_STORE`` environment variable, else the first storing handler of the
configuration, else ``<log_dir>/flowtrail.db``.

A store opened with ``check=True`` (the default) must be there and be a flowtrail store:
a path that does not exist, a file that is not an SQLite database, or a database without
flowtrail's tables raises `StoreError`, one line naming the path and where it came from.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from flowtrail.config import ENV_PREFIX, ConfigError, mask_text, resolve_settings
from flowtrail.handlers import ElasticHandler, FileHandler, SQLiteHandler, make_handler
from flowtrail.handlers.base import StoreReader
from flowtrail.handlers.elastic import is_elastic_url, options_from_url

#: The environment variable naming the default store of the reading commands.
STORE_VARIABLE = f"{ENV_PREFIX}STORE"
#: The database file a store directory (``log_dir``) holds.
DB_NAME = "flowtrail.db"


class StoreError(ValueError):
    """A store to read is missing or is not a flowtrail store. One line, naming the path."""


def open_store(url: str | None = None, *, check: bool = True) -> StoreReader:
    """A reader for ``url``, else for ``FLOWTRAIL_STORE``, else for the configured (else
    default) store. With ``check``, raise `StoreError` unless the store exists and is a
    flowtrail store (see the module docstring)."""
    if url:
        reader, source = _from_url(url), None
    elif os.environ.get(STORE_VARIABLE):
        url = os.environ[STORE_VARIABLE]
        reader, source = _from_url(url), f"from {STORE_VARIABLE}"
    else:
        reader, source = _configured()
    if check:
        check_store(reader, source)
    return reader


def describe_store(store: StoreReader) -> str:
    """``SQLite store /abs/path.db`` or ``file store /abs/dir``, for messages."""
    if isinstance(store, SQLiteHandler):
        table = store.config.table_name
        where = os.path.abspath(store.config.path)
        return f"SQLite store {where}" + (f" (table {table})" if table != "traces" else "")
    if isinstance(store, FileHandler):
        return f"file store {os.path.abspath(store.config.path)}"
    describe = getattr(store, "describe", None)
    return describe() if callable(describe) else type(store).__name__


def check_store(store: StoreReader, source: str | None = None) -> None:
    """Raise `StoreError` unless ``store`` exists and is a flowtrail store; ``source``
    says where the store was chosen (for the message)."""
    origin = f" ({source})" if source else ""
    if isinstance(store, SQLiteHandler):
        _check_sqlite(Path(store.config.path), store.config.table_name, origin)
    elif isinstance(store, ElasticHandler):
        problem = store.check_store()
        if problem:
            raise StoreError(f"flowtrail: {problem}{origin}")
    elif isinstance(store, FileHandler):
        path = Path(store.config.path)
        if not path.exists():
            raise StoreError(f"flowtrail: no store at {path.absolute()}: no such directory{origin}")
        if not path.is_dir():
            raise StoreError(
                f"flowtrail: {path.absolute()}{origin} is a file, not a file store "
                "(a directory of run_id=... folders)"
            )


def _check_sqlite(path: Path, table: str, origin: str) -> None:
    if str(path) == ":memory:":
        return
    where = path.absolute()
    if not path.exists():
        raise StoreError(f"flowtrail: no store at {where}: no such file{origin}")
    if path.is_dir():
        raise StoreError(f"flowtrail: {where}{origin} is a directory, not an SQLite database")
    if not os.access(path, os.R_OK):
        raise StoreError(f"flowtrail: cannot read {where}{origin}: permission denied")
    try:
        if path.stat().st_size == 0:
            return  # created by a writer that has not written yet: an empty store
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            names = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"flowtrail: {where}{origin} is not a flowtrail store ({exc})") from None
    except OSError as exc:
        raise StoreError(f"flowtrail: cannot read {where}{origin}: {exc.strerror}") from None
    if table not in names and f"{table}_spans" not in names:
        raise StoreError(
            f"flowtrail: {where}{origin} is an SQLite database but not a flowtrail store "
            f"(it has no table {table!r})"
        )


def _configured() -> tuple[StoreReader, str]:
    """The store the configuration writes to, and what chose it."""
    settings = resolve_settings()
    for spec in settings.trace_handlers or ():
        handler = make_handler(spec)
        if isinstance(handler, StoreReader):
            return handler, "the configured trace_handlers"
    return (
        SQLiteHandler(path=f"{settings.log_dir}/{DB_NAME}"),
        f"the default store, log_dir {settings.log_dir!r}; give --store or set {STORE_VARIABLE}",
    )


def _from_url(url: str) -> StoreReader:
    if is_elastic_url(url):
        return ElasticHandler(**options_from_url(url))
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        path = rest[1:] if rest.startswith("/") and not rest.startswith("//") else rest
        if rest.startswith("//"):
            path = rest[1:]
        table = "traces"
        if "?" in path:
            path, _, query = path.partition("?")
            for pair in query.split("&"):
                key, _, value = pair.partition("=")
                if key == "table":
                    table = value
        # SQLAlchemy's rule: sqlite:///rel/x.db is relative, sqlite:////abs/x.db absolute.
        # Many people write sqlite:///tmp/x.db meaning /tmp/x.db: take that when only the
        # absolute file exists.
        relative_missing = path and not path.startswith("/") and not Path(path).exists()
        if relative_missing and Path("/" + path).is_file():
            path = "/" + path
        return SQLiteHandler(path=path or f"./logs/{DB_NAME}", table_name=table)
    if url.startswith("file://"):
        return FileHandler(path=url[len("file://") :] or "./logs/traces")
    if "://" in url:
        raise ConfigError(
            f"flowtrail: store URL {mask_text(url)!r} is not supported here; "
            "use sqlite:///path/to.db, "
            "file://dir, elasticsearch+http://host:9200/index, or a path"
        )
    local = Path(url)
    if local.suffix in (".db", ".sqlite", ".sqlite3") or local.is_file():
        return SQLiteHandler(path=url)
    if (local / DB_NAME).is_file():
        return SQLiteHandler(path=str(local / DB_NAME))  # a log_dir: read its database
    return FileHandler(path=url)
