"""The on-disk spool: batches a handler could not deliver (or that did not fit in the
queue) wait here as JSON lines and are re-sent later, by this process or the next one
that writes to the same handler.

Layout: ``<spool_dir>/<handler key>/<pid>-<time ns>-<rand>.<kind>.jsonl``. A file being
appended to ends in ``.open``; a replayer claims a finished file by renaming it to
``.claimed-<pid>`` so that two processes never send the same file twice. A claim left by a
process that died is taken back.

The handler key names the destination (type, path or URL, table or index), never other
options, so records reach their destination whatever else changed. Versions before
2026-12 named the folder ``<type>-<digest of every option>``: a pipeline moves the files
of the old folder its own options give into its folder and replays them; an old folder
written with other options cannot be matched (the digest cannot be reversed): move its
``*.jsonl`` files into the destination's folder by hand. A replay that wrote
part of a file keeps only the unwritten records in it. Records that can never be written
as they are, and spool files with undecodable lines, are kept as ``.failed`` files for a
person to look at (never replayed, never deleted). Spool files are created ``0600`` (records
may hold secrets) in a ``0700`` folder; a finished file is ``fsync``ed, and so is the
folder after it is renamed into place.

Each folder also holds ``destination.json`` (`MANIFEST`), written when a pipeline first
spools there: the handler type and its options without secrets, from which
``flowtrail replay`` rebuilds the handler (secrets come from the environment or the
configuration then); and ``last-error.json`` (`LAST_ERROR`), why records were last
spooled or set aside there. A ``.failed`` file has its reason beside it, in
``<name>.why``. Texts written there have secrets masked.

A spool is bounded (``spool_max_bytes``, per destination folder, dead letters included):
records that would pass the bound are not written (`SpoolFull`), and the pipeline counts
and reports them as lost, rather than filling the disk that the workflow also needs.

Limits: a process killed between writing records to the store and recording that in the
spool file (deleting it, or blanking the written lines) replays those records again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from flowtrail.config import mask_text
from flowtrail.records import Metadata, decode_metadata, decode_span, encode_lines, sanitized

#: The file naming a spool folder's destination (see the module docstring).
MANIFEST = "destination.json"

#: The file holding why records were last spooled or set aside in a folder.
LAST_ERROR = "last-error.json"
#: Seconds between re-reads of a folder's size (other processes write there too).
_RESCAN = 1.0

#: Record kinds a spool file can hold, and how to decode one line of each.
DECODERS: dict[str, Callable[[bytes], Any]] = {"log": decode_metadata, "span": decode_span}


def kind_of(record: Any) -> str:
    """The spool kind of a record (``log`` for `Metadata`)."""
    return "log" if isinstance(record, Metadata) else getattr(record, "spool_kind", "log")


def _read_lines(data: bytes, kind: str) -> tuple[list[Any], list[tuple[Any, int, int]], int]:
    """The records of a spool file's bytes, the (record, offset, length) of each line,
    and how many lines could not be decoded: a torn last line (a writer killed mid-line)
    is not counted, nor a line that starts with a space (written by a replay)."""
    decode = DECODERS.get(kind, decode_metadata)
    records: list[Any] = []
    spans: list[tuple[Any, int, int]] = []
    damaged = 0
    offset = 0
    end = len(data)
    while offset < end:
        newline = data.find(b"\n", offset)
        stop = end if newline == -1 else newline
        line = data[offset:stop]
        if line.strip() and line[:1] != b" ":
            try:
                record = decode(line)
            except Exception:
                if newline != -1:
                    damaged += 1
            else:
                records.append(record)
                spans.append((record, offset, stop - offset))
        offset = stop + 1
    return records, spans, damaged


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def encode_records(records: Sequence[Any]) -> bytes:
    """JSON lines of ``records``; a record that cannot be encoded as it is is written with
    its unencodable text and values replaced (`flowtrail.records.sanitized`)."""
    try:
        return encode_lines(records)
    except Exception:
        parts = []
        for record in records:
            try:
                parts.append(encode_lines((record,)))
            except Exception:
                parts.append(encode_lines((sanitized(record),)))
        return b"".join(parts)


class SpoolFull(OSError):
    """Writing these records would take the spool folder past ``spool_max_bytes``.
    ``kept`` of them (the oldest) were written before the bound was reached."""

    def __init__(self, message: str, kept: int = 0) -> None:
        super().__init__(message)
        self.kept = kept


def _encode_by_kind(records: Sequence[Any]) -> dict[str, bytes]:
    by_kind: dict[str, list[Any]] = {}
    for record in records:
        by_kind.setdefault(kind_of(record), []).append(record)
    return {kind: encode_records(group) for kind, group in by_kind.items()}


def _create(path: Path) -> IO[bytes]:
    """A new file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb")


def sync_directory(directory: Path) -> None:
    """``fsync`` a directory, so that files created or renamed in it survive a power
    loss (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Spool:
    """One handler's spool directory."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        manifest: bytes | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        #: The `MANIFEST` to write when this spool first writes a file (no secrets).
        self.manifest = manifest
        #: The most bytes the folder may hold (None: unbounded).
        self.max_bytes = max_bytes
        self._used = 0
        self._used_at: float | None = None
        # Re-entrant, and appends are one os.write: a signal handler that logs may
        # interrupt this thread in the middle of an append.
        self._lock = threading.RLock()
        self._open: dict[str, tuple[Path, int]] = {}
        #: Per claimed file: (record, offset, length) of each line, for `keep_only`.
        self._spans: dict[Path, list[tuple[Any, int, int]]] = {}

    def size(self) -> int:
        """Bytes of the folder's spool files (waiting and set aside)."""
        total = 0
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return 0
        for entry in entries:
            if ".jsonl" in entry.name:
                try:
                    total += entry.stat().st_size
                except OSError:
                    pass  # replayed meanwhile
        return total

    def _room(self) -> int | None:
        """Bytes the folder may still take (None: unbounded)."""
        if self.max_bytes is None:
            return None
        now = time.monotonic()
        if self._used_at is None or now - self._used_at > _RESCAN:
            self._used, self._used_at = self.size(), now
        return self.max_bytes - self._used

    def _full(self, kept: int = 0) -> SpoolFull:
        self._used_at = None  # look again next time: a replay may have made room
        return SpoolFull(
            f"the spool folder {self.directory} holds {self._used} bytes and its limit is "
            f"spool_max_bytes={self.max_bytes}: raise spool_max_bytes, or re-send or remove "
            "what waits there (flowtrail spool, flowtrail replay)",
            kept=kept,
        )

    def _make_room(self, size: int) -> None:
        """Count ``size`` more bytes against ``max_bytes``; `SpoolFull` if they do not fit."""
        room = self._room()
        if room is None:
            return
        if size > room:
            raise self._full()
        self._used += size

    def note_error(self, reason: str) -> None:
        """Record why records were last spooled or set aside here (`LAST_ERROR`)."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return  # only `flowtrail spool` reads it
        self._write_note(self.directory / LAST_ERROR, reason)

    def _write_note(self, path: Path, reason: str) -> None:
        """A small JSON note of why (time, error with secrets masked); never raises: the
        records are kept whether or not the note of why could be written."""
        data = json.dumps({"time": time.time(), "error": mask_text(reason)}).encode()
        try:
            self._write_file(path, data, f".{os.getpid()}.tmp", sync=False)
        except OSError:
            pass

    def _new_path(self, kind: str, suffix: str) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.manifest is not None:
            manifest, self.manifest = self.manifest, None
            try:
                self._write_file(self.directory / MANIFEST, manifest, f".{os.getpid()}.tmp")
            except OSError:
                pass  # only `flowtrail replay` needs it, and it says so
        name = f"{os.getpid()}-{time.time_ns()}-{os.urandom(3).hex()}.{kind}.jsonl{suffix}"
        return self.directory / name

    def write_batch(self, records: Sequence[Any], suffix: str = "") -> list[Path]:
        """Write records durably (fsync) to new finished spool files, one per kind;
        ``suffix=".failed"`` sets them aside instead. Returns the files. `SpoolFull`
        (nothing written) if they would take the folder past ``max_bytes``."""
        encoded = _encode_by_kind(records)
        size = sum(map(len, encoded.values()))
        room = self._room()
        if room is not None and size > room:
            # Keep the oldest records that fit; the caller counts the others as lost.
            fit = 0
            for record in records:
                room -= len(encode_records((record,)))
                if room < 0:
                    break
                fit += 1
            if fit:
                kept = _encode_by_kind(list(records)[:fit])
                self._used += sum(map(len, kept.values()))
                self._write_groups(kept, suffix)
            raise self._full(kept=fit)
        self._used += size
        return self._write_groups(encoded, suffix)

    def _write_groups(self, encoded: dict[str, bytes], suffix: str) -> list[Path]:
        written = []
        for kind, data in encoded.items():
            final = self._new_path(kind, suffix)
            # A ".open" temp file of a process that dies here is replayed (what it holds
            # was not written anywhere else); other temp files are not.
            self._write_file(final, data, ".open" if not suffix else ".tmp")
            written.append(final)
        if written:
            sync_directory(self.directory)
        return written

    @staticmethod
    def _write_file(final: Path, data: bytes, temp_suffix: str = ".tmp", sync: bool = True) -> None:
        temp = final.with_name(final.name + temp_suffix)
        try:
            with _create(temp) as handle:
                handle.write(data)
                handle.flush()
                if sync:
                    os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def _write_reason(self, failed: Path, reason: str | None) -> None:
        if reason is None:
            return
        self._write_note(failed.with_name(failed.name + ".why"), reason)
        self.note_error(reason)

    def write_failed(
        self, records: Sequence[Any], kind: str = "log", reason: str | None = None
    ) -> Path:
        """Keep records that can never be written as they are in a new ``.failed``
        file, with ``reason`` beside it (``<file>.why``); return the file."""
        data = encode_records(records)
        self._make_room(len(data))
        final = self._new_path(kind, ".failed")
        self._write_file(final, data)
        sync_directory(self.directory)
        self._write_reason(final, reason)
        return final

    def keep_only(self, claimed: Path, records: Sequence[Any]) -> None:
        """A replay wrote part of a claimed file: keep only ``records`` (the ones not
        written) in it. The lines of the others are overwritten with spaces in place
        and synced: that needs no new disk space (the disk may be what is full), and a
        line blanked part way when the process dies starts with a space, which marks it
        as written too (a spool line starts with ``{``)."""
        spans = self._spans.get(claimed)
        if spans is None:
            raise ValueError(f"{claimed} was not claimed by this spool")
        keep = set(map(id, records))
        with open(claimed, "r+b") as handle:
            for record, offset, length in spans:
                if id(record) not in keep:
                    handle.seek(offset)
                    handle.write(b" " * length)
            handle.flush()
            os.fsync(handle.fileno())
        self._spans[claimed] = [span for span in spans if id(span[0]) in keep]

    def adopt(self, old: str | os.PathLike[str]) -> int:
        """Move the pending files of an older spool folder of the same destination
        into this one (they are replayed from here); remove the old folder if that
        leaves it empty. Returns how many files moved."""
        folder = Path(old)
        if folder.resolve() == self.directory.resolve() or not folder.is_dir():
            return 0
        moved = 0
        for path in Spool(folder).pending():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                os.replace(path, self.directory / path.name)
                moved += 1
            except OSError:
                pass
        if moved:
            sync_directory(self.directory)
        try:
            folder.rmdir()
        except OSError:
            pass
        return moved

    def append(self, record: Any) -> None:
        """Append one record to this process's open overflow file (no fsync: a killed
        process's writes stay in the OS; `seal` makes the file replayable)."""
        kind = kind_of(record)
        line = encode_records((record,))
        with self._lock:
            self._make_room(len(line))
            entry = self._open.get(kind)
            if entry is None:
                path = self._new_path(kind, ".open")
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                entry = self._open.setdefault(kind, (path, fd))
                if entry[1] != fd:
                    # A signal handler that logged opened one meanwhile (re-entrant lock):
                    # keep one file, or the other would never be sealed.
                    os.close(fd)
                    path.unlink(missing_ok=True)
            view = memoryview(line)
            while view:
                view = view[os.write(entry[1], view) :]

    def seal(self) -> None:
        """Close the open overflow files and make them replayable."""
        with self._lock:
            entries, self._open = self._open, {}
        for path, fd in entries.values():
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(path, path.with_name(path.name[: -len(".open")]))
        if entries:
            sync_directory(self.directory)

    def has_open(self) -> bool:
        """Whether an overflow file is open."""
        return bool(self._open)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's open files without sealing them."""
        self._lock = threading.RLock()
        self._open = {}
        self._spans = {}

    def pending(self) -> list[Path]:
        """Finished spool files, oldest first, including stale claims of dead processes
        and open files left by dead processes."""
        if not self.directory.is_dir():
            return []
        found: list[Path] = []
        for path in self.directory.iterdir():
            name = path.name
            if name.endswith(".jsonl"):
                found.append(path)
            elif ".jsonl.claimed-" in name or name.endswith(".jsonl.open"):
                pid_text = name.rsplit("-", 1)[1] if ".claimed-" in name else name.split("-")[0]
                if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                    base = name.split(".jsonl", 1)[0] + ".jsonl"
                    try:
                        os.replace(path, path.with_name(base))
                        found.append(path.with_name(base))
                    except OSError:
                        pass
        found.sort(key=lambda p: p.name.split("-")[1] if "-" in p.name else p.name)
        return found

    def claim(
        self, on_damaged: Callable[[Path, int], None] | None = None
    ) -> Iterator[tuple[Path, str, list[Any]]]:
        """Yield ``(claimed path, kind, records)`` for each pending file this process
        managed to claim. The caller must `done` or `release` each one.

        A file with lines that cannot be decoded (other than a torn last line, left by a
        writer that was killed) is kept as ``.failed``; its good records are yielded from
        a new file, and ``on_damaged(kept file, undecodable lines)`` is called."""
        for path in self.pending():
            claimed = path.with_name(f"{path.name}.claimed-{os.getpid()}")
            try:
                os.rename(path, claimed)
            except OSError:
                continue  # another process claimed it
            kind = path.name.rsplit(".", 2)[-2]
            records, spans, damaged = _read_lines(claimed.read_bytes(), kind)
            if damaged:
                kept = claimed.with_name(path.name + ".failed")
                if records:
                    fresh = self._new_path(kind, f".claimed-{os.getpid()}")
                    data = encode_records(records)
                    self._write_file(fresh, data)
                    records, spans, _ = _read_lines(data, kind)
                os.replace(claimed, kept)
                sync_directory(self.directory)
                if on_damaged is not None:
                    on_damaged(kept, damaged)
                if not records:
                    continue
                claimed = fresh
            self._spans[claimed] = spans
            yield claimed, kind, records

    def done(self, claimed: Path) -> None:
        """Delete a replayed file."""
        self._spans.pop(claimed, None)
        claimed.unlink(missing_ok=True)

    def set_aside(self, claimed: Path, reason: str | None = None) -> Path:
        """Keep a file that can never be replayed as ``<name>.failed`` (not replayed),
        with ``reason`` beside it."""
        self._spans.pop(claimed, None)
        target = claimed.with_name(claimed.name.split(".claimed-", 1)[0] + ".failed")
        os.replace(claimed, target)
        sync_directory(target.parent)
        self._write_reason(target, reason)
        return target

    def release(self, claimed: Path) -> None:
        """Give a claimed file back for a later replay."""
        self._spans.pop(claimed, None)
        base = claimed.name.split(".claimed-", 1)[0]
        try:
            os.replace(claimed, claimed.with_name(base))
        except OSError:
            pass

    def count(self) -> int:
        """How many records wait in finished spool files."""
        total = 0
        for path in self.pending():
            with path.open("rb") as handle:
                total += sum(1 for line in handle if line.strip() and line[:1] != b" ")
        return total
