"""Elasticsearch / OpenSearch formats, pure (no network): the index templates with seed
002's mapping, the ``_bulk`` NDJSON requests a batch becomes, and the reading of a bulk
answer item by item.

Documents:

- a record (`Metadata`) is its fields as in the seed (null ones left out), plus ``seq``
  (the order it was sent in, which breaks ties of equal time stamps). Its id is its time
  stamp followed by a digest of its JSON (`record_id`): deterministic, so a batch sent
  again (a retry, a replay from the spool) writes the same documents, and unique, since
  two records differ at least in their microsecond time stamp, thread or message. Two
  records equal in every field within one batch get the numbers 1, 2, ... after the
  digest. Records are sent with ``create``: one already there answers 409, which counts
  as written;
- a span goes to the spans index with the id ``<trace id>-<span id>``: the open span
  written when it started is sent with ``create`` and its end with ``index``, so the end
  replaces the start whatever order they arrive in, and a replayed start never undoes
  an end.

Index names may hold ``{date}`` (``workflow-traces-{date}``): the record's own date
(``YYYY.MM.DD``, from its time stamp) is put in. The spans of ``INDEX`` go to
``INDEX-spans`` (``workflow-traces-{date}-spans``) unless named otherwise.

Differences from the seed's mapping, each for a reason: ``datetime`` is ``date_nanos``
(records within one millisecond keep their order), ids never sorted on (``cut_id``,
``trace_id``, ``span_id``, ``parent_span_id``) have no doc values, ``process`` and
``thread`` are ``long`` (thread ids do not fit an ``integer``), ``message`` and
``exception_message`` have a lower-cased keyword sub-field (a search for text finds it
inside words, without regard to case, as the SQLite store does), strings inside
``metadata`` are keywords, and
``index.mapping.ignore_malformed`` keeps a record whose value the mapping refuses (an
``ip_address`` that is not an IP): the value stays in ``_source``, unindexed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import gzip as gzip_module
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from flowtrail.records import Metadata, Span, parse_iso
from flowtrail.status import OPEN_SPAN_STATUS

#: Placeholder of an index name for the record's date.
DATE = "{date}"
#: Keyword sub-fields hold values up to this many characters (a keyword's limit is 32766
#: bytes); longer messages are found through the text field.
LOWER_LIMIT = 8191

_KEYWORD = {"type": "keyword"}
#: Ids never sorted or aggregated on: no doc values (less work for every document).
_ID = {"type": "keyword", "doc_values": False}
_LOWER_TEXT = {
    "type": "text",
    "fields": {
        "lower": {
            "type": "keyword",
            "normalizer": "flowtrail_lower",
            "ignore_above": LOWER_LIMIT,
            "doc_values": False,
        }
    },
}

#: Seed 002's mapping of a record (see the module docstring for the differences).
RECORD_PROPERTIES: dict[str, Any] = {
    "run_id": _KEYWORD,
    "parent_run_id": _KEYWORD,
    "level": _KEYWORD,
    "message": _LOWER_TEXT,
    "error_flag": {"type": "boolean"},
    "mode": _KEYWORD,
    "datetime": {"type": "date_nanos"},
    "process": {"type": "long"},
    "thread": {"type": "long"},
    "filename": _KEYWORD,
    "lineno": {"type": "integer"},
    "cut_id": _ID,
    "workflow_name": _KEYWORD,
    "stage_name": _KEYWORD,
    "job_name": _KEYWORD,
    "duration_ms": {"type": "float"},
    "memory_usage_mb": {"type": "float"},
    "cpu_usage_percent": {"type": "float"},
    "trace_id": _ID,
    "span_id": _ID,
    "parent_span_id": _ID,
    "exception_type": _KEYWORD,
    "exception_message": _LOWER_TEXT,
    "stack_trace": {"type": "text"},
    "error_code": _KEYWORD,
    "user_id": _KEYWORD,
    "tenant_id": _KEYWORD,
    "environment": _KEYWORD,
    "hostname": _KEYWORD,
    "ip_address": {"type": "ip"},
    "python_version": _KEYWORD,
    "package_version": _KEYWORD,
    "tags": _KEYWORD,
    "metadata": {"type": "object"},
    #: The metadata as JSON text, for a record whose metadata the mapping refused.
    "metadata_text": {"type": "keyword", "index": False, "doc_values": False},
    "created_at": {"type": "date"},
    "seq": {"type": "long"},
}

#: The mapping of a span.
SPAN_PROPERTIES: dict[str, Any] = {
    "run_id": _KEYWORD,
    "trace_id": _KEYWORD,
    "span_id": _KEYWORD,
    "name": _KEYWORD,
    "kind": _KEYWORD,
    "parent_span_id": _KEYWORD,
    "parent_run_id": _KEYWORD,
    # ``start_time.at``: the start as a time, for ranges whatever the time zone written.
    "start_time": {"type": "keyword", "fields": {"at": {"type": "date_nanos"}}},
    "end_time": _KEYWORD,
    "start_ns": {"type": "long"},
    "end_ns": {"type": "long"},
    "duration_ms": {"type": "double"},
    "status": _KEYWORD,
    "status_message": {"type": "text"},
    "attributes": {"type": "object", "enabled": False},
    "events": {"type": "object", "enabled": False},
    "workflow_name": _KEYWORD,
    "job_name": _KEYWORD,
    "stage_name": _KEYWORD,
    "cpu_time_ms": {"type": "double"},
    "cpu_percent": {"type": "double"},
    "memory_start_mb": {"type": "double"},
    "memory_end_mb": {"type": "double"},
    "process": {"type": "long"},
    "thread": {"type": "long"},
    "hostname": _KEYWORD,
    "sampled": {"type": "boolean"},
}

#: Field types the readers rely on: a conflicting existing index is reported by field.
CHECKED_TYPES = {
    name: spec["type"]
    for name, spec in RECORD_PROPERTIES.items()
    if name in ("run_id", "level", "workflow_name", "datetime", "error_flag", "message", "seq")
}


def index_settings(shards: int, replicas: int, refresh_interval: str) -> dict[str, Any]:
    """The settings of a flowtrail index."""
    return {
        "number_of_shards": shards,
        "number_of_replicas": replicas,
        "refresh_interval": refresh_interval,
        "mapping": {"ignore_malformed": True},
        "analysis": {
            "normalizer": {"flowtrail_lower": {"type": "custom", "filter": ["lowercase"]}}
        },
    }


def record_mappings(data_stream: bool = False) -> dict[str, Any]:
    """The mapping of the records index (seed 002, see the module docstring)."""
    properties = dict(RECORD_PROPERTIES)
    if data_stream:
        properties["@timestamp"] = {"type": "date_nanos"}
    return {
        "dynamic_templates": [
            {
                "metadata_strings": {
                    "path_match": "metadata.*",
                    "match_mapping_type": "string",
                    "mapping": {"type": "keyword", "ignore_above": 1024},
                }
            }
        ],
        "properties": properties,
    }


def span_mappings() -> dict[str, Any]:
    """The mapping of the spans index."""
    return {"dynamic": False, "properties": SPAN_PROPERTIES}


def index_pattern(name: str) -> str:
    """The names an index name with ``{date}`` stands for (``workflow-traces-*``)."""
    return name.replace(DATE, "*")


def records_target(index: str, spans_index: str) -> str:
    """What the readers search for records: the index, or the pattern of its dated
    indices without the spans indices that match it too."""
    pattern = index_pattern(index)
    spans = index_pattern(spans_index)
    if "*" in pattern and _glob_match(pattern, spans.replace("*", "2026.01.01")):
        return f"{pattern},-{spans}"
    return pattern


def _glob_match(pattern: str, name: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


@dataclass(frozen=True)
class Template:
    """One index template: its name, and the body for ``PUT _index_template/<name>``
    (composable, Elasticsearch 7.8+ and OpenSearch) or ``PUT _template/<name>``."""

    name: str
    patterns: tuple[str, ...]
    priority: int
    settings: dict[str, Any]
    mappings: dict[str, Any]
    data_stream: bool = False

    def composable(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "index_patterns": list(self.patterns),
            "priority": self.priority,
            "template": {"settings": self.settings, "mappings": self.mappings},
            "_meta": {"created_by": "flowtrail"},
        }
        if self.data_stream:
            body["data_stream"] = {}
        return body

    def legacy(self) -> dict[str, Any]:
        return {
            "index_patterns": list(self.patterns),
            "order": self.priority,
            "settings": self.settings,
            "mappings": self.mappings,
        }


def templates(
    index: str,
    spans_index: str,
    *,
    shards: int = 1,
    replicas: int = 0,
    refresh_interval: str = "1s",
    data_stream: bool = False,
) -> list[Template]:
    """The templates of a records index and its spans index (the spans template wins
    where both patterns match)."""
    settings = index_settings(shards, replicas, refresh_interval)
    base = _template_name(index)
    return [
        Template(
            f"{base}-records",
            (index_pattern(index),),
            210,
            settings,
            record_mappings(data_stream),
            data_stream=data_stream,
        ),
        Template(f"{base}-spans", (index_pattern(spans_index),), 220, settings, span_mappings()),
    ]


def _template_name(index: str) -> str:
    name = index.replace(DATE, "date").strip("-_.*") or "traces"
    return f"flowtrail-{name}"[:200]


def date_of(stamp: str) -> str:
    """``YYYY.MM.DD`` of an ISO time stamp (its own calendar date)."""
    if len(stamp) >= 10 and stamp[4] == "-" and stamp[7] == "-":
        return f"{stamp[0:4]}.{stamp[5:7]}.{stamp[8:10]}"
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y.%m.%d")


def index_for(name: str, stamp: str) -> str:
    """The concrete index of a record or span written at ``stamp``."""
    if DATE not in name:
        return name
    return name.replace(DATE, date_of(stamp))


# ---------------------------------------------------------------------- bulk requests
_encode = msgspec.json.encode


#: A top-level field whose value is null (fields before ``tags`` are all scalars, so an
#: unescaped quote in them is a delimiter: text inside a string cannot match).
_NULL_FIELD = re.compile(rb'"[a-z_]+":null,')


def without_nulls(encoded: bytes) -> bytes:
    """A record's JSON without its null scalar fields (a smaller document to parse and
    store; a reader gets the same record back, None being the default)."""
    cut = encoded.find(b',"tags":')
    if cut < 0:
        return encoded
    return _NULL_FIELD.sub(b"", encoded[:cut]) + encoded[cut:]


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_MICROSECOND = _dt.timedelta(microseconds=1)
#: Microseconds that fit the id's 7 bytes (until the year 4253).
_MICROS_LIMIT = 1 << 56


def time_micros(stamp: str) -> int:
    """Microseconds since the epoch of an ISO time stamp (a time without an offset is
    UTC); 0 for one that cannot be read."""
    try:
        moment = _dt.datetime.fromisoformat(stamp)
    except ValueError:
        try:
            moment = parse_iso(stamp)
        except ValueError:
            return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return min(max((moment - _EPOCH) // _MICROSECOND, 0), _MICROS_LIMIT - 1)


def record_id(encoded: bytes, stamp: str) -> str:
    """The document id of a record: 20 characters, the URL-safe base64 of 15 bytes, its
    time stamp in microseconds (7 bytes, big-endian) and 8 bytes of a BLAKE2b digest of
    its JSON. Deterministic, and time-ordered: Elasticsearch keeps such an id as those 15
    bytes, and a new id past the others is looked up much faster than a random one (each
    ``create`` checks that its id is not there yet)."""
    digest = hashlib.blake2b(encoded, digest_size=8).digest()
    return base64.urlsafe_b64encode(time_micros(stamp).to_bytes(7, "big") + digest).decode()


def span_id_of(span: Span) -> str:
    """The document id of a span (its start and its end share it)."""
    return f"{span.trace_id}-{span.span_id}"


def is_open_span(span: Any) -> bool:
    return span.status == OPEN_SPAN_STATUS and not span.end_ns


@dataclass
class BulkChunk:
    """One ``_bulk`` request body (NDJSON, not compressed) and what it carries: the
    records in order, and each one's document id, index and (record) document line."""

    lines: list[bytes] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    size: int = 0
    #: The body compressed, once it is.
    gzipped: bytes | None = None

    def body(self) -> bytes:
        return b"".join(self.lines)


def bulk_chunks(batch: Sequence[Any], **options: Any) -> list[BulkChunk]:
    """The ``_bulk`` bodies of a batch, all at once (see `iter_bulk_chunks`)."""
    return list(iter_bulk_chunks(batch, **options))


def iter_bulk_chunks(
    batch: Sequence[Any],
    *,
    index: str,
    spans_index: str,
    seq_start: int,
    max_docs: int = 1000,
    max_bytes: int = 5 * 1024 * 1024,
    data_stream: bool = False,
    transform: Callable[[Any, bytes], bytes] | None = None,
) -> Iterator[BulkChunk]:
    """The ``_bulk`` bodies of a batch (records and spans), each at most ``max_docs``
    documents and about ``max_bytes`` bytes (a document larger than that goes alone),
    one at a time (the first can be sent while the next is made). ``seq_start`` numbers
    the records in order; ``transform`` may rewrite a record's document (the sanitised
    copy)."""
    chunk = BulkChunk()
    seen: dict[str, int] = {}
    seq = seq_start
    for item in batch:
        if isinstance(item, Metadata):
            encoded = _encode(item)
            doc_id = record_id(encoded, item.datetime)
            count = seen.get(doc_id, 0)
            seen[doc_id] = count + 1
            if count:
                doc_id = f"{doc_id}-{count}"
            if transform is not None:
                encoded = transform(item, encoded)
            encoded = without_nulls(encoded)
            extra = b',"seq":' + str(seq).encode()
            if data_stream:
                extra += b',"@timestamp":' + _encode(item.datetime)
            seq += 1
            target = index_for(index, item.datetime)
            action = b'{"create":{"_index":' + _encode(target) + b',"_id":"'
            lines = [action + doc_id.encode() + b'"}}\n', encoded[:-1] + extra + b"}\n"]
        elif isinstance(item, Span):
            doc_id = span_id_of(item)
            op = b"create" if is_open_span(item) else b"index"
            target = index_for(spans_index, item.start_time)
            action = b'{"' + op + b'":{"_index":' + _encode(target) + b',"_id":'
            lines = [action + _encode(doc_id) + b"}}\n", _encode(item) + b"\n"]
        else:
            raise TypeError(f"cannot index a {type(item).__name__}")
        size = len(lines[0]) + len(lines[1])
        if chunk.records and (len(chunk.records) >= max_docs or chunk.size + size > max_bytes):
            yield chunk
            chunk = BulkChunk()
        chunk.lines += lines
        chunk.records.append(item)
        chunk.ids.append(doc_id)
        chunk.size += size
    if chunk.records:
        yield chunk


def compress(body: bytes, level: int = 1) -> bytes:
    """A gzip body (level 1: most of the gain for a fraction of the time)."""
    return gzip_module.compress(body, compresslevel=level, mtime=0)


def sanitised_document(record: Metadata, encoded: bytes) -> bytes:
    """The copy of a record sent when the mapping refused it: its ``metadata`` as JSON
    text in ``metadata_text`` (nothing in it can conflict with a mapping any more)."""
    doc = msgspec.json.decode(encoded)
    doc["metadata_text"] = _encode(doc.pop("metadata", {}) or {}).decode()
    doc["metadata"] = {}
    return _encode(doc)


# ---------------------------------------------------------------------- bulk answers
class _ItemError(msgspec.Struct):
    type: str = ""
    reason: str | None = ""
    caused_by: dict[str, Any] | None = None


class _Item(msgspec.Struct):
    status: int = 0
    error: _ItemError | str | None = None


class _BulkAnswer(msgspec.Struct):
    errors: bool = False
    items: list[dict[str, _Item]] = msgspec.field(default_factory=list)


_bulk_answer = msgspec.json.Decoder(_BulkAnswer)


class _Errors(msgspec.Struct):
    errors: bool = False


_errors_only = msgspec.json.Decoder(_Errors)

#: Per-item errors of a document the mapping refuses (a sanitised copy may pass).
MAPPING_ERRORS = frozenset(
    {
        "mapper_parsing_exception",
        "document_parsing_exception",
        "illegal_argument_exception",
        "strict_dynamic_mapping_exception",
    }
)


@dataclass
class BulkOutcome:
    """What became of each document of a bulk request: written (or already there),
    to send again (429 and 5xx), refused by the mapping, or refused for another reason
    (with the service's reason)."""

    written: int = 0
    retry: list[Any] = field(default_factory=list)
    retry_reasons: list[str] = field(default_factory=list)
    malformed: list[tuple[Any, str]] = field(default_factory=list)
    refused: list[tuple[Any, str]] = field(default_factory=list)


def _reason(error: _ItemError | str | None, status: int) -> tuple[str, str]:
    if error is None:
        return "", f"HTTP {status}"
    if isinstance(error, str):
        return "", error
    text = f"{error.type}: {error.reason or ''}".strip()
    caused = error.caused_by or {}
    if caused.get("reason"):
        text += f" (caused by {caused.get('type')}: {caused['reason']})"
    return error.type, text


def read_bulk_answer(body: bytes, records: Sequence[Any]) -> BulkOutcome:
    """Sort the documents of a bulk request by their item results (the answer's
    ``items`` are in request order)."""
    outcome = BulkOutcome()
    if not _errors_only.decode(body).errors:
        outcome.written = len(records)
        return outcome
    answer = _bulk_answer.decode(body)
    if len(answer.items) != len(records):
        raise ValueError(f"bulk answer has {len(answer.items)} items for {len(records)} documents")
    for record, entry in zip(records, answer.items, strict=True):
        item = next(iter(entry.values()))
        status = item.status
        if 200 <= status < 300 or (status == 409 and _is_create(entry)):
            outcome.written += 1
            continue
        kind, reason = _reason(item.error, status)
        if status == 429 or status >= 500:
            outcome.retry.append(record)
            outcome.retry_reasons.append(reason)
        elif kind in MAPPING_ERRORS and isinstance(record, Metadata):
            outcome.malformed.append((record, reason))
        else:
            outcome.refused.append((record, f"HTTP {status} {reason}"))
    return outcome


def _is_create(entry: Mapping[str, Any]) -> bool:
    return "create" in entry


def auth_header(
    *,
    username: str | None = None,
    password: str | None = None,
    api_key: str | Iterable[str] | None = None,
    bearer_token: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """The ``Authorization`` header: an API key (``id:key``, an ``(id, key)`` pair or the
    encoded form), a bearer token, or basic auth; none without credentials."""
    if api_key:
        if not isinstance(api_key, str):
            api_key = ":".join(api_key)
        if ":" in api_key:
            api_key = base64.b64encode(api_key.encode()).decode("ascii")
        return (("Authorization", f"ApiKey {api_key}"),)
    if bearer_token:
        return (("Authorization", f"Bearer {bearer_token}"),)
    if username is not None or password is not None:
        pair = f"{username or ''}:{password or ''}".encode()
        return (("Authorization", "Basic " + base64.b64encode(pair).decode("ascii")),)
    return ()


__all__ = [
    "BulkChunk",
    "BulkOutcome",
    "DATE",
    "RECORD_PROPERTIES",
    "SPAN_PROPERTIES",
    "Template",
    "auth_header",
    "bulk_chunks",
    "compress",
    "date_of",
    "index_for",
    "index_pattern",
    "iter_bulk_chunks",
    "read_bulk_answer",
    "record_id",
    "without_nulls",
    "records_target",
    "sanitised_document",
    "templates",
    "time_micros",
]
