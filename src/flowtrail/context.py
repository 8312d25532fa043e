"""Run context: ids, the current trace in `contextvars`, clocks that stamp records, and the
facts about this process and host that every record carries."""

from __future__ import annotations

import contextvars
import datetime as _dt
import os
import platform
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

UTC: Final = _dt.timezone.utc


def new_trace_id() -> str:
    """A random 128-bit W3C trace id, as 32 lowercase hex digits (never all zero)."""
    return f"{_getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    """A random 64-bit W3C span id, as 16 lowercase hex digits (never all zero)."""
    return f"{_getrandbits(64) or 1:016x}"


# Ids need to be unique, not secret: the random module is ~10x cheaper than os.urandom
# and re-seeds itself in a forked child.
_getrandbits = random.getrandbits


def new_run_id(prefix: str = "run") -> str:
    """A run id that sorts by time: ``<prefix>-YYYYmmddTHHMMSS-<8 hex>``."""
    stamp = _dt.datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{stamp}-{os.urandom(4).hex()}"


#: Characters a run id must not hold: path separators, control characters, NUL and lone
#: surrogates (text that cannot be encoded, so no file or database can take it).
_RUN_ID_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\\ud800-\udfff]")
#: Longest run id in UTF-8 bytes: ``run_id=<id>`` must fit a 255-byte folder name.
MAX_RUN_ID_BYTES: Final = 248


def check_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it is a safe run id, else raise ``ValueError``: a run id is a
    non-empty string of at most `MAX_RUN_ID_BYTES` bytes in UTF-8 without path
    separators, control characters, NUL or lone surrogates, and is not ``.`` or ``..``;
    so it can name a directory that stays inside its store."""
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run id must be a non-empty string, got {run_id!r}")
    if (
        len(run_id.encode("utf-8", "surrogatepass")) > MAX_RUN_ID_BYTES
        or run_id in (".", "..")
        or _RUN_ID_FORBIDDEN.search(run_id)
    ):
        raise ValueError(
            f"run id {run_id!r} is not allowed: use at most {MAX_RUN_ID_BYTES} bytes (UTF-8) "
            "without '/', '\\', control characters, NUL or lone surrogates, and not '.' or '..'"
        )
    return run_id


def safe_run_id(text: str) -> str:
    """``text`` made into an allowed run id (used for stdlib logger names)."""
    cleaned = _RUN_ID_FORBIDDEN.sub("_", text or "") or "_"
    if cleaned in (".", ".."):
        cleaned = cleaned.replace(".", "_")
    while len(cleaned.encode("utf-8")) > MAX_RUN_ID_BYTES:
        cleaned = cleaned[:-1]
    return cleaned


#: Run ids up to this many characters are shown whole in text lines (generated ids,
#: ``<prefix>-YYYYmmddTHHMMSS-<8 hex>``, are 25 plus their prefix).
WHOLE_ID_CHARS: Final = 40
#: Joins the head and tail of a longer id; ``flowtrail show head…tail`` accepts the form.
CUT_MARK: Final = "…"


def cut_id(run_id: str, *, num: int = 12) -> str:
    """The run id for text lines: whole up to `WHOLE_ID_CHARS` characters, so a person
    can paste it into ``flowtrail show``; a longer id keeps its head and its last ``num``
    characters around `CUT_MARK`, a form `flowtrail.runids.resolve_run_id` accepts."""
    if len(run_id) <= WHOLE_ID_CHARS:
        return run_id
    head = WHOLE_ID_CHARS - num - 1
    return f"{run_id[:head]}{CUT_MARK}{run_id[-num:]}"


def make_cut_id(run_id: str, parent_run_id: str | None) -> str:
    """``cut(parent) -> cut(run)`` when a run has a parent, else ``cut(run)``."""
    if parent_run_id:
        return f"{cut_id(parent_run_id)} -> {cut_id(run_id)}"
    return cut_id(run_id)


_time_ns = time.time_ns
#: "000" to "999": the microseconds of a time stamp are two look-ups, not a format call.
_DIGITS3 = tuple(f"{i:03d}" for i in range(1000))


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
        micros = _time_ns() // 1000
        sec = micros // 1_000_000
        cache = self._cache
        if sec != cache[0]:
            stamp = _dt.datetime.fromtimestamp(sec, self.tz).isoformat()
            cache = self._cache = (sec, stamp[:19] + ".", stamp[19:])
        millis, rest = divmod(micros - sec * 1_000_000, 1000)
        return cache[1] + _DIGITS3[millis] + _DIGITS3[rest] + cache[2]


@lru_cache(maxsize=64)
def clock_for(tz_name: str) -> Clock:
    """The shared `Clock` of a time zone: ``UTC``, an IANA name (``Asia/Bangkok``) or a
    fixed offset (``+07:00``)."""
    if tz_name.upper() in ("UTC", "Z"):
        return Clock(UTC)
    if tz_name[:1] in "+-" and len(tz_name) == 6 and tz_name[3] == ":":
        sign = -1 if tz_name[0] == "-" else 1
        hours, minutes = int(tz_name[1:3]), int(tz_name[4:6])
        return Clock(_dt.timezone(sign * _dt.timedelta(hours=hours, minutes=minutes)))
    return Clock(ZoneInfo(tz_name))


def tz_name(value: Any) -> Any:
    """A time zone setting as text: `ZoneInfo` and `datetime.timezone` objects become
    their name or offset; anything else is returned as it is."""
    if isinstance(value, ZoneInfo):
        return value.key
    if isinstance(value, _dt.timezone):
        offset = value.utcoffset(None)
        if not offset:
            return "UTC"
        total = int(offset.total_seconds()) // 60
        sign = "-" if total < 0 else "+"
        return f"{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"
    return value


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


@dataclass(slots=True)
class RunContext:
    """What the current code is running under: the run and the span that a record or a
    stdlib log line belongs to."""

    run_id: str
    parent_run_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    fields: tuple[tuple[str, Any], ...] = ()
    #: The open span (`flowtrail.spans.LiveSpan`) that records in this context belong to.
    live: Any = None
    #: Whether this trace is sampled (records everything) or keeps only what matters.
    sampled: bool = True
    #: W3C baggage entries carried with the context.
    baggage: tuple[tuple[str, str], ...] = ()
    #: Record fields the open span sets on records written inside it (its ids, and the
    #: job or stage it names).
    overrides: Any = None


class ActiveContext(Protocol):
    """What readers of `current_run` may use: a `RunContext`, or an open span
    (`flowtrail.spans.LiveSpan`), which is the run context of the code inside it."""

    @property
    def run_id(self) -> str: ...
    @property
    def parent_run_id(self) -> str | None: ...
    @property
    def trace_id(self) -> str | None: ...
    @property
    def span_id(self) -> str | None: ...
    @property
    def parent_span_id(self) -> str | None: ...
    @property
    def fields(self) -> tuple[tuple[str, Any], ...]: ...
    @property
    def live(self) -> Any: ...
    @property
    def sampled(self) -> bool: ...
    @property
    def baggage(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def overrides(self) -> Any: ...


#: The run (and span) active in this thread or task; set by `Trace` and spans.
current_run: contextvars.ContextVar[ActiveContext | None] = contextvars.ContextVar(
    "flowtrail_current_run", default=None
)
#: The trace (`flowtrail.trace.Trace`) whose ``with`` block is active in this thread or
#: task; set by the trace, read by the stdlib bridge.
current_trace: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "flowtrail_active_trace", default=None
)


# ---------------------------------------------------------------- W3C trace context
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class TraceParent:
    """A parsed W3C ``traceparent`` header: ``00-<trace id>-<parent span id>-<flags>``."""

    trace_id: str
    span_id: str
    flags: int = 1

    @property
    def sampled(self) -> bool:
        """The sampled flag of the header."""
        return bool(self.flags & 1)

    def header(self) -> str:
        """The header text."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"


def _is_hex(text: str, size: int) -> bool:
    return len(text) == size and set(text) <= _HEX and text != "0" * size


def parse_traceparent(value: str | None) -> TraceParent | None:
    """Parse a ``traceparent`` header; None (never an exception) when it is invalid."""
    if not value or not isinstance(value, str):
        return None
    parts = value.strip().lower().split("-")
    if len(parts) < 4:
        return None
    version, trace_id, span_id, flags = parts[:4]
    if len(version) != 2 or not set(version) <= _HEX or version == "ff":
        return None
    if version == "00" and len(parts) != 4:
        return None
    if not _is_hex(trace_id, 32) or not _is_hex(span_id, 16):
        return None
    if len(flags) != 2 or not set(flags) <= _HEX:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def format_baggage(entries: Any) -> str:
    """A W3C ``baggage`` header from ``(key, value)`` pairs or a mapping."""
    from urllib.parse import quote

    items = entries.items() if hasattr(entries, "items") else entries
    return ",".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in items)


def parse_baggage(value: str | None) -> tuple[tuple[str, str], ...]:
    """Parse a ``baggage`` header into pairs, skipping malformed members."""
    from urllib.parse import unquote

    if not value or not isinstance(value, str):
        return ()
    pairs = []
    for member in value.split(","):
        member = member.split(";", 1)[0].strip()
        if "=" not in member:
            continue
        key, _, val = member.partition("=")
        key = unquote(key.strip())
        if key:
            pairs.append((key, unquote(val.strip())))
    return tuple(pairs)


def sample_decision(trace_id: str, ratio: float) -> bool:
    """Whether a trace is sampled at ``ratio``: decided from the trace id alone (its low
    64 bits against the ratio), so every process of one trace agrees."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    try:
        low = int(trace_id[-16:], 16)
    except ValueError:
        return True
    return low < int(ratio * (1 << 64))


# ---------------------------------------------------------------- resource use
class Memory:
    """Resident memory of this process from ``/proc/self/statm`` through one descriptor
    kept open (a ``pread`` per reading); None where /proc is missing."""

    _fd: int | None = None
    _pid: int = -1
    _page_mb: float = os.sysconf("SC_PAGE_SIZE") / 1048576 if hasattr(os, "sysconf") else 0.004

    _last: tuple[int, float | None] = (-(10**12), None)

    @classmethod
    def rss_mb(cls) -> float | None:
        """Resident set size in MiB, read at most once a millisecond (spans open and
        close far more often than memory moves)."""
        now = time.perf_counter_ns()
        stamp, value = cls._last
        if now - stamp < 1_000_000:
            return value
        value = cls._read()
        cls._last = (now, value)
        return value

    @classmethod
    def _read(cls) -> float | None:
        if cls._pid != Pid.value:
            cls._pid = Pid.value
            try:
                cls._fd = os.open("/proc/self/statm", os.O_RDONLY)
            except OSError:
                cls._fd = None
        if cls._fd is None:
            return None
        try:
            return int(os.pread(cls._fd, 64, 0).split()[1]) * cls._page_mb
        except (OSError, ValueError, IndexError):
            return None
