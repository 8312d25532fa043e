"""What waits in the spool, and re-sending it: the work behind ``flowtrail spool`` and
``flowtrail replay``.

Each folder of the spool root is one destination (see `flowtrail.spool`). `waiting`
reads the folders without changing them. `handler_for` rebuilds a folder's handler: a
configured handler whose spool folder it is (it has the secrets), else the folder's
``destination.json`` (written without secrets: a RestAPIHandler's ``api_key`` then comes
from ``DD_API_KEY`` for Datadog, as the handler reads it; other secrets must be
configured). `replay_folder` re-sends a folder's files through a pipeline built on that
handler, with the pipeline's own retry, isolation and set-aside rules.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from flowtrail.config import ConfigError, Settings
from flowtrail.spool import LAST_ERROR, MANIFEST


@dataclass
class FolderSummary:
    """What waits in one destination's spool folder."""

    folder: Path
    #: The destination's type (``sqlite``, ``restapi`` ...), from ``destination.json``.
    type: str
    records: int = 0
    bytes: int = 0
    #: Oldest waiting file's time (seconds since the epoch), or None when nothing waits.
    oldest: float | None = None
    failed_files: int = 0
    failed_records: int = 0
    #: Why records were last spooled or set aside here (secrets masked), and when.
    last_error: str | None = None
    last_error_at: float | None = None


def _lines(path: Path) -> int:
    """Records in a spool file (lines blanked by a replay are not records)."""
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip() and line[:1] != b" ")
    except OSError:
        return 0


def _written_at(path: Path) -> float:
    """When a spool file was written: from its name (``<pid>-<time ns>-...``), else
    its modification time."""
    parts = path.name.split("-")
    if len(parts) > 2 and parts[1].isdigit():
        return int(parts[1]) / 1e9
    return path.stat().st_mtime


def is_waiting(name: str) -> bool:
    """Whether a spool file name holds records not yet delivered (finished, open or
    claimed; not set aside)."""
    return name.endswith(".jsonl") or name.endswith(".jsonl.open") or ".jsonl.claimed-" in name


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    return data if isinstance(data, dict) else None


def manifest(folder: Path) -> dict[str, Any] | None:
    """A folder's ``destination.json``, or None if it has none or it cannot be read."""
    return _read_json(folder / MANIFEST)


def failed_reason(path: Path) -> str | None:
    """Why a ``.failed`` file was set aside (its ``.why`` note), if known."""
    note = _read_json(path.with_name(path.name + ".why"))
    error = note.get("error") if note is not None else None
    return error if isinstance(error, str) else None


def folders(spool_root: Path) -> list[Path]:
    """The destination folders of a spool root, by name."""
    if not spool_root.is_dir():
        return []
    return sorted(path for path in spool_root.iterdir() if path.is_dir())


def summarize(folder: Path) -> FolderSummary:
    """What waits in ``folder`` (read only: nothing is claimed or renamed)."""
    data = manifest(folder) or {}
    summary = FolderSummary(folder, str(data.get("type") or folder.name.split("-", 1)[0]))
    for path in folder.iterdir():
        name = path.name
        if is_waiting(name):
            try:
                summary.bytes += path.stat().st_size
                written = _written_at(path)
            except OSError:
                continue  # replayed meanwhile
            summary.records += _lines(path)
            summary.oldest = written if summary.oldest is None else min(summary.oldest, written)
        elif name.endswith(".jsonl.failed"):
            summary.failed_files += 1
            summary.failed_records += _lines(path)
    note = _read_json(folder / LAST_ERROR)
    if note is not None and isinstance(note.get("error"), str):
        summary.last_error = note["error"]
        when = note.get("time")
        summary.last_error_at = float(when) if isinstance(when, (int, float)) else None
    return summary


def waiting(spool_root: Path) -> list[FolderSummary]:
    """Every destination folder with records waiting or set aside."""
    found = [summarize(folder) for folder in folders(spool_root)]
    return [s for s in found if s.records or s.failed_files]


def revive_dead_letters(folder: Path) -> int:
    """Move the folder's ``.failed`` files back to ``.jsonl`` (tried again by the next
    replay). Returns how many moved."""
    moved = 0
    for path in sorted(folder.glob("*.jsonl.failed")):
        try:
            os.replace(path, path.with_name(path.name[: -len(".failed")]))
            moved += 1
        except OSError:
            continue
        path.with_name(path.name + ".why").unlink(missing_ok=True)
    return moved


def handler_for(folder: Path, settings: Settings, configured: Iterable[Any] = ()) -> Any:
    """The handler records of ``folder`` go to: one of the ``configured`` handlers (objects
    or dicts) whose spool folder has this name, else one built from ``destination.json``.
    `ConfigError` if neither."""
    from flowtrail.handlers import handler_class, make_handler
    from flowtrail.handlers.base import PipelineConfig

    for spec in configured:
        try:
            handler = make_handler(spec).bound(settings)
        except ConfigError:
            continue
        if isinstance(handler.config, PipelineConfig) and handler.spool_name() == folder.name:
            return handler
    data = manifest(folder)
    if data is None or not isinstance(data.get("options"), dict):
        raise ConfigError(
            f"{folder} has no readable {MANIFEST}: configure its handler (flowtrail.toml "
            f"or FLOWTRAIL_* variables) so that its spool folder is {folder.name!r}"
        )
    options = {k: v for k, v in data["options"].items() if k != "type"}
    return (
        handler_class(str(data.get("type")))
        .from_config(handler_class(str(data.get("type"))).build_config(options))
        .bound(settings)
    )


@dataclass
class ReplayResult:
    """What a replay of one folder did."""

    sent: int = 0
    waiting: int = 0
    set_aside: int = 0
    #: Why the destination refused, when records are still waiting.
    last_error: str | None = None


def claimed_files(pipeline: Any) -> Iterator[tuple[Path, str, list[Any]]]:
    """The folder's files, each claimed for this process (see `Spool.claim`)."""
    return pipeline.spool.claim(on_damaged=pipeline._damaged)


def replay_folder(
    folder: Path, handler: Any, progress: Callable[[int], None] | None = None
) -> ReplayResult:
    """Re-send what waits in ``folder`` to ``handler``'s destination through a pipeline
    (its isolation of records that can never be written, set-aside). When the destination
    refuses a file for a reason that may pass, the replay waits (backoff, or the
    service's ``Retry-After``) and goes on, within the handler's ``max_retries`` and
    ``retry_deadline``; then it stops, leaving the rest waiting. ``progress(n)`` is
    called with the records of each file handled."""
    from flowtrail.pipeline import Pipeline, PipelineOptions, retry_delay

    config = handler.config
    exporter = type(handler).from_config(config)
    options = PipelineOptions(
        spool_dir=str(folder),
        max_retries=getattr(config, "max_retries", 5),
        retry_deadline=getattr(config, "retry_deadline", 30.0),
        spool_max_bytes=getattr(config, "spool_max_bytes", None),
    )
    pipeline = Pipeline(handler.describe(), exporter, options)
    result = ReplayResult()
    deadline = time.monotonic() + options.retry_deadline
    attempt = 0
    try:
        while True:
            stalled = False
            for claimed, kind, records in claimed_files(pipeline):
                pipeline._retry_after = None
                try:
                    delivered = pipeline._replay_file(claimed, kind, records)
                except BaseException:
                    pipeline.spool.release(claimed)
                    raise
                if not delivered:
                    stalled = True
                    break
                if progress is not None:
                    progress(len(records))
            if not stalled:
                break
            attempt += 1
            delay = retry_delay(options, attempt, pipeline._retry_after)
            if attempt > options.max_retries or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
        pipeline._sync()
    finally:
        pipeline._close_exporter()
    result.sent = pipeline.stats.replayed
    result.set_aside = pipeline.stats.set_aside
    result.waiting = summarize(folder).records
    result.last_error = pipeline.stats.last_error if result.waiting else None
    return result
