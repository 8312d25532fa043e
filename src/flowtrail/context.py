"""Run context: ids, the current trace in `contextvars`, clocks that stamp records, and the
facts about this process and host that every record carries."""

from __future__ import annotations

import contextvars
import datetime as _dt
import os
import platform
import socket
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo

UTC: Final = _dt.timezone.utc


def new_trace_id() -> str:
    """A random 128-bit W3C trace id, as 32 lowercase hex digits."""
    return os.urandom(16).hex()


def new_span_id() -> str:
    """A random 64-bit W3C span id, as 16 lowercase hex digits."""
    return os.urandom(8).hex()


def new_run_id(prefix: str = "run") -> str:
    """A run id that sorts by time: ``<prefix>-YYYYmmddTHHMMSS-<8 hex>``."""
    stamp = _dt.datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{stamp}-{os.urandom(4).hex()}"


def cut_id(run_id: str, *, num: int = 8) -> str:
    """A short form of a run id for text lines: long ids keep their head and tail."""
    if len(run_id) <= 12 + num:
        return run_id
    return f"{run_id[:12]}…{run_id[-num:]}"


def make_cut_id(run_id: str, parent_run_id: str | None) -> str:
    """``cut(parent) -> cut(run)`` when a run has a parent, else ``cut(run)``."""
    if parent_run_id:
        return f"{cut_id(parent_run_id)} -> {cut_id(run_id)}"
    return cut_id(run_id)


class Clock:
    """Stamps records with ISO-8601 strings in one time zone.

    The seconds part (and the zone offset, which can change with daylight saving) is
    computed once per second and cached; each call adds only the microseconds. The cache
    is one tuple swapped atomically, so threads share it without a lock.
    """

    __slots__ = ("tz", "_cache")

    def __init__(self, tz: _dt.tzinfo = UTC) -> None:
        self.tz = tz
        self._cache: tuple[int, str, str] = (-1, "", "")

    def now(self) -> str:
        """The current time, e.g. ``2026-11-21T09:59:17.203164+00:00``."""
        ns = time.time_ns()
        sec, rest = divmod(ns, 1_000_000_000)
        cached_sec, head, offset = self._cache
        if sec != cached_sec:
            stamp = _dt.datetime.fromtimestamp(sec, self.tz).isoformat()
            head, offset = stamp[:19], stamp[19:]
            self._cache = (sec, head, offset)
        return f"{head}.{rest // 1000:06d}{offset}"


@lru_cache(maxsize=64)
def clock_for(tz_name: str) -> Clock:
    """The shared `Clock` of a time zone name (``UTC`` or any IANA name)."""
    return Clock(UTC if tz_name.upper() == "UTC" else ZoneInfo(tz_name))


@dataclass(frozen=True)
class HostInfo:
    """Facts about this host and interpreter, looked up once per process."""

    hostname: str
    ip_address: str | None
    python_version: str


_host: HostInfo | None = None
_host_lock = threading.Lock()


def host_info() -> HostInfo:
    """This host's name, address and Python version (cached; the address lookup uses the
    resolver once and falls back to None rather than wait on a broken DNS)."""
    global _host
    if _host is None:
        with _host_lock:
            if _host is None:
                hostname = socket.gethostname()
                try:
                    ip: str | None = socket.gethostbyname(hostname)
                except OSError:
                    ip = None
                _host = HostInfo(hostname, ip, platform.python_version())
    return _host


class Pid:
    """The current process id, refreshed in a forked child without a system call per
    record."""

    value: int = os.getpid()

    @classmethod
    def refresh(cls) -> None:
        cls.value = os.getpid()


os.register_at_fork(after_in_child=Pid.refresh)


@dataclass(frozen=True)
class RunContext:
    """What the current code is running under: the run and the span that a record or a
    stdlib log line belongs to."""

    run_id: str
    parent_run_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    fields: tuple[tuple[str, Any], ...] = ()


#: The run (and span) active in this thread or task; set by `Trace` and spans.
current_run: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "flowtrail_current_run", default=None
)
