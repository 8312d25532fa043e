"""Wire formats of log services: pure functions from a batch of records (and spans) to
the `flowtrail.delivery.Request` values it becomes. No I/O here: the handler sends what
these return, and tests read it.

- Datadog logs intake (``/api/v2/logs``; a ``/v1/input`` URL gets the same entries, which
  v1 accepts too): a JSON array of entries with the reserved attributes ``ddsource``,
  ``ddtags``, ``service``, ``hostname``, ``status``, ``message``, ``date`` and
  ``dd.trace_id``/``dd.span_id``, the other fields as attributes. At most 1,000 entries
  and 5 MB uncompressed a request; an entry over 1 MB is cut (message first) and carries
  a marker, never dropped. ``DD-API-KEY`` header, gzip.
- Grafana Loki push API (``/loki/api/v1/push``, JSON): streams keyed by a fixed set of
  low-cardinality labels (``service``, ``environment``, ``level``, ``workflow``; never
  the run id or the message); every other field goes in the line (JSON or logfmt) or as
  structured metadata (Loki 3). Timestamps are nanoseconds as strings; entries are in
  time order within a stream.
- Generic JSON endpoints: a JSON array or NDJSON of whole records.
- CloudWatch Logs ``PutLogEvents`` (sent by botocore, see `flowtrail.cloudwatch`): one
  JSON message an event, grouped by log group and stream (defaults: the workflow and the
  run), sorted by time, in batches of at most 10,000 events, 1 MiB (message bytes plus 26
  an event) and 24 hours; an event over 256 KiB is cut with a marker.
"""

from __future__ import annotations

import base64
import gzip as _gzip
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import msgspec

from flowtrail.delivery import Request
from flowtrail.records import Metadata, Span, parse_iso

USER_AGENT = "flowtrail/0.1"
#: Datadog's documented limits per request and per entry (uncompressed bytes).
DD_MAX_ENTRIES = 1000
DD_MAX_PAYLOAD = 5_000_000
DD_MAX_ENTRY = 1_000_000
#: Loki labels: the only fields that key a stream (low cardinality by design).
LOKI_LABELS = {
    "service": "service",
    "environment": "environment",
    "level": "level",
    "workflow": "workflow_name",
}
#: Loki's default limits are 4 MiB a push (gRPC receive) and 256 KiB a line.
LOKI_MAX_PAYLOAD = 3_000_000
LOKI_MAX_ENTRIES = 5000
GENERIC_MAX_ENTRIES = 1000
GENERIC_MAX_PAYLOAD = 5_000_000

#: Put in a cut field: the count of bytes removed.
TRUNCATION_MARKER = "...[truncated by flowtrail: {cut} bytes removed]"

_encode = msgspec.json.Encoder().encode
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DD_STATUS = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "exception": "critical",
}


# ---------------------------------------------------------------------- records
def record_fields(record: Any) -> dict[str, Any]:
    """A record's or span's non-empty fields as a plain dict. A span becomes a log-like
    entry: ``message`` says what ended, ``level`` is ``error`` for a failed span, and
    ``datetime`` is its end."""
    if isinstance(record, Metadata):
        data = msgspec.structs.asdict(record)
    elif isinstance(record, Span):
        data = msgspec.structs.asdict(record)
        data["events"] = msgspec.to_builtins(record.events)
        data["message"] = (
            f"span {record.kind} {record.name!r} {record.status} in {record.duration_ms:.1f} ms"
        )
        data["level"] = "error" if record.status == "error" else "info"
        data["datetime"] = record.end_time
        data["span_name"] = data.pop("name")
        data["span_kind"] = data.pop("kind")
        for key in ("workflow_name", "job_name", "stage_name"):
            if key in record.attributes:
                data.setdefault(key, record.attributes[key])
    else:
        data = msgspec.to_builtins(record)
    # Keeps False and 0; drops None, "", [] and {}.
    return {key: value for key, value in data.items() if value or value is False or value == 0}


def time_ns(record: Any) -> int:
    """A record's time as nanoseconds since the epoch."""
    if isinstance(record, Span):
        return record.end_ns or record.start_ns
    text = getattr(record, "datetime", "") or getattr(record, "created_at", "") or ""
    if not text:
        return 0
    moment = parse_iso(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


# ---------------------------------------------------------------------- shared pieces
def auth_headers(
    auth: str, *, api_key: str | None, username: str | None, password: str | None, key_header: str
) -> list[tuple[str, str]]:
    """Headers of an auth scheme: ``bearer`` (the API key as a bearer token), ``basic``
    (username and password, or the API key as the password), ``header`` (the API key in
    ``key_header``) or ``none``."""
    if auth == "bearer" and api_key:
        return [("Authorization", f"Bearer {api_key}")]
    if auth == "basic" and (username or password or api_key):
        pair = f"{username or ''}:{password if password is not None else api_key or ''}"
        return [("Authorization", "Basic " + base64.b64encode(pair.encode()).decode("ascii"))]
    if auth == "header" and api_key:
        return [(key_header, api_key)]
    return []


def _request(
    url: str,
    body: bytes,
    headers: list[tuple[str, str]],
    extra: Mapping[str, str],
    records: Sequence[Any],
    *,
    gzip: bool,
    method: str = "POST",
) -> Request:
    if gzip:
        body = _gzip.compress(body, compresslevel=5)
        headers = [*headers, ("Content-Encoding", "gzip")]
    names = {key.lower() for key in extra}
    merged = [(k, v) for k, v in headers if k.lower() not in names]
    merged += [(str(k), str(v)) for k, v in extra.items()]
    return Request(method, url, tuple(merged), body, tuple(records))


def pack(
    items: Iterable[tuple[Any, bytes]], max_entries: int, max_bytes: int, overhead: int = 1
) -> list[tuple[list[Any], list[bytes]]]:
    """Cut ``(record, encoded entry)`` pairs, in order, into chunks of at most
    ``max_entries`` entries and ``max_bytes`` bytes (counting ``overhead`` bytes per
    entry for separators). An entry bigger than ``max_bytes`` is a chunk of its own."""
    chunks: list[tuple[list[Any], list[bytes]]] = []
    records: list[Any] = []
    entries: list[bytes] = []
    size = 2
    for record, entry in items:
        cost = len(entry) + overhead
        if entries and (len(entries) >= max_entries or size + cost > max_bytes):
            chunks.append((records, entries))
            records, entries, size = [], [], 2
        records.append(record)
        entries.append(entry)
        size += cost
    if entries:
        chunks.append((records, entries))
    return chunks


def _cut_text(text: str, cut: int) -> str:
    """``text`` with at least ``cut`` UTF-8 bytes removed from its end, plus the marker."""
    data = text.encode("utf-8", "surrogatepass")
    keep = max(0, len(data) - cut)
    removed = len(data) - keep
    return data[:keep].decode("utf-8", "ignore") + TRUNCATION_MARKER.format(cut=removed)


def fit_entry(entry: dict[str, Any], limit: int, core: Iterable[str]) -> bytes:
    """``entry`` encoded within ``limit`` bytes: the message is cut first (with the
    marker), then the stack trace; if attributes alone are too big only the ``core``
    keys and the cut message are kept (``flowtrail.truncated`` says so). Never empty."""
    encoded = _encode(entry)
    if len(encoded) <= limit:
        return encoded
    entry = dict(entry)
    entry["flowtrail.truncated"] = True
    for key in ("message", "stack_trace"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            over = len(_encode(entry)) - limit + len(TRUNCATION_MARKER) + 16
            if over > 0:
                entry[key] = _cut_text(value, over)
            encoded = _encode(entry)
            if len(encoded) <= limit:
                return encoded
    kept = {key: entry[key] for key in core if key in entry}
    kept["flowtrail.truncated"] = True
    message = str(kept.get("message", ""))
    over = len(_encode(kept)) - limit + len(TRUNCATION_MARKER) + 16
    if over > 0:
        kept["message"] = _cut_text(message, over)
    return _encode(kept)


# ---------------------------------------------------------------------- Datadog
@lru_cache(maxsize=1024)
def _dd_id(value: str | None) -> str | None:
    """A W3C trace or span id as Datadog correlates it (the low 64 bits, in decimal);
    other ids as they are."""
    if not value:
        return None
    if re.fullmatch(r"[0-9a-f]{16}|[0-9a-f]{32}", value):
        return str(int(value[-16:], 16))
    return value


def datadog_entry(
    record: Any, *, service: str | None, source: str, hostname: str | None
) -> dict[str, Any]:
    """One Datadog log entry of a record."""
    fields = record_fields(record)
    tags = []
    for tag_key, field_name in (
        ("env", "environment"),
        ("workflow", "workflow_name"),
        ("job", "job_name"),
        ("stage", "stage_name"),
    ):
        value = fields.get(field_name)
        if value:
            tags.append(f"{tag_key}:{value}")
    tags += [str(tag) for tag in fields.pop("tags", [])]
    level = str(fields.pop("level", "info"))
    entry: dict[str, Any] = {
        "ddsource": source,
        "ddtags": ",".join(tags),
        "service": service or "flowtrail",
        "hostname": fields.pop("hostname", None) or hostname,
        "status": _DD_STATUS.get(level, level),
        "message": fields.pop("message", ""),
        "date": fields.pop("datetime", None),
        "level": level,
    }
    trace_id, span_id = _dd_id(fields.get("trace_id")), _dd_id(fields.get("span_id"))
    if trace_id:
        entry["dd.trace_id"] = trace_id
    if span_id:
        entry["dd.span_id"] = span_id
    for key, value in fields.items():
        entry.setdefault(key, value)
    return {key: value for key, value in entry.items() if value is not None}


_DD_CORE = (
    "ddsource",
    "ddtags",
    "service",
    "hostname",
    "status",
    "message",
    "date",
    "level",
    "run_id",
    "dd.trace_id",
    "dd.span_id",
)


def datadog_requests(
    records: Sequence[Any],
    *,
    url: str,
    api_key: str | None,
    service: str | None = None,
    source: str = "flowtrail",
    hostname: str | None = None,
    gzip: bool = True,
    headers: Mapping[str, str] | None = None,
) -> list[Request]:
    """The Datadog intake requests of a batch (see the module docstring)."""
    base = [
        ("Content-Type", "application/json"),
        ("User-Agent", USER_AGENT),
    ]
    if api_key:
        base.append(("DD-API-KEY", api_key))
    items = (
        (
            record,
            fit_entry(
                datadog_entry(record, service=service, source=source, hostname=hostname),
                DD_MAX_ENTRY,
                _DD_CORE,
            ),
        )
        for record in records
    )
    return [
        _request(url, b"[" + b",".join(entries) + b"]", base, headers or {}, chunk, gzip=gzip)
        for chunk, entries in pack(items, DD_MAX_ENTRIES, DD_MAX_PAYLOAD)
    ]


# ---------------------------------------------------------------------- Loki
_LABEL_VALUE_LIMIT = 128


def loki_labels(fields: Mapping[str, Any], service: str) -> dict[str, str]:
    """The stream labels of a record's fields: only `LOKI_LABELS`, never the run id."""
    labels = {"service": service}
    for label, key in LOKI_LABELS.items():
        if label == "service":
            continue
        value = fields.get(key)
        if value not in (None, ""):
            labels[label] = str(value)[:_LABEL_VALUE_LIMIT]
    return labels


_LOGFMT_BARE = re.compile(r"[^\s\"=\\]+")


def logfmt(fields: Mapping[str, Any]) -> str:
    """``key=value`` pairs, values quoted when they need it."""
    parts = []
    for key, value in fields.items():
        if isinstance(value, (dict, list)):
            value = _encode(value).decode()
        text = "true" if value is True else "false" if value is False else str(value)
        if not _LOGFMT_BARE.fullmatch(text):
            text = _encode(text).decode()
        parts.append(f"{key}={text}")
    return " ".join(parts)


def loki_entry(
    record: Any, *, service: str, fields_as: str
) -> tuple[tuple[tuple[str, str], ...], int, list[Any]]:
    """(stream labels, time in ns, the ``values`` item) of a record. ``fields_as``:
    ``json`` (the line is a JSON object of every field but the labels), ``logfmt``, or
    ``metadata`` (the line is the message; the other fields are structured metadata)."""
    fields = record_fields(record)
    labels = loki_labels(fields, service)
    ns = time_ns(record)
    rest = {
        key: value
        for key, value in fields.items()
        if key not in ("level", "environment", "workflow_name")
    }
    if fields_as == "metadata":
        message = str(rest.pop("message", ""))
        metadata = {
            key: value if isinstance(value, str) else _encode(value).decode()
            for key, value in rest.items()
        }
        return tuple(sorted(labels.items())), ns, [str(ns), message, metadata]
    if fields_as == "logfmt":
        line = logfmt(rest)
    else:
        line = _encode(rest).decode()
    return tuple(sorted(labels.items())), ns, [str(ns), line]


def loki_requests(
    records: Sequence[Any],
    *,
    url: str,
    service: str = "flowtrail",
    fields_as: str = "json",
    tenant: str | None = None,
    auth: Sequence[tuple[str, str]] = (),
    gzip: bool = True,
    headers: Mapping[str, str] | None = None,
) -> list[Request]:
    """The Loki push requests of a batch (see the module docstring)."""
    base = [("Content-Type", "application/json"), ("User-Agent", USER_AGENT), *auth]
    if tenant:
        base.append(("X-Scope-OrgID", tenant))
    made = [
        (record, loki_entry(record, service=service, fields_as=fields_as)) for record in records
    ]
    sized = ((pair, _encode(pair[1][2])) for pair in made)
    requests = []
    for chunk, _ in pack(sized, LOKI_MAX_ENTRIES, LOKI_MAX_PAYLOAD, overhead=8):
        streams: dict[tuple[tuple[str, str], ...], list[tuple[int, int, list[Any]]]] = {}
        for position, (_, (labels, ns, value)) in enumerate(chunk):
            streams.setdefault(labels, []).append((ns, position, value))
        body = _encode(
            {
                "streams": [
                    {"stream": dict(labels), "values": [value for _, _, value in sorted(values)]}
                    for labels, values in streams.items()
                ]
            }
        )
        chunk_records = [record for record, _ in chunk]
        requests.append(_request(url, body, base, headers or {}, chunk_records, gzip=gzip))
    return requests


# ---------------------------------------------------------------------- generic
def generic_requests(
    records: Sequence[Any],
    *,
    url: str,
    method: str = "POST",
    body_format: str = "json",
    auth: Sequence[tuple[str, str]] = (),
    gzip: bool = False,
    headers: Mapping[str, str] | None = None,
) -> list[Request]:
    """Requests of whole records: a JSON array (``json``) or one JSON object a line
    (``ndjson``)."""
    ndjson = body_format == "ndjson"
    content_type = "application/x-ndjson" if ndjson else "application/json"
    base = [("Content-Type", content_type), ("User-Agent", USER_AGENT), *auth]
    items = ((record, _encode(record_fields(record))) for record in records)
    requests = []
    for chunk, entries in pack(items, GENERIC_MAX_ENTRIES, GENERIC_MAX_PAYLOAD):
        body = b"\n".join(entries) + b"\n" if ndjson else b"[" + b",".join(entries) + b"]"
        requests.append(_request(url, body, base, headers or {}, chunk, gzip=gzip, method=method))
    return requests


# ---------------------------------------------------------------------- CloudWatch
CW_MAX_EVENTS = 10_000
CW_MAX_BATCH = 1_048_576
CW_EVENT_OVERHEAD = 26
CW_MAX_EVENT = 262_144
CW_MAX_SPAN_MS = 24 * 3600 * 1000
_CW_GROUP_BAD = re.compile(r"[^A-Za-z0-9._/#-]+")
_CW_CORE = ("message", "level", "datetime", "run_id", "workflow_name", "trace_id", "span_id")


@dataclass(frozen=True)
class LogEventBatch:
    """One ``PutLogEvents`` call: a log group and stream, and events in time order
    (``{"timestamp": ms, "message": str}``). ``records`` are the records it carries."""

    group: str
    stream: str
    events: tuple[dict[str, Any], ...]
    records: tuple[Any, ...] = field(default=(), compare=False, repr=False)


def cloudwatch_names(
    fields: Mapping[str, Any], log_group: str | None, log_stream: str | None
) -> tuple[str, str]:
    """The log group (``log_group``, else the workflow name, else ``flowtrail``) and
    stream (``log_stream``, else the run id) of a record, as names CloudWatch accepts."""
    group = log_group or str(fields.get("workflow_name") or "flowtrail")
    group = _CW_GROUP_BAD.sub("_", group)[:512] or "flowtrail"
    stream = log_stream or str(fields.get("run_id") or "flowtrail")
    stream = stream.replace(":", "_").replace("*", "_")[:512] or "flowtrail"
    return group, stream


def cloudwatch_batches(
    records: Sequence[Any], *, log_group: str | None = None, log_stream: str | None = None
) -> list[LogEventBatch]:
    """The ``PutLogEvents`` calls of a batch (see the module docstring)."""
    streams: dict[tuple[str, str], list[tuple[int, int, str, Any]]] = {}
    limit = CW_MAX_EVENT - CW_EVENT_OVERHEAD
    for position, record in enumerate(records):
        fields = record_fields(record)
        names = cloudwatch_names(fields, log_group, log_stream)
        message = fit_entry(fields, limit, _CW_CORE).decode("utf-8", "surrogatepass")
        if len(message.encode("utf-8", "surrogatepass")) > limit:  # JSON escapes grew it
            message = fit_entry({"message": message[: limit // 8]}, limit, ("message",)).decode()
        streams.setdefault(names, []).append(
            (time_ns(record) // 1_000_000, position, message, record)
        )
    batches: list[LogEventBatch] = []
    for (group, stream), events in streams.items():
        events.sort(key=lambda event: (event[0], event[1]))
        current: list[tuple[int, int, str, Any]] = []
        size = 0
        for event in events:
            cost = len(event[2].encode("utf-8", "surrogatepass")) + CW_EVENT_OVERHEAD
            if current and (
                len(current) >= CW_MAX_EVENTS
                or size + cost > CW_MAX_BATCH
                or event[0] - current[0][0] > CW_MAX_SPAN_MS
            ):
                batches.append(_cw_batch(group, stream, current))
                current, size = [], 0
            current.append(event)
            size += cost
        if current:
            batches.append(_cw_batch(group, stream, current))
    return batches


def _cw_batch(group: str, stream: str, events: list[tuple[int, int, str, Any]]) -> LogEventBatch:
    return LogEventBatch(
        group,
        stream,
        tuple({"timestamp": ms, "message": message} for ms, _, message, _ in events),
        tuple(record for *_, record in events),
    )


#: Format functions by service type (CloudWatch is not HTTP JSON: see the handler).
FORMATS: dict[str, Callable[..., list[Request]]] = {
    "datadog": datadog_requests,
    "grafana": loki_requests,
    "generic": generic_requests,
}

__all__ = [
    "CW_MAX_BATCH",
    "CW_MAX_EVENT",
    "CW_MAX_EVENTS",
    "DD_MAX_ENTRIES",
    "DD_MAX_ENTRY",
    "DD_MAX_PAYLOAD",
    "FORMATS",
    "LOKI_LABELS",
    "LogEventBatch",
    "TRUNCATION_MARKER",
    "auth_headers",
    "cloudwatch_batches",
    "cloudwatch_names",
    "datadog_entry",
    "datadog_requests",
    "fit_entry",
    "generic_requests",
    "logfmt",
    "loki_entry",
    "loki_labels",
    "loki_requests",
    "pack",
    "record_fields",
    "time_ns",
]
