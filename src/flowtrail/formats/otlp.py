"""OTLP encoding: records become an ``ExportLogsServiceRequest`` (``/v1/logs``), finished
spans an ``ExportTraceServiceRequest`` (``/v1/traces``). Pure: nothing is sent here.

Protobuf uses the official ``opentelemetry-proto`` messages (the optional ``[otlp]``
extra, imported on first use). Each record is given to the message constructor as plain
dicts and lists, which it converts in C (upb). What repeats from record to record (the
run, process, thread, file and line, workflow; for spans also the kind and trace id) is
serialized once per distinct combination by the same message class and joined with the
serialization of each record's own fields: protobuf parses the concatenation of two
serializations of a message as one message (`OTLPEncoder._assemble`). About 3 µs a record
and 4.5 µs a span; `logs_dict`/`traces_dict` describe the same requests as nested dicts
(JSON is made from them, and a test checks both give the same message).

JSON follows the OTLP/JSON rules: lowerCamelCase field names, trace and span ids as hex
(not base64), 64-bit integers as strings, enums as their numbers, defaults left out.

Names of attributes follow the OpenTelemetry semantic conventions where one exists
(`RECORD_ATTRIBUTES`); the other fields of a record go under ``flowtrail.``; a record's
``metadata`` and a span's own attributes keep the keys the user gave. One resource
(``service.name``, ``host.name``, ``telemetry.sdk.*``, ``OTEL_RESOURCE_ATTRIBUTES``) and
one scope (``flowtrail``) per request.
"""

from __future__ import annotations

import base64
import math
import operator
import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Final
from urllib.parse import unquote

import msgspec

from flowtrail.records import Metadata, Span, parse_iso

#: Told when the ``opentelemetry-proto`` package is missing.
EXTRA_HINT: Final = (
    "OTLP protobuf encoding needs the opentelemetry-proto package: "
    "pip install 'flowtrail[otlp]' (or protocol='http/json', which needs nothing more)"
)
SCOPE_NAME: Final = "flowtrail"
SCOPE_VERSION: Final = "0.1.0"

#: Severity number (OpenTelemetry log data model) and text of each level.
SEVERITY: Final[dict[str, tuple[int, str]]] = {
    "debug": (5, "DEBUG"),
    "info": (9, "INFO"),
    "warning": (13, "WARNING"),
    "error": (17, "ERROR"),
    "exception": (18, "EXCEPTION"),  # an error with its stack: ERROR2
}
#: OTLP ``Span.SpanKind`` numbers; flowtrail kinds (workflow, job, stage...) are
#: ``INTERNAL`` with the kind in the ``flowtrail.kind`` attribute.
SPAN_KINDS: Final[dict[str, int]] = {
    "internal": 1,
    "server": 2,
    "client": 3,
    "producer": 4,
    "consumer": 5,
}
#: OTLP ``Status.StatusCode`` numbers.
STATUS_CODES: Final[dict[str, int]] = {"unset": 0, "ok": 1, "error": 2}

#: Record fields with a semantic-convention name (the code location's are chosen by
#: ``code_names``); every other field is ``flowtrail.<field>``.
RECORD_ATTRIBUTES: Final[dict[str, str]] = {
    "process": "process.pid",
    "thread": "thread.id",
    "exception_type": "exception.type",
    "exception_message": "exception.message",
    "stack_trace": "exception.stacktrace",
    "user_id": "enduser.id",
    "environment": "deployment.environment",
    "hostname": "host.name",
    "ip_address": "host.ip",
    "python_version": "process.runtime.version",
    "package_version": "service.version",
}
#: The code location's attribute names: ``new`` (semantic conventions 1.26 on, what the
#: OpenTelemetry SDK sends now), ``old`` (``code.filepath``/``code.lineno``) or ``both``.
CODE_NAMES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "new": (("code.file.path", "code.line.number"),),
    "old": (("code.filepath", "code.lineno"),),
    "both": (("code.file.path", "code.line.number"), ("code.filepath", "code.lineno")),
}
#: Record fields whose attributes repeat from record to record (the run, the place in
#: the code, the workflow): made and serialized once per distinct combination. The
#: message, level, times and ids have their own places in a log record; ``mode``,
#: ``error_flag`` and ``cut_id`` follow from other fields and are not sent.
_LOG_SHARED: Final[tuple[str, ...]] = (
    "run_id",
    "parent_run_id",
    "process",
    "thread",
    "filename",
    "lineno",
    "workflow_name",
    "stage_name",
    "job_name",
    "parent_span_id",
    "error_code",
    "user_id",
    "tenant_id",
    "environment",
    "hostname",
    "ip_address",
    "python_version",
    "package_version",
)
#: Record fields that differ from record to record (``metadata`` follows them).
_LOG_UNIQUE: Final[tuple[str, ...]] = (
    "duration_ms",
    "memory_usage_mb",
    "cpu_usage_percent",
    "exception_type",
    "exception_message",
    "stack_trace",
    "tags",
)
#: Span fields whose attributes repeat from span to span, and those that do not.
_SPAN_SHARED: Final[tuple[str, ...]] = (
    "kind",
    "trace_id",  # in the serialized part, not an attribute
    "run_id",
    "parent_run_id",
    "process",
    "thread",
    "workflow_name",
    "hostname",
)
#: Span fields sent from the cache of repeating values (names, memory) and as they are
#: (CPU use).
_SPAN_REPEATING: Final[tuple[tuple[str, str], ...]] = tuple(
    (name, f"flowtrail.{name}") for name in ("memory_start_mb", "memory_end_mb", "cpu_percent")
)
_SPAN_NAMES: Final[tuple[tuple[str, str], ...]] = tuple(
    (name, f"flowtrail.{name}") for name in ("job_name", "stage_name")
)
_SPAN_FLOATS: Final[tuple[tuple[str, str], ...]] = (("cpu_time_ms", "flowtrail.cpu_time_ms"),)
_STATUS: Final[dict[str, dict[str, int]]] = {"ok": {"code": 1}, "unset": {"code": 0}}
#: The attribute name of each record and span field.
ATTRIBUTE_NAMES: Final[dict[str, str]] = {
    name: RECORD_ATTRIBUTES.get(name, f"flowtrail.{name}")
    for name in (*Metadata.__struct_fields__, *Span.__struct_fields__)
}
ATTRIBUTE_NAMES["kind"] = "flowtrail.kind"
_log_shared_key = operator.attrgetter(*_LOG_SHARED)
_span_shared_key = operator.attrgetter(*_SPAN_SHARED)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def load_proto() -> Any:
    """The ``opentelemetry-proto`` messages used here (requests, responses, and the
    messages a request is assembled from); `ImportError` naming the ``[otlp]`` extra
    when the package is missing."""
    try:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.logs.v1 import logs_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2
    except ImportError as exc:
        raise ImportError(f"{EXTRA_HINT} ({exc})") from None
    return _Proto(logs_service_pb2, trace_service_pb2, logs_pb2, trace_pb2)


def _tag(message: Any, field: str) -> bytes:
    """The wire tag of a message's length-delimited ``field`` (from its descriptor)."""
    number = message.DESCRIPTOR.fields_by_name[field].number
    return _varint((number << 3) | 2)


def _varint(value: int) -> bytes:
    if value < 2048:
        return _SMALL_VARINTS[value]
    return _make_varint(value)


def _make_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS: Final = tuple(_make_varint(n) for n in range(2048))


class _Proto:
    """The messages, and the wire tags of the repeated fields a request is assembled
    with."""

    def __init__(self, logs: Any, traces: Any, logs_pb2: Any, trace_pb2: Any) -> None:
        self.logs_request = logs.ExportLogsServiceRequest
        self.logs_response = logs.ExportLogsServiceResponse
        self.traces_request = traces.ExportTraceServiceRequest
        self.traces_response = traces.ExportTraceServiceResponse
        self.log_record = logs_pb2.LogRecord
        self.scope_logs = logs_pb2.ScopeLogs
        self.resource_logs = logs_pb2.ResourceLogs
        self.span = trace_pb2.Span
        self.scope_spans = trace_pb2.ScopeSpans
        self.resource_spans = trace_pb2.ResourceSpans
        self.tag_log_records = _tag(logs_pb2.ScopeLogs, "log_records")
        self.tag_scope_logs = _tag(logs_pb2.ResourceLogs, "scope_logs")
        self.tag_resource_logs = _tag(self.logs_request, "resource_logs")
        self.tag_spans = _tag(trace_pb2.ScopeSpans, "spans")
        self.tag_scope_spans = _tag(trace_pb2.ResourceSpans, "scope_spans")
        self.tag_resource_spans = _tag(self.traces_request, "resource_spans")


# ---------------------------------------------------------------------- resource
def parse_key_values(text: str | None) -> dict[str, str]:
    """``key1=value1,key2=value2`` (``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_EXPORTER_OTLP_HEADERS``) as a dict: keys and values are trimmed and
    percent-decoded; members without ``=`` or with an empty key are left out."""
    pairs: dict[str, str] = {}
    for member in (text or "").split(","):
        key, sep, value = member.partition("=")
        key = unquote(key.strip())
        if sep and key:
            pairs[key] = unquote(value.strip())
    return pairs


def resource_attributes(
    service_name: str | None = None,
    extra: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The resource of this process as the OpenTelemetry SDK makes it:
    ``telemetry.sdk.*``, ``host.name``, ``host.ip``, ``process.runtime.*``, then
    ``OTEL_RESOURCE_ATTRIBUTES``, then
    ``OTEL_SERVICE_NAME`` (which wins over a ``service.name`` in the former), then the
    handler's own ``resource_attributes`` and ``service_name`` (configuration wins over
    the environment). ``service.name`` defaults to ``flowtrail``."""
    from flowtrail.context import host_info

    env = os.environ if environ is None else environ
    host = host_info()
    attributes: dict[str, Any] = {
        "service.name": SCOPE_NAME,
        "telemetry.sdk.name": SCOPE_NAME,
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": SCOPE_VERSION,
        "host.name": host.hostname,
        "process.runtime.name": platform.python_implementation(),
        "process.runtime.version": host.python_version,
    }
    if host.ip_address:
        attributes["host.ip"] = [host.ip_address]
    attributes.update(parse_key_values(env.get("OTEL_RESOURCE_ATTRIBUTES")))
    if env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = env["OTEL_SERVICE_NAME"]
    attributes.update(extra or {})
    if service_name:
        attributes["service.name"] = service_name
    return attributes


# ---------------------------------------------------------------------- values
def any_value(value: Any) -> dict[str, Any]:
    """An OTLP ``AnyValue`` (as the dict the message constructor takes) of a Python
    value: text, bool, int (beyond 64 bits: text), float, bytes, sequences as arrays,
    mappings as key-value lists, None as the empty value, anything else as its text."""
    cls = value.__class__
    if cls is str:
        return {"string_value": value}
    if cls is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return {"int_value": value}
        return {"string_value": str(value)}
    if cls is float:
        return {"double_value": value}
    if cls is bool:
        return {"bool_value": value}
    if value is None:
        return {}
    if cls is list or cls is tuple:
        return {"array_value": {"values": [any_value(v) for v in value]}}
    if cls is dict:
        return {"kvlist_value": {"values": key_values(value)}}
    return _other_value(value)


def _other_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"bool_value": bool(value)}
    if isinstance(value, int):
        return any_value(int(value))
    if isinstance(value, float):
        return {"double_value": float(value)}
    if isinstance(value, str):
        return {"string_value": str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes_value": bytes(value)}
    if isinstance(value, Mapping):
        return {"kvlist_value": {"values": key_values(value)}}
    if isinstance(value, (list, tuple, set, frozenset)):
        return {"array_value": {"values": [any_value(v) for v in value]}}
    try:
        return {"string_value": str(value)}
    except Exception:
        return {"string_value": f"<unprintable {type(value).__name__}>"}


def key_values(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OTLP ``KeyValue`` entries of a mapping (keys as text)."""
    return [{"key": str(key), "value": any_value(value)} for key, value in attributes.items()]


def _id_bytes(value: str | None, size: int) -> bytes | None:
    """A W3C id (hex) as the bytes OTLP carries; None if it is not one."""
    if value is None:
        return None
    found = _ids.get(value)
    if found is not None and len(found) == size:
        return found
    data = _parse_id(value, size)
    if data is not None:
        if len(_ids) >= 4096:
            _ids.clear()
        _ids[value] = data
    return data


#: Ids seen lately (a batch's records share their trace's and span's).
_ids: dict[str, bytes] = {}


def _parse_id(value: str, size: int) -> bytes | None:
    if not value or len(value) != size * 2:
        return None
    try:
        data = bytes.fromhex(value)
    except ValueError:
        return None
    return data if any(data) else None


class OTLPEncoder:
    """Encodes batches for one resource and scope. Keeps a small cache of the attribute
    entries that repeat (cleared when it grows), so use one per handler (worker)."""

    def __init__(
        self,
        resource: Mapping[str, Any] | None = None,
        *,
        code_names: str = "new",
        scope_name: str = SCOPE_NAME,
        scope_version: str = SCOPE_VERSION,
    ) -> None:
        self.resource = dict(resource if resource is not None else resource_attributes())
        if code_names not in CODE_NAMES:
            raise ValueError(f"code_names must be one of {', '.join(CODE_NAMES)}")
        self._code = CODE_NAMES[code_names]
        self._scope = {"name": scope_name, "version": scope_version}
        self._resource = {"attributes": key_values(self.resource)}
        self._host = self.resource.get("host.name")
        #: Record fields left out when they hold the resource's value.
        self._same: dict[str, Any] = {
            key: self.resource[key]
            for key in ("host.name", "deployment.environment", "process.runtime.version")
            if key in self.resource
        }
        ips = self.resource.get("host.ip")
        if isinstance(ips, (list, tuple)) and len(ips) == 1:
            self._same["host.ip"] = ips[0]
        self._kv: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._shared_cache: dict[tuple[Any, ...], list[Any]] = {}
        self._attribute_cache: dict[tuple[Any, ...], bytes] = {}
        self._status_bytes: dict[str, bytes] = {}
        self._seconds: dict[str, int] = {}
        self._proto: Any = None

    # ------------------------------------------------------------------ pieces
    def _entry(self, key: str, value: Any) -> dict[str, Any]:
        """A shared ``KeyValue`` dict for a text or int value that repeats."""
        cache_key: tuple[Any, ...] = (
            (key, value) if value.__class__ is str else (key, value, value.__class__)
        )
        entry = self._kv.get(cache_key)
        if entry is None:
            if len(self._kv) >= 8192:
                self._kv.clear()
            entry = self._kv[cache_key] = {"key": key, "value": any_value(value)}
        return entry

    def time_ns(self, text: str | None) -> int:
        """Nanoseconds since the epoch of an ISO-8601 time stamp (0 if empty or not
        understood); the seconds of ``YYYY-mm-ddTHH:MM:SS.ffffff+HH:MM`` are cached."""
        if not text:
            return 0
        if len(text) == 32 and text[19] == ".":
            head = text[:19] + text[26:]
            seconds = self._seconds.get(head)
            if seconds is None:
                if len(self._seconds) >= 4096:
                    self._seconds.clear()
                try:
                    seconds = self._seconds[head] = _epoch_seconds(head)
                except ValueError:
                    return 0
            try:
                return seconds * 1_000_000_000 + int(text[20:26]) * 1000
            except ValueError:
                return 0
        try:
            moment = parse_iso(text)
        except (TypeError, ValueError):
            return 0
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        delta = moment - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000

    def _shared(
        self, key: tuple[Any, ...], names: tuple[str, ...], make: Callable[..., list[Any]]
    ) -> list[Any]:
        """``[attributes, their serialized form or None]`` of a shared key (cached)."""
        cache = self._shared_cache
        found = cache.get(key)
        if found is None:
            if len(cache) >= 4096:
                cache.clear()
            found = cache[key] = [make(names, key), None]
        return found

    def _log_shared(self, names: tuple[str, ...], values: tuple[Any, ...]) -> list[Any]:
        entry = self._entry
        same = self._same
        attributes: list[Any] = []
        for name, value in zip(names, values, strict=True):
            if value is None or value == "":
                continue
            if name == "filename":
                attributes.extend(entry(file_key, value) for file_key, _ in self._code)
                continue
            if name == "lineno":
                if values[names.index("filename")]:
                    attributes.extend(entry(line_key, value) for _, line_key in self._code)
                continue
            key = ATTRIBUTE_NAMES[name]
            if same.get(key) == value:
                continue  # the resource says it
            attributes.append(entry(key, value))
        return attributes

    def _span_shared(self, names: tuple[str, ...], values: tuple[Any, ...]) -> list[Any]:
        entry = self._entry
        attributes = []
        for name, value in zip(names, values, strict=True):
            if value is None or value == "" or (name == "hostname" and value == self._host):
                continue
            if name != "trace_id":
                attributes.append(entry(ATTRIBUTE_NAMES[name], value))
        return attributes

    def _log_unique(self, record: Metadata) -> list[dict[str, Any]]:
        attributes = []
        for name in _LOG_UNIQUE:
            value = getattr(record, name)
            if value is not None and value != "" and value != []:
                attributes.append({"key": ATTRIBUTE_NAMES[name], "value": any_value(value)})
        if record.metadata:
            attributes.extend(key_values(record.metadata))
        return attributes

    def _log_fields(self, record: Metadata) -> dict[str, Any]:
        """A log record's own fields (all but the shared attributes)."""
        number, text = SEVERITY.get(record.level, (9, record.level.upper()))
        when = self.time_ns(record.datetime)
        created = record.created_at
        result: dict[str, Any] = {
            "time_unix_nano": when,
            "observed_time_unix_nano": (
                when if not created or created == record.datetime else self.time_ns(created)
            ),
            "severity_number": number,
            "severity_text": text,
            "body": {"string_value": record.message},
        }
        unique = (
            self._log_unique(record)
            if record.exception_type
            or record.stack_trace
            or record.metadata
            or record.tags
            or record.duration_ms is not None
            or record.memory_usage_mb is not None
            or record.cpu_usage_percent is not None
            or record.exception_message
            else []
        )
        trace_id = _id_bytes(record.trace_id, 16)
        if trace_id is not None:
            result["trace_id"] = trace_id
            span_id = _id_bytes(record.span_id, 8)
            if span_id is not None:
                result["span_id"] = span_id
                result["flags"] = 1
        elif record.trace_id:  # not a W3C id: kept as text
            unique.append({"key": "flowtrail.trace_id", "value": any_value(record.trace_id)})
        if record.span_id and "span_id" not in result:
            unique.append({"key": "flowtrail.span_id", "value": any_value(record.span_id)})
        if unique:
            result["attributes"] = unique
        return result

    def log_record(self, record: Metadata) -> dict[str, Any]:
        """One record as an OTLP ``LogRecord`` dict (protobuf field names): the shared
        attributes first, then the record's own."""
        shared = self._shared(_log_shared_key(record), _LOG_SHARED, self._log_shared)[0]
        result = self._log_fields(record)
        result["attributes"] = shared + result.get("attributes", [])
        return result

    def _span_own_attributes(self, span: Span) -> list[dict[str, Any]]:
        """A span's attributes that are its own: the job and stage it is in (when not
        itself), its CPU time, and the attributes the user gave."""
        attributes = []
        for name, key in _SPAN_NAMES:
            value = getattr(span, name)
            if value and value != span.name:  # a stage's (job's) own name is its name
                attributes.append({"key": key, "value": any_value(value)})
        for name, key in _SPAN_FLOATS:
            value = getattr(span, name)
            if value is not None:
                attributes.append(
                    {"key": key, "value": {"double_value": value}}
                    if value.__class__ is float
                    else {"key": key, "value": any_value(value)}
                )
        if span.attributes:
            attributes.extend(key_values(span.attributes))
        return attributes

    @staticmethod
    def _status(span: Span) -> dict[str, Any]:
        status: dict[str, Any] = {"code": STATUS_CODES.get(span.status, 0)}
        if span.status_message:
            status["message"] = span.status_message
        return status

    def _span_fields(self, span: Span) -> dict[str, Any]:
        """A span's own fields (all but the shared attributes)."""
        entry = self._entry
        attributes: list[Any] = []
        for name, key in _SPAN_REPEATING:
            value = getattr(span, name)
            if value is not None:
                attributes.append(entry(key, value))
        attributes += self._span_own_attributes(span)
        result: dict[str, Any] = {
            "trace_id": _id_bytes(span.trace_id, 16) or b"",
            "span_id": _parse_id(span.span_id, 8) or b"",
            "name": span.name,
            "kind": SPAN_KINDS.get(span.kind, 1),
            "start_time_unix_nano": span.start_ns,
            "end_time_unix_nano": span.end_ns,
            "attributes": attributes,
        }
        parent = _id_bytes(span.parent_span_id, 8)
        if parent is not None:
            result["parent_span_id"] = parent
        result["status"] = _STATUS.get(span.status) or self._status(span)
        if span.events:
            result["events"] = [self._event(event) for event in span.events]
        return result

    def _attribute_bytes(self, key: str, value: Any) -> bytes:
        """A span's ``attributes`` entry for a repeating value, serialized (by the
        official ``Span`` message) once."""
        cache_key = (key, value, value.__class__)
        data = self._attribute_cache.get(cache_key)
        if data is None:
            if len(self._attribute_cache) >= 8192:
                self._attribute_cache.clear()
            data = self._attribute_cache[cache_key] = self.proto.span(
                attributes=[{"key": key, "value": any_value(value)}]
            ).SerializeToString()
        return data

    def span(self, span: Span) -> dict[str, Any]:
        """One finished span as an OTLP ``Span`` dict (protobuf field names): the shared
        attributes first, then the span's own."""
        shared = self._shared(_span_shared_key(span), _SPAN_SHARED, self._span_shared)[0]
        result = self._span_fields(span)
        result["attributes"] = shared + result["attributes"]
        return result

    def _event(self, event: Any) -> dict[str, Any]:
        attributes = event.attributes
        if event.name == "log":
            entries = [{"key": "message", "value": any_value(attributes.get("message", ""))}]
            if "lineno" in attributes:
                entries.append(self._entry(self._code[0][1], attributes["lineno"]))
            entries.extend(
                {"key": str(k), "value": any_value(v)}
                for k, v in attributes.items()
                if k not in ("message", "lineno")
            )
        else:
            entries = key_values(attributes)
        if event.level:
            entries.append(self._entry("flowtrail.level", event.level))
        return {
            "time_unix_nano": event.time_ns or self.time_ns(event.time),
            "name": event.name,
            "attributes": entries,
        }

    # ------------------------------------------------------------------ requests
    def logs_dict(self, records: Iterable[Metadata]) -> dict[str, Any]:
        """An ``ExportLogsServiceRequest`` as nested dicts (protobuf field names)."""
        log_record = self.log_record
        return {
            "resource_logs": [
                {
                    "resource": self._resource,
                    "scope_logs": [
                        {"scope": self._scope, "log_records": [log_record(r) for r in records]}
                    ],
                }
            ]
        }

    def traces_dict(self, spans: Iterable[Span]) -> dict[str, Any]:
        """An ``ExportTraceServiceRequest`` as nested dicts (protobuf field names)."""
        make = self.span
        return {
            "resource_spans": [
                {
                    "resource": self._resource,
                    "scope_spans": [{"scope": self._scope, "spans": [make(s) for s in spans]}],
                }
            ]
        }

    @property
    def proto(self) -> Any:
        """The messages (`load_proto`)."""
        if self._proto is None:
            self._proto = load_proto()
        return self._proto

    def logs_protobuf(self, records: Iterable[Metadata]) -> bytes:
        """The serialized ``ExportLogsServiceRequest`` of ``records``: the message
        `logs_dict` describes (see `_assemble`)."""
        proto = self.proto
        message = proto.log_record
        shared = self._shared
        fields = self._log_fields
        tag = proto.tag_log_records
        parts: list[bytes] = []
        for record in records:
            found = shared(_log_shared_key(record), _LOG_SHARED, self._log_shared)
            head = found[1]
            if head is None:
                head = found[1] = message(attributes=found[0]).SerializeToString()
            data = head + message(**fields(record)).SerializeToString()
            parts += (tag, _varint(len(data)), data)
        return self._assemble(
            parts,
            proto.scope_logs,
            proto.resource_logs,
            proto.tag_scope_logs,
            proto.tag_resource_logs,
        )

    def traces_protobuf(self, spans: Iterable[Span]) -> bytes:
        """The serialized ``ExportTraceServiceRequest`` of ``spans``: the message
        `traces_dict` describes (see `_assemble`)."""
        proto = self.proto
        message = proto.span
        shared = self._shared
        tag = proto.tag_spans
        parts: list[bytes] = []
        cached = self._attribute_cache
        attribute = self._attribute_bytes
        own = self._span_own_attributes
        ids = _ids
        kinds = SPAN_KINDS
        statuses = self._status_bytes
        if not statuses:
            for code_name, code in _STATUS.items():
                statuses[code_name] = message(status=code).SerializeToString()
        for span in spans:
            values = _span_shared_key(span)
            found = shared(values, _SPAN_SHARED, self._span_shared)
            head = found[1]
            if head is None:  # the span's kind, trace id and shared attributes
                head = found[1] = message(
                    kind=kinds.get(values[0], 1),
                    trace_id=_id_bytes(values[1], 16) or b"",
                    attributes=found[0],
                ).SerializeToString()
            pieces = [head]
            for name, key in _SPAN_REPEATING:
                value = getattr(span, name)
                if value is not None:
                    piece = cached.get((key, value, value.__class__))
                    pieces.append(piece if piece is not None else attribute(key, value))
            status_bytes = statuses.get(span.status)
            if status_bytes is not None:
                pieces.append(status_bytes)
            # The other fields of `_span_fields`, straight to the constructor.
            parent_id = span.parent_span_id
            pieces.append(
                message(
                    span_id=_parse_id(span.span_id, 8) or b"",
                    parent_span_id=(ids.get(parent_id) or _id_bytes(parent_id, 8) or b"")
                    if parent_id
                    else b"",
                    name=span.name,
                    start_time_unix_nano=span.start_ns,
                    end_time_unix_nano=span.end_ns,
                    attributes=own(span),
                    status=self._status(span) if status_bytes is None else None,
                    events=[self._event(event) for event in span.events] if span.events else (),
                ).SerializeToString()
            )
            data = b"".join(pieces)
            parts += (tag, _varint(len(data)), data)
        return self._assemble(
            parts,
            proto.scope_spans,
            proto.resource_spans,
            proto.tag_scope_spans,
            proto.tag_resource_spans,
        )

    def _assemble(
        self, items: list[bytes], scope: Any, resource: Any, tag_scope: bytes, tag_resource: bytes
    ) -> bytes:
        """A request from its serialized items. Every message is serialized by its
        official class; a record's attributes that repeat (serialized once, as a
        ``LogRecord``/``Span`` holding only them) are followed by the record's own
        fields (serialized as a second message): protobuf parses concatenated
        serializations of a message as one message whose repeated fields hold both
        parts, in order. The repeated fields of the scope, resource and request are
        written as protobuf writes them (tag, length, bytes). Building the request as
        one message costs about three times more (a dict or object per attribute per
        record); `logs_dict`/`traces_dict` build that message, and a test checks both
        give the same one."""
        scope_bytes = scope(scope=self._scope).SerializeToString() + b"".join(items)
        resource_bytes = (
            resource(resource=self._resource).SerializeToString()
            + tag_scope
            + _varint(len(scope_bytes))
            + scope_bytes
        )
        return tag_resource + _varint(len(resource_bytes)) + resource_bytes

    def logs_json(self, records: Iterable[Metadata]) -> bytes:
        """The OTLP/JSON ``ExportLogsServiceRequest`` of ``records``."""
        return _json_encode(to_json(self.logs_dict(records)))

    def traces_json(self, spans: Iterable[Span]) -> bytes:
        """The OTLP/JSON ``ExportTraceServiceRequest`` of ``spans``."""
        return _json_encode(to_json(self.traces_dict(spans)))


def _epoch_seconds(head: str) -> int:
    moment = parse_iso(head)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return delta.days * 86_400 + delta.seconds


# ---------------------------------------------------------------------- JSON
_json_encode = msgspec.json.Encoder().encode


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


#: Protobuf field names of the OTLP messages used here, as OTLP/JSON names them.
_JSON_NAMES: Final[dict[str, str]] = {
    name: _camel(name)
    for name in (
        "resource_logs",
        "resource_spans",
        "scope_logs",
        "scope_spans",
        "log_records",
        "time_unix_nano",
        "observed_time_unix_nano",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "severity_number",
        "severity_text",
        "trace_id",
        "span_id",
        "parent_span_id",
        "string_value",
        "bool_value",
        "int_value",
        "double_value",
        "bytes_value",
        "array_value",
        "kvlist_value",
    )
}
#: Fields that are 64-bit integers (strings in OTLP/JSON).
_INT64_FIELDS: Final = frozenset(
    {
        "time_unix_nano",
        "observed_time_unix_nano",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "int_value",
    }
)
_HEX_FIELDS: Final = frozenset({"trace_id", "span_id", "parent_span_id"})


def to_json(value: Any) -> Any:
    """A request made by `OTLPEncoder` (protobuf field names) as OTLP/JSON: camelCase
    names, ids as hex, 64-bit integers as strings, bytes as base64, and doubles that
    JSON cannot hold (NaN, infinities) as the strings protobuf JSON uses."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name: str = _JSON_NAMES.get(key) or key
            if key in _INT64_FIELDS:
                out[name] = str(item)
            elif key in _HEX_FIELDS:
                out[name] = item.hex()
            elif key == "bytes_value":
                out[name] = base64.b64encode(item).decode("ascii")
            elif key == "double_value" and not math.isfinite(item):
                out[name] = "NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity")
            else:
                out[name] = to_json(item)
        return out
    if isinstance(value, list):
        return [to_json(item) for item in value]
    return value


# ---------------------------------------------------------------------- responses
def rejected_count(
    body: bytes, protocol: str, signal: str, proto: Callable[[], Any] | None = None
) -> tuple[int, str]:
    """``(rejected items, error message)`` of an OTLP export response's
    ``partial_success`` (``(0, "")`` when there is none or the body is empty)."""
    if not body:
        return 0, ""
    field = "rejected_log_records" if signal == "logs" else "rejected_spans"
    if protocol == "http/json":
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return 0, ""
        partial = data.get("partialSuccess") or data.get("partial_success") or {}
        count = partial.get(_camel(field), partial.get(field, 0))
        message = partial.get("errorMessage", partial.get("error_message", ""))
        try:
            return int(count or 0), str(message or "")
        except (TypeError, ValueError):
            return 0, str(message or "")
    messages = proto() if proto is not None else load_proto()
    response = (messages.logs_response if signal == "logs" else messages.traces_response)()
    try:
        response.ParseFromString(body)
    except Exception:
        return 0, ""
    partial = response.partial_success
    return int(getattr(partial, field)), partial.error_message


def split(batch: Sequence[Any]) -> tuple[list[Metadata], list[Span]]:
    """A batch's log records and finished spans (the stored start of an open span is
    not an OTLP span: the span is sent when it ends)."""
    records: list[Metadata] = []
    spans: list[Span] = []
    for item in batch:
        if item.__class__ is Metadata:
            records.append(item)
        elif isinstance(item, Span):
            if item.end_ns:
                spans.append(item)
        elif isinstance(item, Metadata):
            records.append(item)
    return records, spans


__all__ = [
    "CODE_NAMES",
    "EXTRA_HINT",
    "OTLPEncoder",
    "RECORD_ATTRIBUTES",
    "SEVERITY",
    "SPAN_KINDS",
    "STATUS_CODES",
    "any_value",
    "key_values",
    "load_proto",
    "parse_key_values",
    "rejected_count",
    "resource_attributes",
    "split",
    "to_json",
]
