"""OTLP encoding: records become an ``ExportLogsServiceRequest`` (``/v1/logs``), finished
spans an ``ExportTraceServiceRequest`` (``/v1/traces``). Pure: nothing is sent here.

Protobuf uses the official ``opentelemetry-proto`` messages (the optional ``[otlp]``
extra, imported on first use). A request is built as one nested structure of plain
dicts and lists that the message constructor turns into the message in C (upb): about
three times cheaper than making one message object per record and attribute. The
attribute entries that repeat from record to record (the file, the run, the workflow,
the thread) are made once and shared.

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
#: Fields not sent as attributes: the body, severity, times and ids have their own
#: places; ``mode`` and ``error_flag`` follow from the level.
_OWN_PLACE: Final = frozenset(
    {
        "message",
        "level",
        "datetime",
        "created_at",
        "trace_id",
        "span_id",
        "mode",
        "error_flag",
        "filename",
        "lineno",
        "metadata",
        "cut_id",  # made from the run ids, for text lines
    }
)
#: Record fields after the fixed ones, with their attribute names, in field order.
_OTHER_FIELDS: Final[tuple[tuple[str, str], ...]] = tuple(
    (name, RECORD_ATTRIBUTES.get(name, f"flowtrail.{name}"))
    for name in Metadata.__struct_fields__
    if name not in _OWN_PLACE and name not in ("process", "thread", "run_id")
)
#: Fields whose values differ from record to record (never worth keeping in the cache).
_UNIQUE: Final = frozenset(
    {"exception_message", "stack_trace", "duration_ms", "memory_usage_mb", "cpu_usage_percent"}
)
#: Span fields sent as ``flowtrail.`` attributes.
_SPAN_FIELDS: Final[tuple[str, ...]] = (
    "parent_run_id",
    "workflow_name",
    "job_name",
    "stage_name",
    "cpu_time_ms",
    "cpu_percent",
    "memory_start_mb",
    "memory_end_mb",
)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def load_proto() -> Any:
    """The ``opentelemetry-proto`` request messages (``logs``, ``traces`` and their
    responses); `ImportError` naming the ``[otlp]`` extra when it is missing."""
    try:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    except ImportError as exc:
        raise ImportError(f"{EXTRA_HINT} ({exc})") from None
    return _Proto(logs_service_pb2, trace_service_pb2)


class _Proto:
    __slots__ = ("logs_request", "logs_response", "traces_request", "traces_response")

    def __init__(self, logs: Any, traces: Any) -> None:
        self.logs_request = logs.ExportLogsServiceRequest
        self.logs_response = logs.ExportLogsServiceResponse
        self.traces_request = traces.ExportTraceServiceRequest
        self.traces_response = traces.ExportTraceServiceResponse


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

    def log_record(self, record: Metadata) -> dict[str, Any]:
        """One record as an OTLP ``LogRecord`` dict (protobuf field names)."""
        entry = self._entry
        attributes = [
            entry("flowtrail.run_id", record.run_id),
            entry("process.pid", record.process),
            entry("thread.id", record.thread),
        ]
        if record.filename:
            for file_key, line_key in self._code:
                attributes.append(entry(file_key, record.filename))
                attributes.append(entry(line_key, record.lineno))
        same = self._same
        for name, key in _OTHER_FIELDS:
            value = getattr(record, name)
            if value is None or value == "" or value == [] or same.get(key) == value:
                continue  # empty, or the resource's value
            if name in _UNIQUE or value.__class__ not in (str, int):
                attributes.append({"key": key, "value": any_value(value)})
            else:
                attributes.append(entry(key, value))
        if record.metadata:
            attributes.extend(key_values(record.metadata))
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
            "attributes": attributes,
        }
        trace_id = _id_bytes(record.trace_id, 16)
        if trace_id is not None:
            result["trace_id"] = trace_id
            span_id = _id_bytes(record.span_id, 8)
            if span_id is not None:
                result["span_id"] = span_id
                result["flags"] = 1
        elif record.trace_id:  # not a W3C id: kept as text
            attributes.append({"key": "flowtrail.trace_id", "value": any_value(record.trace_id)})
        if record.span_id and "span_id" not in result:
            attributes.append({"key": "flowtrail.span_id", "value": any_value(record.span_id)})
        return result

    def span(self, span: Span) -> dict[str, Any]:
        """One finished span as an OTLP ``Span`` dict (protobuf field names)."""
        entry = self._entry
        attributes = [
            entry("flowtrail.kind", span.kind),
            entry("flowtrail.run_id", span.run_id),
            entry("process.pid", span.process),
            entry("thread.id", span.thread),
        ]
        for name in _SPAN_FIELDS:
            value = getattr(span, name)
            if value is not None and value != "":
                attributes.append(
                    entry(f"flowtrail.{name}", value)
                    if value.__class__ is str
                    else {"key": f"flowtrail.{name}", "value": any_value(value)}
                )
        if span.hostname and span.hostname != self._host:
            attributes.append(entry("host.name", span.hostname))
        if span.attributes:
            attributes.extend(key_values(span.attributes))
        result: dict[str, Any] = {
            "trace_id": _id_bytes(span.trace_id, 16) or b"",
            "span_id": _id_bytes(span.span_id, 8) or b"",
            "name": span.name,
            "kind": SPAN_KINDS.get(span.kind, 1),
            "start_time_unix_nano": span.start_ns,
            "end_time_unix_nano": span.end_ns,
            "attributes": attributes,
        }
        parent = _id_bytes(span.parent_span_id, 8)
        if parent is not None:
            result["parent_span_id"] = parent
        status: dict[str, Any] = {"code": STATUS_CODES.get(span.status, 0)}
        if span.status == "error" and span.status_message:
            status["message"] = span.status_message
        result["status"] = status
        if span.events:
            result["events"] = [self._event(event) for event in span.events]
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
        """The request and response messages (`load_proto`)."""
        if self._proto is None:
            self._proto = load_proto()
        return self._proto

    def logs_protobuf(self, records: Iterable[Metadata]) -> bytes:
        """The serialized ``ExportLogsServiceRequest`` of ``records``."""
        return self.proto.logs_request(**self.logs_dict(records)).SerializeToString()

    def traces_protobuf(self, spans: Iterable[Span]) -> bytes:
        """The serialized ``ExportTraceServiceRequest`` of ``spans``."""
        return self.proto.traces_request(**self.traces_dict(spans)).SerializeToString()

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
