"""The file store: one directory per run under a base path.

``<path>/run_id=<run id>/stdout.txt`` (text lines of non-error records), ``stderr.txt``
(error records), ``metadata.txt`` (one JSON record a line) and ``spans.txt``. Each batch is
one ``write`` per file on a descriptor opened with ``O_APPEND``, so writers in several
threads and processes never interleave lines. A flush ``fsync``s what was written (and the
folders of files created since the last flush), so a flush that returns True survives a
power loss. Readers skip a torn last line (a writer killed mid-line).

A write that fails part way (disk full, ``RLIMIT_FSIZE``) leaves no torn, glued or
duplicated lines: every file of the failed run's batch is truncated back to where the
batch started, so the retry or replay writes each line once. The limit: if another
process appended to one of those files after this batch's write, the file is not
truncated (that would cut the other process's lines), and that file may get this batch's
lines twice.
"""

from __future__ import annotations

import builtins
import errno
import functools
import heapq
import os
import stat
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec

from flowtrail.config import Settings
from flowtrail.formats.line import compile_line_format
from flowtrail.handlers.base import (
    BaseHandler,
    HandlerConfig,
    PipelineConfig,
    StoreReader,
    check_run_id,
)
from flowtrail.handlers.query import (
    RecordCounts,
    RecordFilter,
    SpanLoader,
    at_or_above,
    check_level,
    merge_counts,
    parse_time,
    sort_by_time,
    summarize,
)
from flowtrail.pipeline import PartialExport
from flowtrail.records import (
    Metadata,
    RunSummary,
    Span,
    TraceData,
    decode_metadata,
    encode_lines,
)
from flowtrail.status import split_open

_FILES = ("stdout.txt", "stderr.txt", "metadata.txt", "spans.txt")
_ERROR_FLAG = attrgetter("error_flag")
_MAX_OPEN = 64


class FileConfig(PipelineConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of `FileHandler`."""

    #: Base directory of the run directories.
    path: str = "./logs/traces"
    #: Line format of stdout.txt/stderr.txt; defaults to the ``log_format_file`` setting.
    format: str | None = None
    #: strftime format of ``{datetime}``; defaults to ``log_datetime_format``.
    datetime_format: str | None = None
    #: Emoji before ``[PREFIX]:`` messages; defaults to ``log_add_emoji``.
    add_emoji: bool | None = None
    #: fsync the files when a flush reaches the writer (durable against power loss).
    fsync: bool = True
    #: Permissions of new log files (records may hold secrets put in ``metadata``):
    #: owner only by default; e.g. ``0o640`` to let the group read them.
    file_mode: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0o600


class RefusedFile(ValueError):
    """A log file flowtrail will not write: a symbolic link, or not a regular file (a
    link planted in a run folder would make flowtrail append wherever it points)."""


class FileHandler(BaseHandler, StoreReader):
    """Write each run to its own directory of text and JSON-lines files; read runs back."""

    type: ClassVar[str] = "file"
    Config: ClassVar[builtins.type[HandlerConfig]] = FileConfig
    local: ClassVar[bool] = True
    accepted: ClassVar[dict[str, str]] = {
        "path": "a directory path",
        "format": "a str.format string over record fields",
        "fsync": "true or false",
        "file_mode": "a permission mode from 0 to 0o777 such as 0o600 (JSON: 384)",
    }

    config: FileConfig

    def resolve(self, settings: Settings) -> Any:
        config = super().resolve(settings)
        return msgspec.structs.replace(
            config,
            format=config.format if config.format is not None else settings.log_format_file,
            datetime_format=config.datetime_format or settings.log_datetime_format,
            add_emoji=config.add_emoji if config.add_emoji is not None else settings.log_add_emoji,
        )

    def describe(self) -> str:
        return f"'file' at {self.config.path}"

    def destination(self) -> tuple[str, ...]:
        return (self.type, os.path.abspath(self.config.path))

    # ------------------------------------------------------------------ paths
    @property
    def base(self) -> Path:
        """The base directory."""
        return Path(self.config.path)

    def run_dir(self, run_id: str) -> Path:
        """The directory of one run; refuses run ids that would leave the base."""
        check_run_id(run_id)
        if len(f"run_id={run_id}".encode(errors="surrogateescape")) > 255:
            raise ValueError(f"run id {run_id!r} is too long for a folder name (255 bytes)")
        base = self.base.resolve()
        folder = (base / f"run_id={run_id}").resolve()
        if folder.parent != base or folder.name != f"run_id={run_id}":
            raise ValueError(f"run id {run_id!r} would leave {base} (or is a symbolic link)")
        return folder

    # ------------------------------------------------------------------ writing
    def _descriptors(self) -> OrderedDict[tuple[str, str], int]:
        fds = self.__dict__.get("_fds")
        if fds is None:
            fds = self.__dict__["_fds"] = OrderedDict()
        return fds

    def _fd(self, run_id: str, name: str) -> int:
        fds = self._descriptors()
        key = (run_id, name)
        fd = fds.get(key)
        if fd is not None:
            fds.move_to_end(key)
            return fd
        folder = self.run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        fd = self._open_log(folder, name)
        fds[key] = fd
        while len(fds) > _MAX_OPEN:
            _, old = fds.popitem(last=False)
            self._close_fd(old, sync=self.config.fsync)
        return fd

    def _open_log(self, folder: Path, name: str) -> int:
        """Open ``folder/name`` for appending, creating it with ``file_mode``. Never
        through a symbolic link: the checked folder is opened without following one and
        the file is opened inside it (``openat``) without following one either."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        # O_NONBLOCK: a FIFO planted as a log file is refused, not waited on forever.
        flags |= os.O_NONBLOCK
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise RefusedFile(f"{folder} is not a plain folder; nothing is written there")
            raise
        try:
            try:
                fd = os.open(name, flags, self.config.file_mode, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):
                    raise RefusedFile(
                        f"{folder / name} is a symbolic link or not a regular file; "
                        "flowtrail never writes through one"
                    ) from None
                raise
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RefusedFile(f"{folder / name} is not a regular file; nothing is written to it")
        return fd

    @staticmethod
    def _close_fd(fd: int, sync: bool) -> None:
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _write_all(writes: list[tuple[int, bytes]]) -> None:
        """Append each payload to its descriptor (``O_APPEND``). If any write fails, every
        file is truncated back to where this call's bytes started, then the error is
        raised: the records are then in none of the files."""
        done: list[tuple[int, list[int]]] = []  # (fd, sizes of its writes)
        try:
            for fd, data in writes:
                counts: list[int] = []
                done.append((fd, counts))
                view = memoryview(data)
                total = len(view)
                written = 0
                while written < total:
                    # extend() calls os.write and keeps its result in one C call: an
                    # exception a signal handler raises right after the write cannot
                    # land between the write and the count of what it wrote.
                    counts.extend(map(os.write, (fd,), (view[written:],)))
                    written = sum(counts)
        except BaseException:  # a full disk, or a signal handler's exception mid-write
            for fd, counts in done:
                _truncate_own(fd, sum(counts))
            raise

    def export(self, batch: Sequence[Any]) -> None:
        config = self.config
        line = compile_line_format(
            config.format or "{message}",
            config.datetime_format or "%Y-%m-%d %H:%M:%S",
            bool(config.add_emoji),
        )
        groups: dict[str, list[Any]] = {}
        first = batch[0].run_id
        if all(record.run_id == first for record in batch):
            groups[first] = list(batch)
        else:
            for record in batch:
                groups.setdefault(record.run_id, []).append(record)
        # A run id that is refused fails its own records only; an error while writing
        # leaves the runs not yet written for the retry, never the ones already written.
        fds = self._descriptors()
        refused: list[Any] = []
        refusal: ValueError | None = None
        for run_id in list(groups):
            if (run_id, "metadata.txt") not in fds:
                try:
                    self.run_dir(run_id)
                except ValueError as exc:
                    refused.extend(groups.pop(run_id))
                    refusal = exc
        pending = list(groups)
        for index, run_id in enumerate(pending):
            try:
                self._export_run(run_id, groups[run_id], line)
            except RefusedFile as exc:  # nothing of this run was written; never will be
                refused.extend(groups[run_id])
                refusal = exc
            except BaseException as exc:  # the run's records are in none of its files
                if index == 0 and not refused:
                    raise  # nothing of the batch was written
                rest = [r for later in pending[index:] for r in groups[later]]
                raise PartialExport(rest + refused, exc) from exc
        if refusal is not None:
            if len(refused) == len(batch):
                raise refusal  # nothing of the batch was written
            raise PartialExport(refused, refusal)

    def _export_run(self, run_id: str, records: list[Any], line: Any) -> None:
        # Everything is encoded before anything is written: a record that cannot be
        # encoded fails the run's batch with nothing written.
        # map() and attrgetter keep the per-record work in C where they can.
        if set(map(type, records)) == {Metadata}:
            logs, spans = records, []
        else:
            logs = [r for r in records if r.__class__ is Metadata]
            spans = [r for r in records if r.__class__ is not Metadata]
        payloads: list[tuple[str, bytes]] = []
        if logs:
            flags = list(map(_ERROR_FLAG, logs))
            if True in flags:
                out = [line(r) for r, error in zip(logs, flags, strict=True) if not error]
                err = [line(r) for r, error in zip(logs, flags, strict=True) if error]
            else:
                out, err = list(map(line, logs)), []
            if out:
                payloads.append(("stdout.txt", ("\n".join(out) + "\n").encode()))
            if err:
                payloads.append(("stderr.txt", ("\n".join(err) + "\n").encode()))
            payloads.append(("metadata.txt", encode_lines(logs)))
        if spans:
            payloads.append(("spans.txt", encode_lines(spans)))
        seen = self.__dict__.setdefault("_runs_seen", set())
        if run_id not in seen:
            # A run folder holds stdout.txt, stderr.txt and metadata.txt from its first
            # write (seed 000), even while they are empty.
            written = {name for name, _ in payloads}
            payloads += [(name, b"") for name in _FILES[:3] if name not in written]
        # Every file is opened before any is written: a refused one (`RefusedFile`)
        # leaves the run untouched rather than half written.
        fds = self._descriptors()
        writes = []
        for name, data in payloads:
            if (run_id, name) not in fds:
                # Opened (maybe created) now: its folder entry is synced at the next flush.
                self.__dict__.setdefault("_new_files", set()).add(run_id)
            fd = self._fd(run_id, name)
            if data:  # an empty payload only creates its file
                writes.append((fd, data))
        # The files exist once opened: noted before the write, so that nothing runs
        # between a write that succeeded and the return (a signal handler's exception
        # there would make the batch look unwritten and be written twice).
        if len(seen) > 100_000:
            seen.clear()
        seen.add(run_id)
        self._write_all(writes)

    def retryable(self, exc: BaseException) -> bool:
        # Only the disk may get better (space, permissions, a path put right); a refused
        # run id or a record that cannot be encoded fails the same way every time.
        return isinstance(exc, OSError)

    def export_nowait(self, batch: Sequence[Any]) -> None:
        """`export`, for the caller's thread (a local file never waits for another
        writer)."""
        self.export(batch)

    def sync(self) -> None:
        if not self.config.fsync:
            return
        for fd in list(self._descriptors().values()):
            os.fsync(fd)
        new = self.__dict__.pop("_new_files", None)
        if new:
            # Files and run folders created since the last flush: their names must be on
            # disk too, or a power loss can lose a whole fsynced file.
            from flowtrail.spool import sync_directory

            for run_id in new:
                sync_directory(self.run_dir(run_id))
            sync_directory(self.base.resolve())

    def close_exporter(self) -> None:
        fds = self._descriptors()
        while fds:
            _, fd = fds.popitem()
            try:
                self._close_fd(fd, sync=self.config.fsync)
            except OSError:
                pass

    def after_fork(self) -> None:
        # The parent's descriptors stay open in the parent; the child opens its own.
        self.__dict__["_fds"] = OrderedDict()

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _read_text(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    @staticmethod
    def _read_records(path: Path, decode: Any = decode_metadata) -> list[Any]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        records = []
        for raw in data.split(b"\n"):
            if raw:
                try:
                    records.append(decode(raw))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    # A writer killed mid-line leaves a fragment without a newline; the
                    # next writer's first record is glued to it. Outside JSON strings
                    # '{"' only starts an object, so try each as the record's start.
                    record = _after_torn_fragment(raw, decode)
                    if record is not None:
                        records.append(record)
        return records

    def _read_spans(self, folder: Path) -> list[Any]:
        from flowtrail.spool import DECODERS

        decode = DECODERS.get("span")
        return self._read_records(folder / "spans.txt", decode) if decode else []

    def _run_folders(self) -> list[Path]:
        base = self.base
        if not base.is_dir():
            return []
        folders = [p for p in base.iterdir() if p.is_dir() and p.name.startswith("run_id=")]
        folders.sort(key=lambda p: _mtime(p / "metadata.txt"), reverse=True)
        return folders

    def _finished_and_open(self, folder: Path) -> tuple[list[Any], list[Any]]:
        """The finished spans of a run folder, and the spans started and not ended."""
        return split_open(self._read_spans(folder))

    def _trace_of(self, folder: Path) -> TraceData:
        spans, still_open = self._finished_and_open(folder)
        return TraceData(
            stdout=self._read_text(folder / "stdout.txt"),
            stderr=self._read_text(folder / "stderr.txt"),
            meta=self._read_records(folder / "metadata.txt"),
            spans=spans,
            open_spans=still_open,
        )

    def find_traces(self) -> Iterator[TraceData]:
        self._flush_own()
        for folder in self._run_folders():
            yield self._trace_of(folder)

    def find_trace_with_id(
        self,
        run_id: str,
        force_raise: bool = True,
        *,
        include_children: bool = True,
        text: bool = True,
    ) -> TraceData:
        self._flush_own()
        data = self._trace_of(self.run_dir(run_id))
        if include_children:
            children = self._child_folders(run_id)
            for child in children:
                extra = self._trace_of(child)
                data.stdout += extra.stdout
                data.stderr += extra.stderr
                data.meta.extend(extra.meta)
                data.spans.extend(extra.spans)
                data.open_spans.extend(extra.open_spans)
        # Several processes of a run (and its child runs) interleave by time.
        sort_by_time(data.meta)
        return self.found(run_id, data, force_raise)

    def _run_and_children(self, run_id: str, include_children: bool) -> list[Path]:
        self._flush_own()
        folder = self.run_dir(run_id)
        return [folder, *(self._child_folders(run_id) if include_children else ())]

    def iter_records(
        self,
        run_id: str,
        *,
        include_children: bool = False,
        level: str | None = None,
        fields: Iterable[str] | None = None,
    ) -> Iterator[Metadata]:
        # ``fields`` is not used: decoding a whole line into `Metadata` is faster than a
        # part of it and then building the record.
        check_level(level)  # a bad level is refused before anything is read
        streams = [
            _iter_in_time_order(folder / "metadata.txt", decode_metadata)
            for folder in self._run_and_children(run_id, include_children)
        ]
        # Each run in time order; a parent and its children merged by time.
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=_DATETIME)
        yield from at_or_above(merged, level)

    def run_spans(
        self,
        run_id: str,
        *,
        include_children: bool = False,
        all_events: bool = True,
        fields: Iterable[str] | None = None,
    ) -> list[Any]:
        load = SpanLoader(fields, all_events=all_events)
        decode = _line_decoder(Span, load.fields)
        astuple = msgspec.structs.astuple
        spans = [
            load(astuple(line))
            for folder in self._run_and_children(run_id, include_children)
            for line in _iter_lines(folder / "spans.txt", decode)
        ]
        spans.sort(key=_START_NS)
        return spans

    def record_counts(self, run_id: str, *, include_children: bool = False) -> RecordCounts:
        counts = RecordCounts()
        for folder in self._run_and_children(run_id, include_children):
            counts = merge_counts(counts, _count_records(folder / "metadata.txt"))
        return counts

    def _child_folders(self, run_id: str) -> list[Path]:
        children = []
        for folder in self._run_folders():
            first = _first_record(folder / "metadata.txt")
            if first is not None and first.parent_run_id == run_id and first.run_id != run_id:
                children.append(folder)
        return children

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
        self._flush_own()
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
        folders = [self.run_dir(run_id)] if run_id else self._run_folders()
        decode: Any = decode_metadata
        needle = text.lower().encode() if text else b""
        if needle and needle.isascii() and not any(c in needle for c in b'"\\'):
            # A line all in ASCII holds the text as written (JSON escapes only quotes,
            # backslashes and control characters): lines without it are never decoded.
            def decode(line: bytes) -> Metadata | None:
                if line.isascii() and needle not in line.lower():
                    return None
                return decode_metadata(line)

        matches = (
            record
            for folder in folders
            for record in _iter_lines(folder / "metadata.txt", decode)
            if record is not None and keep(record)
        )
        if limit is not None:  # the oldest ``limit``, holding no more than that many
            return heapq.nsmallest(limit, matches, key=lambda r: parse_time(r.datetime))
        return sorted(matches, key=lambda r: parse_time(r.datetime))

    def runs(self, *, workflow: str | None = None, limit: int | None = None) -> list[RunSummary]:
        self._flush_own()
        summaries = []
        for folder in self._run_folders():
            # The fields a summary reads, one line at a time: a run of any size is summed
            # up without holding its records.
            records = _iter_lines(folder / "metadata.txt", _decode_brief_record)
            spans, still_open = split_open(_iter_lines(folder / "spans.txt", _decode_brief_span))
            first = next(records, None)
            if first is None and not spans and not still_open:
                continue
            summary = summarize(chain([first] if first else [], records), spans, still_open)
            if workflow is None or summary.workflow_name == workflow:
                summaries.append(summary)
        summaries.sort(key=lambda s: parse_time(s.start or ""), reverse=True)
        return summaries[:limit] if limit is not None else summaries

    def run_ids(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        """The ids of the runs whose id starts with ``prefix``, sorted (from the folder
        names: no file is read)."""
        self._flush_own()
        if not self.base.is_dir():
            return []
        head = f"run_id={prefix}"
        found = sorted(
            entry.name[len("run_id=") :]
            for entry in os.scandir(self.base)
            if entry.name.startswith(head) and entry.is_dir()
        )
        return found[:limit] if limit is not None else found

    def spans(
        self,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        trace_id: str | None = None,
        limit: int | None = None,
    ) -> list[Any]:
        """Finished spans, oldest first, filtered by run, workflow or trace."""
        self._flush_own()
        folders = [self.run_dir(run_id)] if run_id else self._run_folders()
        found = [
            span
            for folder in folders
            for span in self._finished_and_open(folder)[0]
            if (workflow is None or span.workflow_name == workflow)
            and (trace_id is None or span.trace_id == trace_id)
        ]
        found.sort(key=lambda span: span.start_ns)
        return found[:limit] if limit is not None else found

    def _flush_own(self) -> None:
        """Readers see what this process wrote: flush its pipelines to this path."""
        from flowtrail.pipeline import all_pipelines

        base = str(self.base.resolve())
        for pipeline in all_pipelines():
            exporter = pipeline.exporter
            if isinstance(exporter, FileHandler) and str(exporter.base.resolve()) == base:
                pipeline.flush(10.0)


def _truncate_own(fd: int, count: int) -> None:
    """Take back the last ``count`` bytes this descriptor appended, unless another writer
    appended after them (then they stay: cutting would lose the other writer's lines)."""
    if not count:
        return
    try:
        end = os.lseek(fd, 0, os.SEEK_CUR)  # with O_APPEND: the end of our last write
        if os.fstat(fd).st_size == end:
            os.ftruncate(fd, end - count)
    except OSError:
        pass


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _after_torn_fragment(raw: bytes, decode: Any) -> Any:
    start = raw.find(b'{"', 1)
    while start != -1:
        try:
            return decode(raw[start:])
        except (msgspec.DecodeError, msgspec.ValidationError):
            start = raw.find(b'{"', start + 1)
    return None


class _Flag(msgspec.Struct):
    """The fields a count needs (msgspec skips the others without building them)."""

    error_flag: bool = False
    datetime: str = ""


_decode_flag = msgspec.json.Decoder(_Flag).decode
_DATETIME = attrgetter("datetime")
_START_NS = attrgetter("start_ns")


class _BriefRecord(msgspec.Struct, frozen=True, gc=False):
    """The fields of a record that `summarize` and the run status read."""

    run_id: str
    parent_run_id: str | None = None
    level: str = "info"
    message: str = ""
    error_flag: bool = False
    datetime: str = ""
    workflow_name: str | None = None
    span_id: str | None = None
    exception_type: str | None = None
    exception_message: str | None = None
    metadata: dict[str, Any] = {}


class _BriefSpan(msgspec.Struct, frozen=True, gc=False):
    """The fields of a span that `summarize` reads."""

    run_id: str
    span_id: str
    parent_span_id: str | None = None
    parent_run_id: str | None = None
    kind: str = ""
    name: str = ""
    start_ns: int = 0
    end_ns: int = 0
    start_time: str = ""
    end_time: str = ""
    status: str = "ok"
    status_message: str | None = None
    workflow_name: str | None = None
    attributes: dict[str, Any] = {}
    hostname: str | None = None
    process: int = 0


_decode_brief_record = msgspec.json.Decoder(_BriefRecord).decode
_decode_brief_span = msgspec.json.Decoder(_BriefSpan).decode


@functools.lru_cache(maxsize=8)
def _line_decoder(cls: type[Any], fields: tuple[str, ...]) -> Any:
    """A decoder of JSON lines of struct ``cls`` that reads only ``fields`` (the others
    are skipped without being built); a span's events are left as JSON text (decoded
    only if wanted)."""
    infos = {info.name: info for info in msgspec.structs.fields(cls)}
    spec: list[Any] = []
    for name in fields:
        info = infos[name]
        if cls is Span and name == "events":
            spec.append((name, msgspec.Raw, msgspec.Raw(b"[]")))
        elif info.required:
            spec.append((name, info.type))
        elif info.default is msgspec.NODEFAULT:  # made by a factory: None until built
            spec.append((name, info.type | None, None))
        else:
            spec.append((name, info.type, info.default))
    line = msgspec.defstruct(f"{cls.__name__}Line", spec, gc=False)
    return msgspec.json.Decoder(line).decode


def _iter_lines(path: Path, decode: Any, raw: bool = False) -> Iterator[Any]:
    """The records of a JSON-lines file, one line at a time (a torn line is read as
    `FileHandler._read_records` reads it); with ``raw``, ``(line, record)`` pairs."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            found = _decode_line(line, decode)
            if found is not None:
                yield found if raw else found[1]


def _decode_line(line: bytes, decode: Any) -> tuple[bytes, Any] | None:
    """``(line, record)`` of one line of a JSON-lines file, or None for a blank line or
    a torn one with nothing after the tear."""
    line = line.rstrip(b"\n")
    if not line:
        return None
    try:
        return line, decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        record = _after_torn_fragment(line, decode)
        if record is None:
            return None
        return line[line.find(b'{"', 1) :], record


_STAMP = b'"datetime":"'
_PROCESS = b'"process":'
_HOST = b'"hostname":'


def _field_text(line: bytes, key: bytes, end: bytes = b'"') -> bytes:
    at = line.find(key)
    if at < 0:
        return b""
    start = at + len(key)
    return line[start : line.find(end, start)]


def _stamp(line: bytes) -> bytes:
    """The ``datetime`` of a record's JSON line, as text (b"" if it has none)."""
    return _field_text(line, _STAMP)


#: Whether a metadata.txt (by path, size and time written) is in time order, as a
#: `record_counts` of it found: `show` counts a run, then reads it, without a second
#: pass to find out.
_ORDERED: dict[tuple[str, int, int], bool] = {}


def _order_key(path: Path) -> tuple[str, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (str(path), info.st_size, info.st_mtime_ns)


def _remember_order(key: tuple[str, int, int], ordered: bool) -> None:
    if len(_ORDERED) > 256:
        _ORDERED.clear()
    _ORDERED[key] = ordered


def _in_time_order(path: Path) -> bool:
    """Whether the records of a metadata.txt are in time order (remembered from a count
    of the same file, else read for their time stamps alone)."""
    key = _order_key(path)
    if key is None or _ORDERED.get(key):
        return True
    last = b""
    with path.open("rb") as handle:
        for line in handle:
            stamp = _stamp(line)
            if stamp and stamp < last:
                return False
            last = stamp or last
    return True


def _iter_in_time_order(path: Path, decode: Any) -> Iterator[Any]:
    """The records of one run's metadata.txt in time order, in bounded memory, as the
    other stores give them. One process writes its records in order, so a file is in
    order unless several processes (pool workers, a forked child) wrote the run: then
    each one's records (found by process id and host) are merged by time, read back a
    line at a time from their offsets (8 bytes a record)."""
    if _in_time_order(path):  # the usual case
        yield from _iter_lines(path, decode)
        return
    with path.open("rb") as handle:
        writers: dict[bytes, array[int]] = {}
        offset = 0
        for line in handle:
            writer = _field_text(line, _PROCESS, b",") + b"@" + _field_text(line, _HOST, b",")
            writers.setdefault(writer, array("q")).append(offset)
            offset += len(line)

        def lines_at(offsets: array[int]) -> Iterator[Any]:
            for start in offsets:
                handle.seek(start)
                found = _decode_line(handle.readline(), decode)
                if found is not None:
                    yield found[1]

        yield from heapq.merge(*(lines_at(o) for o in writers.values()), key=_DATETIME)


def _count_records(path: Path) -> RecordCounts:
    """`RecordCounts` of one metadata.txt, decoding one field a line (and the whole of
    only the first, last and first error record)."""
    total = errors = 0
    first = last = first_error = None
    first_at = last_at = error_at = ""
    key = _order_key(path)
    ordered = True
    # In time order (the file is in the order written: several processes interleave).
    for line, flag in _iter_lines(path, _decode_flag, raw=True):
        total += 1
        stamp = flag.datetime
        if stamp >= last_at or last is None:
            last, last_at = line, stamp
        elif stamp:
            ordered = False
        if first is None or stamp < first_at:
            first, first_at = line, stamp
        if flag.error_flag:
            errors += 1
            if first_error is None or stamp < error_at:
                first_error, error_at = line, stamp
    if key is not None:
        _remember_order(key, ordered)
    return RecordCounts(
        records=total,
        error_records=errors,
        first=decode_metadata(first) if first else None,
        last=decode_metadata(last) if last else None,
        first_error=decode_metadata(first_error) if first_error else None,
    )


def _first_record(path: Path) -> Metadata | None:
    try:
        with path.open("rb") as handle:
            return decode_metadata(handle.readline())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
