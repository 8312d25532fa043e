"""Open a store for reading by URL: ``sqlite:///relative/to.db`` (``sqlite:////abs.db``
for an absolute path, as in SQLAlchemy), ``file://dir`` or a plain path (a ``.db`` or
``.sqlite`` file, or a directory of ``run_id=...`` folders). With no URL, the first
storing handler of the configuration, else the default SQLite store."""

from __future__ import annotations

from pathlib import Path

from flowtrail.config import ConfigError, mask_text, resolve_settings
from flowtrail.handlers import FileHandler, SQLiteHandler, make_handler
from flowtrail.handlers.base import StoreReader


def open_store(url: str | None = None) -> StoreReader:
    """A reader for ``url``, or for the configured (else default) store."""
    if url:
        return _from_url(url)
    settings = resolve_settings()
    for spec in settings.trace_handlers or ():
        handler = make_handler(spec)
        if isinstance(handler, StoreReader):
            return handler
    return SQLiteHandler(path=f"{settings.log_dir}/flowtrail.db")


def _from_url(url: str) -> StoreReader:
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
        return SQLiteHandler(path=path or "./logs/flowtrail.db", table_name=table)
    if url.startswith("file://"):
        return FileHandler(path=url[len("file://") :] or "./logs/traces")
    if "://" in url:
        raise ConfigError(
            f"flowtrail: store URL {mask_text(url)!r} is not supported here; "
            "use sqlite:///path/to.db, "
            "file://dir, or a path"
        )
    local = Path(url)
    if local.suffix in (".db", ".sqlite", ".sqlite3") or local.is_file():
        return SQLiteHandler(path=url)
    return FileHandler(path=url)
