"""The on-disk spool: batches a handler could not deliver (or that did not fit in the
queue) wait here as JSON lines and are re-sent later, by this process or the next one
that writes to the same handler.

Layout: ``<spool_dir>/<handler key>/<pid>-<time ns>-<rand>.<kind>.jsonl``. A file being
appended to ends in ``.open``; a replayer claims a finished file by renaming it to
``.claimed-<pid>`` so that two processes never send the same file twice. A claim left by a
process that died is taken back.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flowtrail.records import Metadata, decode_metadata, decode_span, encode_lines

#: Record kinds a spool file can hold, and how to decode one line of each.
DECODERS: dict[str, Callable[[bytes], Any]] = {"log": decode_metadata, "span": decode_span}


def kind_of(record: Any) -> str:
    """The spool kind of a record (``log`` for `Metadata`)."""
    return "log" if isinstance(record, Metadata) else getattr(record, "spool_kind", "log")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Spool:
    """One handler's spool directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        # Re-entrant, and appends are one os.write: a signal handler that logs may
        # interrupt this thread in the middle of an append.
        self._lock = threading.RLock()
        self._open: dict[str, tuple[Path, int]] = {}

    def _new_path(self, kind: str, suffix: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{time.time_ns()}-{os.urandom(3).hex()}.{kind}.jsonl{suffix}"
        return self.directory / name

    def write_batch(self, records: Sequence[Any]) -> None:
        """Write records durably (fsync) to new finished spool files, one per kind."""
        by_kind: dict[str, list[Any]] = {}
        for record in records:
            by_kind.setdefault(kind_of(record), []).append(record)
        for kind, group in by_kind.items():
            final = self._new_path(kind, "")
            temp = final.with_name(final.name + ".open")
            with temp.open("wb") as handle:
                handle.write(encode_lines(group))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)

    def append(self, record: Any) -> None:
        """Append one record to this process's open overflow file (no fsync: a killed
        process's writes stay in the OS; `seal` makes the file replayable)."""
        kind = kind_of(record)
        line = encode_lines((record,))
        with self._lock:
            entry = self._open.get(kind)
            if entry is None:
                path = self._new_path(kind, ".open")
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                entry = self._open[kind] = (path, fd)
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

    def has_open(self) -> bool:
        """Whether an overflow file is open."""
        return bool(self._open)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's open files without sealing them."""
        self._lock = threading.RLock()
        self._open = {}

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

    def claim(self) -> Iterator[tuple[Path, str, list[Any]]]:
        """Yield ``(claimed path, kind, records)`` for each pending file this process
        managed to claim. The caller must `done` or `release` each one."""
        for path in self.pending():
            claimed = path.with_name(f"{path.name}.claimed-{os.getpid()}")
            try:
                os.rename(path, claimed)
            except OSError:
                continue  # another process claimed it
            kind = path.name.rsplit(".", 2)[-2]
            decode = DECODERS.get(kind, decode_metadata)
            records = []
            with claimed.open("rb") as handle:
                for line in handle:
                    if line.strip():
                        try:
                            records.append(decode(line))
                        except Exception:
                            continue  # a torn last line of a killed writer
            yield claimed, kind, records

    @staticmethod
    def done(claimed: Path) -> None:
        """Delete a replayed file."""
        claimed.unlink(missing_ok=True)

    @staticmethod
    def set_aside(claimed: Path) -> Path:
        """Keep a file that can never be replayed as ``<name>.failed`` (not replayed)."""
        target = claimed.with_name(claimed.name.split(".claimed-", 1)[0] + ".failed")
        os.replace(claimed, target)
        return target

    @staticmethod
    def release(claimed: Path) -> None:
        """Give a claimed file back for a later replay."""
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
                total += sum(1 for line in handle if line.strip())
        return total
