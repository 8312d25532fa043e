"""Records: one log line (`Metadata`), a run read back (`TraceData`), message prefixes
(`Message`), levels, and the JSON encoding shared by every handler.

Records are immutable `msgspec` structs: built once on the caller's thread and never
changed after they are handed to a pipeline.
"""

from __future__ import annotations

import re
from datetime import datetime as _datetime
from typing import Any, ClassVar, Final, Literal

import msgspec

LevelName = Literal["debug", "info", "warning", "error", "exception"]

#: Severity of each level name; ``exception`` is an error with a stack trace.
LEVELS: Final[dict[str, int]] = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "error": 40,
    "exception": 50,
}
#: Levels whose records go to ``stderr`` (``mode="stderr"``, ``error_flag=True``).
ERROR_LEVELS: Final[frozenset[str]] = frozenset({"error", "exception"})


class Metadata(msgspec.Struct, frozen=True, gc=False):
    """One log record with every field of the seed documents.

    Field order is the column order of the SQLite table. ``datetime`` and ``created_at``
    are ISO-8601 strings with the UTC offset of the configured ``log_tz`` (UTC by default),
    e.g. ``2026-11-21T09:59:17.203164+00:00``.
    """

    # Basic info
    run_id: str
    parent_run_id: str | None = None
    level: str = "info"
    message: str = ""
    error_flag: bool = False
    datetime: str = ""
    # System info
    process: int = 0
    thread: int = 0
    filename: str = ""
    lineno: int = 0
    cut_id: str | None = None
    # Observability
    workflow_name: str | None = None
    stage_name: str | None = None
    job_name: str | None = None
    # Performance
    duration_ms: float | None = None
    memory_usage_mb: float | None = None
    cpu_usage_percent: float | None = None
    # Distributed tracing
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    # Error context
    exception_type: str | None = None
    exception_message: str | None = None
    stack_trace: str | None = None
    error_code: str | None = None
    # Business context
    user_id: str | None = None
    tenant_id: str | None = None
    environment: str | None = None
    # System context
    hostname: str | None = None
    ip_address: str | None = None
    python_version: str | None = None
    package_version: str | None = None
    # Custom
    tags: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: str | None = None
    mode: Literal["stdout", "stderr"] = "stdout"

    def model_dump(self) -> dict[str, Any]:
        """Return the record as a plain dict (the name pydantic users expect)."""
        return msgspec.structs.asdict(self)


#: Field names of `Metadata`, in column order.
METADATA_FIELDS: Final[tuple[str, ...]] = Metadata.__struct_fields__

#: Fields a caller may set for a whole run through ``extras`` (seed 002/003).
CONTEXT_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "workflow_name",
        "stage_name",
        "job_name",
        "duration_ms",
        "memory_usage_mb",
        "cpu_usage_percent",
        "trace_id",
        "span_id",
        "parent_span_id",
        "error_code",
        "user_id",
        "tenant_id",
        "environment",
        "hostname",
        "ip_address",
        "package_version",
        "tags",
        "metadata",
    }
)


class TraceData(msgspec.Struct, kw_only=True):
    """A run read back from a store: its text output and its records."""

    stdout: str = ""
    stderr: str = ""
    meta: list[Metadata] = msgspec.field(default_factory=list)
    spans: list[Any] = msgspec.field(default_factory=list)
    #: Spans that started and have not ended (yet, or ever: see `flowtrail.status`).
    open_spans: list[Any] = msgspec.field(default_factory=list)

    @property
    def run_id(self) -> str | None:
        """The run id of the first record, if any."""
        return self.meta[0].run_id if self.meta else None


_ISO_FRACTION = re.compile(r"(T\d\d:\d\d:\d\d)\.(\d+)")


def parse_iso(text: str) -> _datetime:
    """Read an ISO-8601 time as Python 3.11 does, on 3.10 too: a ``Z`` suffix, and any
    number of fraction digits (3.10 takes only 3 or 6). Raises ``ValueError``."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = _ISO_FRACTION.sub(lambda m: f"{m.group(1)}.{(m.group(2) + '000000')[:6]}", text)
    return _datetime.fromisoformat(text)


class RunSummary(msgspec.Struct, kw_only=True):
    """One run as listed by a store: when it ran and how it went."""

    run_id: str
    parent_run_id: str | None = None
    workflow_name: str | None = None
    start: str | None = None
    end: str | None = None
    records: int = 0
    warnings: int = 0
    errors: int = 0
    spans: int = 0
    span_errors: int = 0
    #: ``error`` if a top-level span of the run ended in error, ``ok`` if none did; None
    #: when the run has no spans (kept for compatibility: `status` is the run's status).
    span_status: str | None = None
    #: How the run went: ``ok``, ``error``, ``interrupted`` or ``running``
    #: (`flowtrail.status.run_status`, the one rule every reader uses). Left out, it is
    #: ``span_status`` if set, else ``error`` when the run logged an error.
    status: str = ""
    #: Failed attempts that a successful retry followed (the run may still be ``ok``).
    retried: int = 0
    #: Distinct failures (one exception through nested spans is one).
    failures: int = 0
    #: The signal that stopped the run, when one was recorded.
    interrupted_by: str | None = None

    def __post_init__(self) -> None:
        if not self.status:
            self.status = self.span_status or ("error" if self.errors else "ok")

    @property
    def status_text(self) -> str:
        """The status as shown: ``ok (retried)`` for a run that recovered by retrying,
        ``interrupted (SIGTERM)`` for one a signal stopped."""
        if self.status == "ok" and self.retried:
            return "ok (retried)"
        if self.status == "interrupted" and self.interrupted_by:
            return f"interrupted ({self.interrupted_by})"
        return self.status

    @property
    def duration_s(self) -> float | None:
        """Seconds from the first to the last record."""
        if not self.start or not self.end:
            return None
        try:
            delta = parse_iso(self.end) - parse_iso(self.start)
        except (TypeError, ValueError):
            return None
        return delta.total_seconds()


PREFIX_LOGS: Final[dict[str, dict[str, str]]] = {
    "CALLER": {"emoji": "📍", "desc": "logs from any usage from custom caller function."},
    "STAGE": {"emoji": "⚙️", "desc": "logs from stages module."},
    "JOB": {"emoji": "⛓️", "desc": "logs from job module."},
    "WORKFLOW": {"emoji": "🏃", "desc": "logs from workflow module."},
    "RELEASE": {"emoji": "📅", "desc": "logs from release workflow method."},
    "POKING": {"emoji": "⏰", "desc": "logs from poke workflow method."},
    "AUDIT": {"emoji": "📌", "desc": "logs from audit model."},
}
PREFIX_DEFAULT: Final[str] = "CALLER"
PREFIX_LOGS_REGEX: Final[re.Pattern[str]] = re.compile(
    rf"(^\[(?P<name>{'|'.join(PREFIX_LOGS)})]:\s?)?(?P<message>.*)",
    re.MULTILINE | re.DOTALL | re.ASCII,
)


class Message(msgspec.Struct, kw_only=True):
    """A message split into its ``[PREFIX]: `` name and its text (seed 000)."""

    name: str | None = None
    message: str | None = None

    prefixes: ClassVar[dict[str, dict[str, str]]] = PREFIX_LOGS

    @classmethod
    def from_str(cls, msg: str) -> Message:
        """Parse ``"[WORKFLOW]: Starting"`` into ``name="WORKFLOW"``, ``message="Starting"``."""
        match = PREFIX_LOGS_REGEX.search(msg)
        assert match is not None  # the pattern matches any string
        return cls(name=match.group("name"), message=match.group("message"))

    def prepare(self, extras: dict[str, Any] | None = None) -> str:
        """Render ``[NAME]: message``, led by the prefix's emoji when ``log_add_emoji``
        (default true) is set in ``extras``."""
        name = self.name or PREFIX_DEFAULT
        add_emoji = (extras or {}).get("log_add_emoji", True)
        emoji = f"{PREFIX_LOGS[name]['emoji']} " if add_emoji else ""
        return f"{emoji}[{name}]: {self.message}"


def render_message(message: str, add_emoji: bool) -> str:
    """The text shown for a record: the message as logged, with the prefix's emoji in
    front when it starts with a known ``[PREFIX]:`` and ``add_emoji`` is set."""
    if add_emoji and message.startswith("["):
        match = PREFIX_LOGS_REGEX.match(message)
        if match is not None and match.group("name"):
            return f"{PREFIX_LOGS[match.group('name')]['emoji']} {message}"
    return message


class SpanEvent(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Something that happened inside a span: a log line, an exception, a marker."""

    name: str
    time: str
    time_ns: int = 0
    level: str | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)


class Span(msgspec.Struct, frozen=True, gc=False):
    """A finished span: one workflow, job, stage or node execution.

    Ids are W3C sizes in lowercase hex: ``trace_id`` 32 digits, ``span_id`` 16. Times are
    ISO-8601 strings (``start_time``/``end_time``) and nanoseconds since the epoch
    (``start_ns``/``end_ns``). ``status`` is ``ok`` or ``error``; an exception is recorded
    as an ``exception`` event. A span still open is stored as its start: status ``unset``
    and ``end_ns`` 0 (`flowtrail.status.split_open`). Resource use is measured over the
    span: CPU time and CPU percent of the process, resident memory at start and end.
    """

    run_id: str
    trace_id: str
    span_id: str
    name: str
    kind: str = "internal"
    parent_span_id: str | None = None
    parent_run_id: str | None = None
    start_time: str = ""
    end_time: str = ""
    start_ns: int = 0
    end_ns: int = 0
    duration_ms: float = 0.0
    status: Literal["ok", "error", "unset"] = "ok"
    status_message: str | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    events: list[SpanEvent] = msgspec.field(default_factory=list)
    workflow_name: str | None = None
    job_name: str | None = None
    stage_name: str | None = None
    cpu_time_ms: float | None = None
    cpu_percent: float | None = None
    memory_start_mb: float | None = None
    memory_end_mb: float | None = None
    process: int = 0
    thread: int = 0
    hostname: str | None = None
    sampled: bool = True

    #: Spool files of spans are kept apart from log records.
    spool_kind: ClassVar[str] = "span"

    @property
    def is_error(self) -> bool:
        """Whether the span ended in error."""
        return self.status == "error"


#: Field names of `Span`, in column order.
SPAN_FIELDS: Final[tuple[str, ...]] = Span.__struct_fields__


_encoder = msgspec.json.Encoder()
_metadata_decoder = msgspec.json.Decoder(Metadata)

#: Encode one record to JSON bytes.
encode = _encoder.encode
#: Encode a batch of records to newline-delimited JSON (one line each, trailing newline).
encode_lines = _encoder.encode_lines


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (not encodable as UTF-8) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def json_safe(value: Any, _seen: frozenset[int] = frozenset()) -> Any:
    """``value`` made encodable as JSON by every store: text without lone surrogates,
    dict keys as text, tuples and sets as lists, a container that contains itself cut
    with ``"<recursive>"``, and any other object that `msgspec` cannot encode as its
    ``str()``. Returns ``value`` itself when nothing needed changing."""
    if value is None or value.__class__ in (bool, int, float):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in _seen:
            return "<recursive>"
        if len(_seen) >= 100:
            return "<nested too deep>"
        seen = _seen | {id(value)}
        out: dict[str, Any] | list[Any]
        if isinstance(value, dict):
            out = {
                clean_text(k if isinstance(k, str) else str(k)): json_safe(v, seen)
                for k, v in value.items()
            }
            same = len(out) == len(value) and all(
                k in value and value[k] is v for k, v in out.items()
            )
        else:
            items = [json_safe(v, seen) for v in value]
            same = isinstance(value, list) and all(
                a is b for a, b in zip(items, value, strict=True)
            )
            out = items
        return value if same else out
    if isinstance(value, msgspec.Struct):
        return sanitized(value)
    try:
        _encoder.encode(value)
        return value
    except Exception:
        try:
            return clean_text(str(value))
        except Exception:
            return f"<unprintable {type(value).__name__}>"


def sanitized(record: Any) -> Any:
    """``record`` (a `Metadata`, `Span` or other struct) with every field made encodable
    (`json_safe`); the record itself when it already was."""
    if not isinstance(record, msgspec.Struct):
        return record
    changes = {}
    for name in record.__struct_fields__:
        value = getattr(record, name)
        clean = json_safe(value)
        if clean is not value:
            changes[name] = clean
    return msgspec.structs.replace(record, **changes) if changes else record


def encodable(value: Any) -> bool:
    """Whether every store can encode ``value`` as it is."""
    try:
        _encoder.encode(value)
    except Exception:
        return False
    return True


def decode_metadata(data: bytes | str) -> Metadata:
    """Decode one JSON line into a `Metadata`."""
    return _metadata_decoder.decode(data)


_span_decoder = msgspec.json.Decoder(Span)


def decode_span(data: bytes | str) -> Span:
    """Decode one JSON line into a `Span`."""
    return _span_decoder.decode(data)
