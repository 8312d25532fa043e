"""The SQLite store: the seed's ``traces`` table (every `Metadata` column), WAL mode,
parameterised SQL only, a validated table name, and indexes for the readers' queries.

Each batch is one ``BEGIN IMMEDIATE`` transaction with one ``executemany``. Several
processes can write one database: a busy database is waited for (``busy_timeout``) and a
batch that still meets a lock is retried by the pipeline, then spooled, so "database is
locked" never reaches the workflow. Only failures of the database (busy, locked, I/O, full,
cannot open, read-only, corrupt) are retried; an error of the statement or the data
(a value SQLite cannot bind, a syntax or schema error) is not, so the pipeline isolates
the records it is about.

Durability: the database runs in WAL mode with ``synchronous = NORMAL`` (a commit is not
synced: a killed process loses nothing, a power loss may lose the last commits). When a
flush reaches the writer, `SQLiteHandler.sync` ``fsync``s the WAL file, so a flush that
returns True survives a power loss too (see benchmarks/README.md for its cost).
"""

from __future__ import annotations

import builtins
import heapq
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from itertools import chain, islice
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec

from flowtrail.config import DEFAULT_LOG_FORMAT_FILE, ConfigError, Settings
from flowtrail.formats.line import compile_line_format
from flowtrail.handlers.base import BaseHandler, HandlerConfig, PipelineConfig, StoreReader
from flowtrail.handlers.query import (
    RecordCounts,
    RecordFilter,
    SpanLoader,
    check_level,
    level_names,
    partial_loader,
    select_runs,
    sort_by_time,
    with_span_facts,
    with_statuses,
)
from flowtrail.handlers.query import (
    merge_counts as _merge_counts,
)
from flowtrail.lifecycle import INTERRUPTED
from flowtrail.pipeline import PartialExport
from flowtrail.records import (
    ERROR_LEVELS,
    LEVELS,
    METADATA_FIELDS,
    SPAN_FIELDS,
    Metadata,
    RunSummary,
    Span,
    SpanEvent,
    TraceData,
)
from flowtrail.status import OPEN_SPAN_STATUS, RecordFacts, SpanFacts, split_open

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # used with fullmatch
_JSON_COLUMNS = {"tags", "metadata"}
_COLUMN_TYPES = {
    "run_id": "TEXT NOT NULL",
    "parent_run_id": "TEXT",
    "level": "TEXT NOT NULL",
    "message": "TEXT NOT NULL",
    "error_flag": "BOOLEAN NOT NULL",
    "datetime": "TEXT NOT NULL",
    "process": "INTEGER NOT NULL",
    "thread": "INTEGER NOT NULL",
    "filename": "TEXT NOT NULL",
    "lineno": "INTEGER NOT NULL",
    "duration_ms": "REAL",
    "memory_usage_mb": "REAL",
    "cpu_usage_percent": "REAL",
    "created_at": "TIMESTAMP DEFAULT CURRENT_TIMESTAMP",
}
_SPAN_COLUMN_TYPES = {
    "start_ns": "INTEGER",
    "end_ns": "INTEGER",
    "duration_ms": "REAL",
    "cpu_time_ms": "REAL",
    "cpu_percent": "REAL",
    "memory_start_mb": "REAL",
    "memory_end_mb": "REAL",
    "process": "INTEGER",
    "thread": "INTEGER",
    "sampled": "BOOLEAN",
}
#: SQLite result codes of a database that may work again (extended codes start with them).
_TRANSIENT = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_READONLY",
    "SQLITE_PROTOCOL",
    "SQLITE_NOMEM",
    "SQLITE_INTERRUPT",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_NOLFS",
    "SQLITE_AUTH",
)
#: The same, by message, for Pythons without ``sqlite_errorname`` (before 3.11).
_TRANSIENT_TEXT = (
    "locked",
    "busy",
    "disk i/o",
    "unable to open",
    "readonly",
    "disk is full",
    "out of memory",
    "interrupted",
    "malformed",
    "not a database",
)
_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


def _create_file(path: Path, mode: int) -> None:
    """Create ``path`` empty with ``mode`` unless it exists (SQLite takes an empty file
    as a new database, and gives its -wal and -shm files the same permissions)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return
    os.close(fd)


def check_table_name(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise `ConfigError`."""
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise ConfigError(
            f"flowtrail config: handler 'sqlite' option 'table_name' = {name!r} is not valid: "
            "expected letters, digits and '_', starting with a letter or '_' (at most 63)"
        )
    return name


class SQLiteConfig(PipelineConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of `SQLiteHandler`."""

    #: Database file.
    path: str = "./logs/flowtrail.db"
    #: Table of log records (spans go to ``<table_name>_spans``).
    table_name: str = "traces"
    #: Milliseconds a writer waits for another process's transaction.
    busy_timeout_ms: Annotated[int, msgspec.Meta(ge=0)] = 30_000
    #: ``NORMAL`` survives a killed process; ``FULL`` also a power loss.
    synchronous: str = "NORMAL"
    #: Line format used to rebuild stdout/stderr text when reading.
    format: str | None = None
    #: Permissions of a new database file (and so of its -wal and -shm files): owner
    #: only by default, since records may hold secrets put in ``metadata``.
    file_mode: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0o600


class SQLiteHandler(BaseHandler, StoreReader):
    """Store records in an embedded SQLite database; read runs back with SQL."""

    type: ClassVar[str] = "sqlite"
    Config: ClassVar[builtins.type[HandlerConfig]] = SQLiteConfig
    local: ClassVar[bool] = True
    accepted: ClassVar[dict[str, str]] = {
        "path": "a database file path",
        "table_name": "a plain SQL identifier",
        "synchronous": "NORMAL or FULL",
        "busy_timeout_ms": "an integer number of milliseconds >= 0",
        "file_mode": "a permission mode from 0 to 0o777 such as 0o600 (JSON: 384)",
    }

    config: SQLiteConfig

    @classmethod
    def check_config(cls, config: Any) -> None:
        super().check_config(config)
        check_table_name(config.table_name)
        if config.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise cls.option_error("synchronous", config.synchronous, "unknown mode")

    def resolve(self, settings: Settings) -> Any:
        config = super().resolve(settings)
        if config.format is None:
            config = msgspec.structs.replace(config, format=settings.log_format_file)
        return config

    def describe(self) -> str:
        return f"'sqlite' at {self.config.path}"

    def destination(self) -> tuple[str, ...]:
        path = self.config.path
        return (self.type, path if path == ":memory:" else os.path.abspath(path), self.table)

    @property
    def table(self) -> str:
        """The validated table name (safe to put in SQL)."""
        return check_table_name(self.config.table_name)

    # ------------------------------------------------------------------ schema
    def _connect(self) -> sqlite3.Connection:
        path = Path(self.config.path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_file(path, self.config.file_mode)
        conn = sqlite3.connect(
            str(path),
            timeout=self.config.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")
        conn.execute("PRAGMA page_size = 16384")  # only takes effect on a new database
        conn.execute("PRAGMA cache_size = -16384")
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError:
            pass  # another process is switching it; WAL is persistent once set
        conn.execute(f"PRAGMA synchronous = {self.config.synchronous.upper()}")
        self._ensure_schema(conn)
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection, writing: bool = True) -> None:
        table = self.table
        columns = ",\n    ".join(
            f"{name} {_COLUMN_TYPES.get(name, 'TEXT')}" for name in METADATA_FIELDS
        )
        statements = [
            f"CREATE TABLE IF NOT EXISTS {table} (\n    id INTEGER PRIMARY KEY,\n    {columns}\n)",
            # Each index costs as much per insert as the row itself, so only the lookups
            # the readers make on large stores are indexed: a run's records, child runs
            # and error records (partial indexes cost nothing for other rows).
            # A run's records in time order (records of several processes interleave).
            f"CREATE INDEX IF NOT EXISTS {table}_run_time ON {table} (run_id, datetime, id)",
            f"CREATE INDEX IF NOT EXISTS {table}_parent ON {table} (parent_run_id) "
            "WHERE parent_run_id IS NOT NULL",
            f"CREATE INDEX IF NOT EXISTS {table}_errors ON {table} (run_id, level) "
            "WHERE error_flag",
            f"CREATE TABLE IF NOT EXISTS {table}_spans (\n    id INTEGER PRIMARY KEY,\n    "
            + ",\n    ".join(
                f"{name} {_SPAN_COLUMN_TYPES.get(name, 'TEXT')}" for name in SPAN_FIELDS
            )
            + "\n)",
            f"CREATE INDEX IF NOT EXISTS {table}_spans_run ON {table}_spans (run_id, start_ns)",
            # Span starts (open spans): few rows, found without a scan by `runs`.
            f"CREATE INDEX IF NOT EXISTS {table}_spans_open ON {table}_spans (run_id) "
            f"WHERE status = '{OPEN_SPAN_STATUS}'",
        ]
        for attempt in range(50):
            try:
                for statement in statements:
                    conn.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                if "readonly" in str(exc) and not writing:
                    return  # read what is there (an index it lacks makes reads slower)
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == 49:
                    raise
                threading.Event().wait(0.05)

    def _writer(self) -> sqlite3.Connection:
        conn = self.__dict__.get("_conn")
        if conn is None:
            conn = self.__dict__["_conn"] = self._connect()
            self.__dict__["_inserts"] = {}
        return conn

    def _statements(
        self,
        table: str,
        columns: tuple[str, ...],
        rows: Sequence[tuple[Any, ...]],
        records: Sequence[Any],
    ) -> list[tuple[str, list[Any], Sequence[Any]]]:
        """``(sql, parameters, records)`` of multi-row INSERTs for ``rows``, as few as the
        parameter limit allows."""
        per_statement = max(1, _MAX_VARIABLES // len(columns))
        cache: dict[tuple[str, tuple[str, ...], int], str] = self.__dict__["_inserts"]
        statements = []
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            key = (table, columns, len(chunk))
            sql = cache.get(key)
            if sql is None:
                group = "(" + ", ".join("?" for _ in columns) + ")"
                sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join(
                    [group] * len(chunk)
                )
                if len(cache) > 64:
                    cache.clear()
                cache[key] = sql
            statements.append(
                (sql, list(chain.from_iterable(chunk)), records[start : start + per_statement])
            )
        return statements

    # ------------------------------------------------------------------ writing
    def export(self, batch: Sequence[Any]) -> None:
        """Write a batch as a few multi-row INSERTs, each its own transaction.

        One statement per up to ~900 rows means one step of the database per statement,
        and so one release of the interpreter lock: ``executemany`` (a step, and a
        release, per row) has to win the lock back from a busy caller for every row,
        which measured 3.6 ms a row. If a later statement fails, the records of the
        statements already committed are not written again (`PartialExport`)."""
        conn = self._writer()
        if set(map(type, batch)) == {Metadata}:
            logs, spans = batch, []
        else:
            logs = [r for r in batch if r.__class__ is Metadata]
            spans = [r for r in batch if r.__class__ is Span]
        work: list[tuple[str, list[Any], Sequence[Any]]] = []
        if logs:
            columns, rows = _columns_and_rows(logs)
            work += self._statements(self.table, columns, rows, logs)
        if spans:
            columns, rows = _columns_and_rows(spans, SPAN_FIELDS, _SPAN_JSON)
            work += self._statements(f"{self.table}_spans", columns, rows, spans)
        for index, (sql, params, _records) in enumerate(work):
            try:
                conn.execute(sql, params)
            except BaseException as exc:  # a signal handler's exception too
                if isinstance(exc, sqlite3.DatabaseError) and not self.retryable(exc):
                    # A schema error (a table dropped by hand) may be this connection's
                    # view: the next attempt connects again and makes the schema.
                    self.close_exporter()
                if index == 0:
                    raise
                rest = [record for _, _, records in work[index:] for record in records]
                raise PartialExport(rest, exc) from exc

    def retryable(self, exc: BaseException) -> bool:
        """Whether the database may take the same batch later: busy, locked, I/O,
        full, cannot open, read-only, corrupt (a person may repair it), or the disk
        (``OSError``). A statement or data error never is."""
        if isinstance(exc, OSError):
            return True
        if not isinstance(exc, sqlite3.DatabaseError):
            return False  # binding: UnicodeEncodeError, OverflowError, TypeError ...
        name = getattr(exc, "sqlite_errorname", None)
        if name:
            return name.startswith(_TRANSIENT)
        text = str(exc).lower()
        return any(part in text for part in _TRANSIENT_TEXT)

    def sync(self) -> None:
        """Make every committed batch durable against power loss: ``fsync`` the WAL
        (with ``synchronous = NORMAL`` commits are not synced), and once per connection
        the database's folder (the names of the database and its WAL)."""
        conn = self.__dict__.get("_conn")
        if conn is None or self.config.synchronous.upper() in ("FULL", "EXTRA"):
            return
        path = Path(self.config.path)
        if str(path) == ":memory:":
            return
        # A checkpoint syncs the database file itself (synchronous = NORMAL does that).
        try:
            fd = os.open(f"{path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if not self.__dict__.get("_dir_synced"):
            from flowtrail.spool import sync_directory

            sync_directory(path.resolve().parent)
            self.__dict__["_dir_synced"] = True

    def export_nowait(self, batch: Sequence[Any]) -> None:
        """`export` that fails at once, rather than wait, when another process holds
        the database (the pipeline then leaves the batch to its worker)."""
        conn = self._writer()
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            self.export(batch)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")

    def close_exporter(self) -> None:
        conn = self.__dict__.pop("_conn", None)
        self.__dict__.pop("_dir_synced", None)
        if conn is not None:
            conn.close()

    def after_fork(self) -> None:
        # Never use a connection across fork; the parent keeps its own.
        self.__dict__.pop("_conn", None)

    # ------------------------------------------------------------------ reading
    def _reader(self) -> sqlite3.Connection:
        self._flush_own()
        path = Path(self.config.path)
        if not path.exists():
            conn = sqlite3.connect(":memory:")
        else:
            conn = sqlite3.connect(str(path), timeout=self.config.busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")
        self._ensure_schema(conn, writing=False)
        return conn

    def _flush_own(self) -> None:
        from flowtrail.pipeline import all_pipelines

        target = str(Path(self.config.path).resolve())
        for pipeline in all_pipelines():
            exporter = pipeline.exporter
            if (
                isinstance(exporter, SQLiteHandler)
                and str(Path(exporter.config.path).resolve()) == target
            ):
                pipeline.flush(10.0)

    def _select(self, where: str, params: Sequence[Any], tail: str = "") -> list[Metadata]:
        names = ", ".join(METADATA_FIELDS)
        conn = self._reader()
        try:
            rows = conn.execute(
                f"SELECT {names} FROM {self.table} WHERE {where} {_TIME_ORDER} {tail}", params
            ).fetchall()
        finally:
            conn.close()
        return [_record(row) for row in rows]

    def _trace_data(self, meta: list[Metadata], spans: list[Span], text: bool = True) -> TraceData:
        spans, still_open = split_open(spans)
        if not text:
            return TraceData(meta=meta, spans=spans, open_spans=still_open)
        line = compile_line_format(self.config.format or DEFAULT_LOG_FORMAT_FILE)
        return TraceData(
            stdout="".join(line(r) + "\n" for r in meta if not r.error_flag),
            stderr="".join(line(r) + "\n" for r in meta if r.error_flag),
            meta=meta,
            spans=spans,
            open_spans=still_open,
        )

    def find_trace_with_id(
        self,
        run_id: str,
        force_raise: bool = True,
        *,
        include_children: bool = True,
        text: bool = True,
    ) -> TraceData:
        params: tuple[str, ...]
        if include_children:
            where, params = "run_id = ? OR parent_run_id = ?", (run_id, run_id)
            meta = sort_by_time(self._select(where, params))
        else:
            where, params = "run_id = ?", (run_id,)
            meta = self._select(where, params)
        data = self._trace_data(meta, self._select_spans(where, params), text)
        return self.found(run_id, data, force_raise)

    def _select_spans(self, where: str, params: Sequence[Any]) -> list[Span]:
        conn = self._reader()
        try:
            rows = conn.execute(
                f"SELECT {', '.join(SPAN_FIELDS)} FROM {self.table}_spans WHERE {where} "
                "ORDER BY start_ns, id",
                params,
            ).fetchall()
        finally:
            conn.close()
        return [_span_record(row) for row in rows]

    def _iter_select(self, sql: str, params: Sequence[Any], convert: Any) -> Iterator[Any]:
        """``convert`` of each row of ``sql``, fetched a batch at a time."""
        conn = self._reader()
        try:
            cursor = conn.execute(sql, params)
            while rows := cursor.fetchmany(2000):
                yield from map(convert, rows)
        finally:
            conn.close()

    def _run_ids(self, run_id: str, include_children: bool) -> list[str]:
        """``run_id`` and, with ``include_children``, the runs whose parent it is."""
        if not include_children:
            return [run_id]
        conn = self._reader()
        try:
            rows = conn.execute(
                f"SELECT DISTINCT run_id FROM {self.table} WHERE parent_run_id = ? AND run_id != ?",
                (run_id, run_id),
            ).fetchall()
        finally:
            conn.close()
        return [run_id, *sorted(row[0] for row in rows)]

    def iter_records(
        self,
        run_id: str,
        *,
        include_children: bool = False,
        level: str | None = None,
        fields: Iterable[str] | None = None,
    ) -> Iterator[Metadata]:
        names = level_names(level)
        where = "run_id = ?"
        if names:
            where += f" AND level IN ({', '.join('?' for _ in names)})"
        columns, load = partial_loader(Metadata, fields, _record)
        sql = f"SELECT {', '.join(columns)} FROM {self.table} WHERE {where} {_TIME_ORDER}"
        streams = [
            self._iter_select(sql, (run, *(names or ())), load)
            for run in self._run_ids(run_id, include_children)
        ]
        if len(streams) == 1:
            yield from streams[0]
        else:  # each run in its own written order, the runs merged by time
            yield from heapq.merge(*streams, key=attrgetter("datetime"))

    def run_spans(
        self,
        run_id: str,
        *,
        include_children: bool = False,
        all_events: bool = True,
        fields: Iterable[str] | None = None,
    ) -> list[Span]:
        where = "run_id = ?"
        params: tuple[str, ...] = (run_id,)
        if include_children:
            where, params = "run_id = ? OR parent_run_id = ?", (run_id, run_id)
        load = SpanLoader(fields, all_events=all_events)
        columns = [
            # The events of failed spans only, unless all are wanted: the others not read.
            "CASE WHEN status = 'error' THEN events END"
            if name == "events" and not all_events
            else name
            for name in load.fields
        ]
        sql = (
            f"SELECT {', '.join(columns)} FROM {self.table}_spans WHERE {where} "
            "ORDER BY start_ns, id"
        )
        return list(self._iter_select(sql, params, load))

    def record_counts(self, run_id: str, *, include_children: bool = False) -> RecordCounts:
        table, names = self.table, ", ".join(METADATA_FIELDS)
        counts = RecordCounts()
        conn = self._reader()
        try:
            for run in self._run_ids(run_id, include_children):

                def one(sql: str, run: str = run) -> Metadata | None:
                    row = conn.execute(
                        f"SELECT {names} FROM {table} WHERE run_id = ? {sql} LIMIT 1", (run,)
                    ).fetchone()
                    return None if row is None else _record(row)

                (total,) = conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run,)
                ).fetchone()
                (errors,) = conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE run_id = ? AND error_flag", (run,)
                ).fetchone()
                counts = _merge_counts(
                    counts,
                    RecordCounts(
                        records=total,
                        error_records=errors,
                        first=one(_TIME_ORDER),
                        last=one("ORDER BY datetime DESC, id DESC"),
                        first_error=one(f"AND error_flag {_TIME_ORDER}") if errors else None,
                    ),
                )
        finally:
            conn.close()
        return counts

    def spans(
        self,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        trace_id: str | None = None,
        limit: int | None = None,
    ) -> list[Span]:
        """Finished spans, oldest first, filtered by run, workflow or trace."""
        clauses, params = [f"status != '{OPEN_SPAN_STATUS}'"], []
        for column, value in (
            ("run_id", run_id),
            ("workflow_name", workflow),
            ("trace_id", trace_id),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        found = self._select_spans(" AND ".join(clauses), params)
        return found[:limit] if limit is not None else found

    def find_traces(self) -> Iterator[TraceData]:
        for summary in self.runs():
            yield self.find_trace_with_id(summary.run_id, include_children=False)

    def search(
        self,
        text: str | None = None,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        level: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int | None = 1000,
        user: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[Metadata]:
        """Records matching every filter, oldest first: SQL narrows them (a time range
        by its text, widened by the largest zone offsets), then each is checked exactly
        as the file store checks it, read a batch at a time up to ``limit``."""
        keep = RecordFilter(
            text,
            run_id=run_id,
            workflow=workflow,
            level=level,
            since=since,
            until=until,
            user=user,
            tags=tags,
        )
        clauses, params = ["1 = 1"], []
        for column, value in (("run_id", run_id), ("workflow_name", workflow), ("user_id", user)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        minimum = check_level(level)
        if minimum is not None:
            names = [name for name, value in LEVELS.items() if value >= minimum]
            clauses.append(f"level IN ({', '.join('?' for _ in names)})")
            params.extend(names)
        if text and text.isascii():
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("(message LIKE ? ESCAPE '\\' OR exception_message LIKE ? ESCAPE '\\')")
            params.extend([f"%{escaped}%"] * 2)
        # A record's text is its local time: within 12 hours before and 14 after UTC.
        if keep.since is not None:
            clauses.append("datetime >= ?")
            params.append(_naive_text(keep.since - timedelta(hours=12)))
        if keep.until is not None:
            clauses.append("datetime <= ?")
            params.append(_naive_text(keep.until + timedelta(hours=14, seconds=1)))
        exact = not (text and not text.isascii()) and since is None and until is None and not tags
        tail = "LIMIT ?" if exact and limit is not None else ""
        columns = ", ".join(METADATA_FIELDS)
        where = " AND ".join(clauses)
        sql = f"SELECT {columns} FROM {self.table} WHERE {where} {_TIME_ORDER} {tail}"
        found = self._iter_select(sql, [*params, *([limit] if tail else [])], _record)
        if not exact:
            found = filter(keep, found)
        return list(islice(found, limit) if limit is not None else found)

    def runs(self, *, workflow: str | None = None, limit: int | None = None) -> list[RunSummary]:
        errors = ", ".join(f"'{name}'" for name in sorted(ERROR_LEVELS))
        table = self.table
        unset = OPEN_SPAN_STATUS
        conn = self._reader()
        try:
            logs = conn.execute(
                f"SELECT run_id, MAX(parent_run_id), MAX(workflow_name), MIN(datetime), "
                f"MAX(datetime), COUNT(*), SUM(level = 'warning'), SUM(level IN ({errors})) "
                f"FROM {table} GROUP BY run_id"
            ).fetchall()
            spans = conn.execute(
                f"SELECT run_id, MAX(parent_run_id), MAX(workflow_name), MIN(start_time), "
                f"MAX(end_time), SUM(status != '{unset}'), SUM(status = 'error') "
                f"FROM {table}_spans GROUP BY run_id"
            ).fetchall()
            # A run's outcome is that of its top spans (a failed attempt that was
            # retried inside does not fail the run).
            failed_roots = conn.execute(
                f"SELECT run_id, MAX(status = 'error') FROM {table}_spans "
                "WHERE parent_span_id IS NULL GROUP BY run_id"
            ).fetchall()
            facts = _status_facts(conn, table, [row[0] for row in spans if row[6]])
        finally:
            conn.close()
        error_records, failing_spans, still_open = facts
        summaries: dict[str, RunSummary] = {}
        for row in logs:
            summaries[row[0]] = RunSummary(
                run_id=row[0],
                parent_run_id=row[1],
                workflow_name=row[2],
                start=row[3],
                end=row[4],
                records=row[5],
                warnings=row[6] or 0,
                errors=row[7] or 0,
            )
        root_status = {run: "error" if failed else "ok" for run, failed in failed_roots}
        for row in spans:
            summary = summaries.get(row[0]) or RunSummary(run_id=row[0], parent_run_id=row[1])
            summaries[row[0]] = with_span_facts(
                summary,
                workflow_name=row[2],
                start=row[3],
                end=row[4],
                spans=row[5] or 0,
                span_errors=row[6] or 0,
                span_status=root_status.get(row[0]),
            )
        found = with_statuses(summaries, error_records, failing_spans, still_open)
        return select_runs(found, workflow, limit)

    def run_ids(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        """The ids of the runs whose id starts with ``prefix``, sorted: one index seek per
        id found (records and spans), so a prefix costs nothing on a large run."""
        conn = self._reader()
        found: set[str] = set()
        try:
            for table in (self.table, f"{self.table}_spans"):
                run_id: str | None = None
                count = 0
                while limit is None or count < limit:
                    run_id = _next_id(conn, table, run_id, prefix)
                    if run_id is None or not run_id.startswith(prefix):
                        break
                    found.add(run_id)
                    count += 1
        finally:
            conn.close()
        return sorted(found)[:limit] if limit is not None else sorted(found)


class _OpenSpan(msgspec.Struct, frozen=True):
    span_id: str
    process: int
    hostname: str | None


def _status_facts(
    conn: sqlite3.Connection, table: str, failing_runs: list[str]
) -> tuple[dict[str, list[RecordFacts]], dict[str, list[SpanFacts]], dict[str, list[_OpenSpan]]]:
    """What `run_status` needs of every run, read without decoding whole rows: the error
    records, the spans of the runs that have a span in error, and the open spans (span
    starts whose end is not stored; an index seek each)."""
    records: dict[str, list[RecordFacts]] = {}
    for run_id, span_id, level, message, kind, text, metadata in conn.execute(
        f"SELECT run_id, span_id, level, message, exception_type, exception_message, "
        f"CASE WHEN metadata LIKE '%\"{INTERRUPTED}\"%' THEN metadata END "
        f"FROM {table} WHERE error_flag"
    ):
        # The metadata is decoded only for the few records that name a signal.
        signal = _json_decode(metadata).get(INTERRUPTED) if metadata else None
        records.setdefault(run_id, []).append(
            RecordFacts(
                span_id, level, message, kind, text, {INTERRUPTED: signal} if signal else {}
            )
        )
    spans: dict[str, list[SpanFacts]] = {}
    for start in range(0, len(failing_runs), 500):
        chunk = failing_runs[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for row in conn.execute(
            f"SELECT run_id, span_id, parent_span_id, kind, name, start_ns, status, "
            f"status_message, CASE WHEN status = 'error' THEN attributes END "
            f"FROM {table}_spans WHERE run_id IN ({marks}) AND status != '{OPEN_SPAN_STATUS}'",
            chunk,
        ):
            run_id, span_id, parent, kind, name, start_ns, status, message, attributes = row
            spans.setdefault(run_id, []).append(
                SpanFacts(
                    span_id,
                    parent,
                    kind,
                    name,
                    start_ns,
                    status,
                    message,
                    _json_decode(attributes) if attributes else {},
                )
            )
    still_open: dict[str, list[_OpenSpan]] = {}
    for run_id, span_id, process, hostname in conn.execute(
        f"SELECT run_id, span_id, process, hostname FROM {table}_spans AS o "
        f"WHERE status = '{OPEN_SPAN_STATUS}' AND NOT EXISTS (SELECT 1 FROM {table}_spans AS e "
        "WHERE e.run_id = o.run_id AND e.start_ns = o.start_ns AND e.span_id = o.span_id "
        f"AND e.status != '{OPEN_SPAN_STATUS}')"
    ):
        still_open.setdefault(run_id, []).append(_OpenSpan(span_id, process or 0, hostname))
    return records, spans, still_open


def _next_id(conn: sqlite3.Connection, table: str, after: str | None, low: str) -> str | None:
    """The smallest run id of ``table`` that is >= ``low`` and > ``after`` (an index seek)."""
    if after is None:
        row = conn.execute(f"SELECT MIN(run_id) FROM {table} WHERE run_id >= ?", (low,))
    else:
        row = conn.execute(f"SELECT MIN(run_id) FROM {table} WHERE run_id > ?", (after,))
    return row.fetchone()[0]


def _naive_text(moment: datetime) -> str:
    """A moment in UTC as ISO text without a zone, to compare with stored time stamps."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat()


#: Records in the order they happened: by time stamp (one store has one ``log_tz``, so
#: the ISO text sorts as the times do), then as written. Records of several processes of
#: one run interleave as they happened, as on the other stores.
_TIME_ORDER = "ORDER BY datetime, id"
_ASTUPLE = msgspec.structs.astuple
#: Bound parameters one statement may have (SQLITE_MAX_VARIABLE_NUMBER).
_MAX_VARIABLES = 32_000 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
_TAGS = METADATA_FIELDS.index("tags")
_META = METADATA_FIELDS.index("metadata")


def _json_column(values: tuple[Any, ...], empty: str) -> tuple[str, ...]:
    # Records of one trace share the same tags list and metadata dict objects: encode
    # each distinct object once per batch.
    first = values[0]
    if values.count(first) == len(values):  # one shared object (or equal ones): encode once
        return (_json_encode(first).decode() if first else empty,) * len(values)
    texts: dict[int, str] = {}
    out = []
    for value in values:
        text = texts.get(id(value))
        if text is None:
            text = texts[id(value)] = _json_encode(value).decode() if value else empty
        out.append(text)
    return tuple(out)


def _columns_and_rows(
    records: Sequence[Any],
    fields: tuple[str, ...] = METADATA_FIELDS,
    json_columns: tuple[tuple[int, str], ...] = ((_TAGS, "[]"), (_META, "{}")),
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """The column names and rows of records of one type: the JSON columns encoded, and
    columns that are NULL in every row left out of the INSERT (they default to NULL),
    which saves binding them."""
    tuples = list(map(_ASTUPLE, records))
    if not tuples:
        return (), []
    count = len(tuples)
    columns = list(zip(*tuples, strict=True))
    for index, empty in json_columns:
        columns[index] = _json_column(columns[index], empty)
    keep = tuple(i for i, column in enumerate(columns) if column.count(None) != count)
    names = tuple(fields[i] for i in keep)
    return names, list(zip(*(columns[i] for i in keep), strict=True))


_SPAN_ATTRIBUTES = SPAN_FIELDS.index("attributes")
_SPAN_EVENTS = SPAN_FIELDS.index("events")
_SPAN_JSON = ((_SPAN_ATTRIBUTES, "{}"), (_SPAN_EVENTS, "[]"))
_span_events = msgspec.json.Decoder(list[SpanEvent])


def _span_record(row: Sequence[Any]) -> Span:
    values = dict(zip(SPAN_FIELDS, row, strict=True))
    values["attributes"] = _json_decode(values["attributes"]) if values["attributes"] else {}
    values["events"] = _span_events.decode(values["events"]) if values["events"] else []
    values["sampled"] = bool(values["sampled"])
    return Span(**values)


_ERROR_FLAG = METADATA_FIELDS.index("error_flag")
_CREATED_AT = METADATA_FIELDS.index("created_at")


def _record(row: Sequence[Any]) -> Metadata:
    # Columns are in field order, so the struct is built positionally (several times
    # faster than by keyword for a run of 100,000 records).
    values = list(row)
    values[_TAGS] = _json_decode(values[_TAGS]) if values[_TAGS] else []
    values[_META] = _json_decode(values[_META]) if values[_META] else {}
    values[_ERROR_FLAG] = bool(values[_ERROR_FLAG])
    return Metadata(*values)
