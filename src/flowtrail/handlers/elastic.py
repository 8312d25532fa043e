"""Elasticsearch and OpenSearch (seed 002): bulk indexing over plain HTTP, index
templates, several hosts with fail-over, and reading back (`ElasticReader`).

An `ElasticHandler` is the ``_bulk`` format (`flowtrail.formats.bulk`, pure) plus the
shared delivery (`flowtrail.delivery`). Plain HTTP, not an official client, so that
Elasticsearch 7, 8, 9 and OpenSearch 1-3 all work. Records go through the handler's
pipeline: the caller only appends to a queue; the worker sends a batch when
``buffer_size`` records wait (or every ``flush_interval``), in ``_bulk`` requests of at
most ``bulk_docs`` documents and ``bulk_bytes`` bytes (gzip), never with ``refresh=true``.

- The index templates (records and spans, seed 002's mapping) are put once per process
  and destination, on the first batch (never on every flush). An existing index whose
  mapping conflicts with the template is reported once on stderr, naming the field.
- Per-item results decide what happens to each document: written (a 409 of ``create``
  means it is already there: a replay never duplicates), sent again (429 and 5xx only,
  via `PartialExport`), sent again once as a sanitised copy when the mapping refuses it
  (its metadata as JSON text), else refused: set aside at once as a dead letter with the
  cluster's reason (``PartialExport.refused``), never sent again. When the cluster
  refuses every document of a batch the pipeline's isolation and spool decide (the
  fault may be the cluster's: a write block).
- Hosts are used in turn; a host that cannot be reached (or answers 502/503/504) is
  left out for ``dead_node_backoff`` seconds (doubling while it stays down, up to ten
  times that) and the request goes to the next one at once. When every host is down
  the batch fails as retryable: the pipeline retries, then spools it for a replay.
- Credentials: ``username``/``password`` (or in the host URL), ``api_key`` (``id:key``,
  ``[id, key]`` or the encoded key) or ``bearer_token``. TLS is verified by default
  (``verify_certs``, ``ca_certs``). Secrets never appear in repr, errors, spool names or
  ``destination.json``.

Seed forms: ``ElasticHandler(type="elastic", hosts=[...], username=..., password=...,
index=..., timeout=..., max_retries=...)``; the direct ``logging`` form
``ElasticsearchHandler(run_id=..., es_hosts=..., index_name=..., buffer_size=...,
flush_interval=...)``; ``handler.log_buffer``, ``handler.flush()`` and ``handler.client``
(the official ``elasticsearch`` client, or ``opensearch-py`` for an OpenSearch cluster,
when installed: the ``[elasticsearch]`` extra).
"""

from __future__ import annotations

import builtins
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec

from flowtrail.delivery import Delivery, DeliveryError, Request, Response
from flowtrail.formats import bulk
from flowtrail.handlers.base import BaseHandler, HandlerConfig, PipelineConfig
from flowtrail.handlers.elastic_reader import ElasticReader
from flowtrail.pipeline import PartialExport
from flowtrail.records import Metadata

#: What became of a ``_bulk`` request: its items' results, or why it was not written.
Outcome = bulk.BulkOutcome | DeliveryError
#: Statuses of a node that is going away or overloaded as a whole: try another node.
_NODE_DOWN = frozenset({502, 503, 504})
#: The extra that installs the official clients behind ``handler.client``.
CLIENT_HINT = (
    "handler.client needs the official client: pip install 'flowtrail[elasticsearch]' "
    "(elasticsearch, or opensearch-py for OpenSearch); flowtrail's own writes do not"
)


#: Environment variables a store URL's credentials come from when it has none (flowtrail's
#: first, then the names the seed and the official images use).
CREDENTIAL_VARIABLES = {
    "username": ("FLOWTRAIL_ES_USERNAME", "ES_USERNAME", "ELASTIC_USERNAME"),
    "password": ("FLOWTRAIL_ES_PASSWORD", "ES_PASSWORD", "ELASTIC_PASSWORD"),
    "api_key": ("FLOWTRAIL_ES_API_KEY", "ES_API_KEY", "ELASTIC_API_KEY"),
    "bearer_token": ("FLOWTRAIL_ES_BEARER_TOKEN",),
}
_URL_SCHEMES = ("elasticsearch+", "es+", "opensearch+")


class ElasticConfig(PipelineConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of `ElasticHandler` (defaults as seed 002's table)."""

    #: One URL or several (``http://es-node1:9200``); a URL may carry user:password.
    hosts: list[str] | str = "http://localhost:9200"
    #: The records index; ``{date}`` puts each record's date in (``workflow-traces-{date}``).
    index: str = "workflow-traces"
    #: The spans index (default: the records index + ``-spans``).
    spans_index: str | None = None
    username: str | None = None
    password: str | None = None
    #: An API key: ``id:key``, ``[id, key]`` or the encoded form.
    api_key: str | list[str] | None = None
    bearer_token: str | None = None
    buffer_size: Annotated[int, msgspec.Meta(gt=0)] | None = 100
    flush_interval: Annotated[float, msgspec.Meta(ge=0.001)] = 2.0
    #: Read timeout of a request, seconds.
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 3
    #: Documents of one ``_bulk`` request at most (or ``buffer_size`` if larger): a
    #: backlog goes in requests this large, whatever ``buffer_size`` says about when to
    #: send.
    bulk_docs: Annotated[int, msgspec.Meta(gt=0)] = 1000
    #: Bytes of one ``_bulk`` body (uncompressed) at most.
    bulk_bytes: Annotated[int, msgspec.Meta(gt=0)] = 5 * 1024 * 1024
    #: ``_bulk`` requests of one batch in flight at once (a backlog is indexed on several
    #: of the cluster's threads).
    concurrent_requests: Annotated[int, msgspec.Meta(gt=0)] = 2
    gzip: bool = True
    verify_certs: bool = True
    ca_certs: str | None = None
    #: Seconds a node that could not be reached is left out (doubling while it stays down).
    dead_node_backoff: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    #: Put the index templates (off: the cluster's administrator manages them).
    manage_templates: bool = True
    #: Write records to a data stream named ``index`` (clusters that have them).
    data_stream: bool = False
    number_of_shards: Annotated[int, msgspec.Meta(gt=0)] = 1
    number_of_replicas: Annotated[int, msgspec.Meta(ge=0)] = 0
    refresh_interval: str = "1s"
    #: How long ``handler.close()`` waits for delivery before spooling what is left.
    close_timeout: Annotated[float, msgspec.Meta(ge=0)] = 5.0


# ---------------------------------------------------------------------- hosts
class HostPool:
    """Hosts used in turn; a dead one is skipped until its back-off has passed."""

    def __init__(self, hosts: Sequence[str], backoff: float) -> None:
        self.hosts = list(hosts)
        self.backoff = backoff
        self._next = 0
        self._dead_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def order(self) -> list[str]:
        """The hosts to try for one request: live ones from the next in turn, then the
        dead ones whose back-off ends soonest (a request is never refused for want of a
        host)."""
        now = time.monotonic()
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self.hosts)
            turn = self.hosts[start:] + self.hosts[:start]
            live = [h for h in turn if self._dead_until.get(h, 0.0) <= now]
            dead = sorted((h for h in turn if h not in live), key=self._dead_until.__getitem__)
        return live + dead

    def dead(self, host: str) -> None:
        with self._lock:
            failures = self._failures.get(host, 0) + 1
            self._failures[host] = failures
            wait = min(self.backoff * 2 ** (failures - 1), self.backoff * 10)
            self._dead_until[host] = time.monotonic() + wait

    def alive(self, host: str) -> None:
        if host in self._dead_until:
            with self._lock:
                self._dead_until.pop(host, None)
                self._failures.pop(host, None)

    def is_dead(self, host: str) -> bool:
        return self._dead_until.get(host, 0.0) > time.monotonic()


def split_host(url: str) -> tuple[str, str | None, str | None]:
    """``(url without credentials, user, password)``; ``host:port`` means http."""
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return clean, user, password


#: Destinations whose templates were put by this process: ``(pid, hosts, templates)``.
_templates_done: set[tuple[Any, ...]] = set()
_templates_lock = threading.Lock()
#: Mapping conflicts already reported (once per index and field).
_conflicts_reported: set[tuple[str, str]] = set()


class ElasticHandler(ElasticReader, BaseHandler):
    """Index records and spans into Elasticsearch or OpenSearch; see the module
    docstring."""

    type: ClassVar[str] = "elastic"
    Config: ClassVar[builtins.type[HandlerConfig]] = ElasticConfig
    secret_keys: ClassVar[frozenset[str]] = frozenset({"password", "api_key", "bearer_token"})
    accepted: ClassVar[dict[str, str]] = {
        "hosts": "a URL or a list of URLs (http://host:9200)",
        "index": "an index name (may hold {date})",
        "spans_index": "an index name (may hold {date})",
        "api_key": "'id:key', [id, key] or the encoded key",
        "bulk_bytes": "a positive number of bytes",
        "bulk_docs": "a positive integer",
        "concurrent_requests": "a positive integer",
        "dead_node_backoff": "a number of seconds >= 0",
        "connect_timeout": "a positive number of seconds",
        "close_timeout": "a number of seconds >= 0",
        "number_of_shards": "a positive integer",
        "number_of_replicas": "an integer >= 0",
    }

    config: ElasticConfig

    #: A backlog is sent in requests of ``bulk_docs`` documents, not ``buffer_size`` ones
    #: (each request costs the cluster a translog sync).
    max_export_batch: ClassVar[int | None] = 10_000

    @classmethod
    def accepts_type(cls, name: str) -> bool:
        return str(name).lower() in ("elasticsearch", "es", "opensearch")

    @classmethod
    def check_config(cls, config: Any) -> None:
        super().check_config(config)
        hosts = cls.host_list(config)
        if not hosts:
            raise cls.option_error("hosts", config.hosts, "no host given")
        for host in hosts:
            parts = urlsplit(host if "://" in host else f"http://{host}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise cls.option_error("hosts", host, "not an http:// or https:// URL")
        https = any(h.strip().lower().startswith("https:") for h in hosts)
        if https and config.ca_certs and not os.path.isfile(config.ca_certs):
            raise cls.option_error("ca_certs", config.ca_certs, "no such file")
        for key in ("index", "spans_index"):
            name = getattr(config, key)
            if name is None:
                continue
            bad = set(name.replace(bulk.DATE, "")) & set(' "*\\<|,>/?#:')
            if not name or name != name.lower() or bad or name.startswith(("-", "_", "+")):
                raise cls.option_error(
                    key, name, 'not a valid index name (lowercase, no spaces or \\/*?"<>|,#:)'
                )

    @staticmethod
    def host_list(config: ElasticConfig) -> list[str]:
        hosts = config.hosts
        if isinstance(hosts, str):
            hosts = [h for h in hosts.replace(";", ",").split(",") if h.strip()]
        return [h.strip() for h in hosts]

    # ------------------------------------------------------------------ naming
    @property
    def urls(self) -> list[str]:
        """The hosts without credentials."""
        return [split_host(h)[0] for h in self.host_list(self.config)]

    @property
    def spans_index(self) -> str:
        config = self.config
        if config.spans_index:
            return config.spans_index
        return f"{config.index}-spans"

    def destination(self) -> tuple[str, ...]:
        return (self.type, ",".join(self.urls), self.config.index, self.spans_index)

    def describe(self) -> str:
        return f"'elastic' index {self.config.index} at {', '.join(self.urls)}"

    # ------------------------------------------------------------------ credentials
    def _credentials(self) -> tuple[str | None, str | None]:
        config = self.config
        user, password = config.username, config.password
        if user is None and password is None:
            for host in self.host_list(config):
                _, url_user, url_password = split_host(host)
                if url_user or url_password:
                    return url_user, url_password
        return user, password

    def _from_environment(self) -> dict[str, str]:
        """Credentials from `CREDENTIAL_VARIABLES` when none is configured (a handler
        rebuilt by ``flowtrail replay`` from ``destination.json``, which holds none)."""
        config = self.config
        given = (config.username, config.password, config.api_key, config.bearer_token)
        if any(v is not None for v in given) or any(self._credentials()):
            return {}
        found = {}
        for key, names in CREDENTIAL_VARIABLES.items():
            value = next((os.environ[n] for n in names if os.environ.get(n)), None)
            if value:
                found[key] = value
        return found

    def auth_headers(self) -> tuple[tuple[str, str], ...]:
        """The ``Authorization`` header of this handler's credentials (worked out once)."""
        headers = self.__dict__.get("_auth")
        if headers is None:
            headers = self.__dict__["_auth"] = self._auth_headers()
        return headers

    def _auth_headers(self) -> tuple[tuple[str, str], ...]:
        user, password = self._credentials()
        config = self.config
        env = self._from_environment()
        return bulk.auth_header(
            username=user or env.get("username"),
            password=password or env.get("password"),
            api_key=config.api_key or env.get("api_key"),
            bearer_token=config.bearer_token or env.get("bearer_token"),
        )

    def _secrets(self) -> tuple[str, ...]:
        config = self.config
        user, password = self._credentials()
        key = config.api_key
        keys = [key] if isinstance(key, str) else list(key or [])
        values = [password, config.bearer_token, *keys, *self._from_environment().values()]
        values += [value for _, value in self.auth_headers()]
        values += [value.split(" ", 1)[-1] for _, value in self.auth_headers()]
        return tuple(v for v in values if v)

    # ------------------------------------------------------------------ transport
    @property
    def delivery(self) -> Delivery:
        """This handler's HTTP delivery (its client is made on first use)."""
        delivery = self.__dict__.get("_delivery")
        if delivery is None:
            config = self.config
            delivery = self.__dict__["_delivery"] = Delivery(
                timeout=config.timeout,
                connect_timeout=config.connect_timeout,
                verify_certs=config.verify_certs,
                # A CA file matters to https hosts only (a seed example gives one with http).
                ca_certs=config.ca_certs if self._tls() else None,
                secrets=self._secrets(),
                max_connections=max(4, 2 * len(self.urls)),
            )
        return delivery

    def _tls(self) -> bool:
        return any(url.startswith("https:") for url in self.urls)

    @property
    def host_pool(self) -> HostPool:
        pool = self.__dict__.get("_pool")
        if pool is None:
            pool = self.__dict__["_pool"] = HostPool(self.urls, self.config.dead_node_backoff)
        return pool

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Any = b"",
        *,
        records: Sequence[Any] = (),
        gzip: bool = False,
        gzipped: bool = False,
    ) -> Response:
        """Send one request to the cluster: to the next host in turn, and at once to the
        next one when a host cannot be reached or answers 502/503/504 (that host is left
        out for a back-off). ``gzip`` compresses the body; ``gzipped``: it already is.
        Raises `DeliveryError`."""
        if not isinstance(body, bytes):
            body = msgspec.json.encode(body)
        headers = [("Content-Type", "application/json"), ("Accept", "application/json")]
        headers += self.auth_headers()
        if path.split("?")[0].endswith(("/_bulk", "/_msearch")):
            headers[0] = ("Content-Type", "application/x-ndjson")
        if gzip and body:
            body = bulk.compress(body)
            gzipped = True
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        pool = self.host_pool
        last: DeliveryError | None = None
        for host in pool.order():
            request = Request(method, host + path, tuple(headers), body, tuple(records))
            try:
                answer = self.delivery.send(request)
            except DeliveryError as exc:
                if exc.status is None or exc.status in _NODE_DOWN:
                    pool.dead(host)
                    last = exc
                    continue
                pool.alive(host)
                raise
            pool.alive(host)
            return answer
        assert last is not None
        raise last

    def request_json(self, method: str, path: str, body: Any = b"") -> Any:
        """`request`, the answer decoded from JSON."""
        answer = self.request(method, path, body)
        return msgspec.json.decode(answer.body) if answer.body else {}

    # ------------------------------------------------------------------ templates
    def ensure_templates(self) -> None:
        """Put the index templates once per process and destination (see the module
        docstring); check an existing fixed-name index for mapping conflicts."""
        config = self.config
        if not config.manage_templates:
            return
        items = bulk.templates(
            config.index,
            self.spans_index,
            shards=config.number_of_shards,
            replicas=config.number_of_replicas,
            refresh_interval=config.refresh_interval,
            data_stream=config.data_stream,
        )
        key = (os.getpid(), tuple(self.urls), msgspec.json.encode([t.composable() for t in items]))
        if key in _templates_done:
            return
        with _templates_lock:
            if key in _templates_done:
                return
            composable = self._composable_templates()
            for template in items:
                try:
                    if composable:
                        path, body = f"/_index_template/{template.name}", template.composable()
                    else:
                        path, body = f"/_template/{template.name}", template.legacy()
                    self.request("PUT", path, body)
                except DeliveryError as exc:
                    if exc.retryable:
                        raise
                    if template.data_stream:
                        raise DeliveryError(
                            f"{self.describe()}: data_stream=True, but this cluster has no "
                            f"data streams (they need Elasticsearch 7.9+ with its default "
                            f"distribution, or OpenSearch 1+): {exc}",
                            retryable=False,
                            status=exc.status,
                        ) from None
                    self._template_refused(template.name, exc)
            for index, properties in (
                (config.index, bulk.CHECKED_TYPES),
                (self.spans_index, {"span_id": "keyword", "start_ns": "long"}),
            ):
                if bulk.DATE not in index:
                    self._check_mapping(index, properties)
            _templates_done.add(key)

    def _template_refused(self, name: str, exc: DeliveryError) -> None:
        """A template the cluster refused (no privilege to manage templates, say):
        documents are still written, with the cluster's dynamic mapping. Told once."""
        message = (
            f"flowtrail: handler {self.describe()}: the cluster refused the index template "
            f"{name!r} ({exc}); records are written with its dynamic mapping. Put the "
            f"template as an administrator, or set manage_templates=False."
        )
        self.__dict__.setdefault("mapping_conflicts", []).append(message)
        if ("template", name) not in _conflicts_reported:
            _conflicts_reported.add(("template", name))
            try:
                sys.stderr.write(message + "\n")
            except Exception:
                pass

    def _composable_templates(self) -> bool:
        """Whether the cluster has ``_index_template`` (Elasticsearch 7.8+, OpenSearch)."""
        root = self.request_json("GET", "/")
        version = root.get("version", {}) if isinstance(root, dict) else {}
        if version.get("distribution") == "opensearch":
            return True
        try:
            major, minor = (int(x) for x in str(version.get("number", "8.0")).split(".")[:2])
        except ValueError:
            return True
        return (major, minor) >= (7, 8)

    def _check_mapping(self, index: str, expected: Mapping[str, str]) -> None:
        try:
            answer = self.request_json("GET", f"/{index}/_mapping")
        except DeliveryError as exc:
            if exc.status == 404:
                return  # made from the template on the first write
            raise
        for name, mapping in (answer if isinstance(answer, dict) else {}).items():
            if not isinstance(mapping, dict) or not isinstance(mapping.get("mappings"), dict):
                continue
            properties = mapping["mappings"].get("properties", {})
            for field, kind in expected.items():
                found = properties.get(field, {}).get(
                    "type", "object" if field in properties else None
                )
                if found is not None and found != kind:
                    self.report_conflict(name, field, found, kind)

    def report_conflict(self, index: str, field: str, found: str, expected: str) -> None:
        """Tell stderr once that an existing index maps a field otherwise than flowtrail."""
        message = (
            f"flowtrail: handler {self.describe()}: the existing index {index!r} maps field "
            f"{field!r} as {found!r}, flowtrail's template as {expected!r}; records are still "
            f"written, but reading by {field!r} may not work. Reindex, or use another index."
        )
        self.__dict__.setdefault("mapping_conflicts", []).append(message)
        if (index, field) in _conflicts_reported:
            return
        _conflicts_reported.add((index, field))
        try:
            sys.stderr.write(message + "\n")
        except Exception:
            pass

    # ------------------------------------------------------------------ worker side
    def format_payload(self, records: Any) -> list[Request]:
        """The ``_bulk`` requests a batch becomes (to the first host; not compressed).
        Pure: nothing is sent."""
        if isinstance(records, (Metadata, Mapping)) or not isinstance(records, Sequence):
            records = [records]
        batch = [
            msgspec.convert(dict(r), Metadata, strict=False) if isinstance(r, Mapping) else r
            for r in records
        ]
        headers = (("Content-Type", "application/x-ndjson"), *self.auth_headers())
        return [
            Request("POST", f"{self.urls[0]}/_bulk", headers, chunk.body(), tuple(chunk.records))
            for chunk in self._chunks(batch)
        ]

    def _chunks(self, batch: Sequence[Any], transform: Any = None) -> list[bulk.BulkChunk]:
        return list(self._iter_chunks(batch, transform))

    def _iter_chunks(self, batch: Sequence[Any], transform: Any = None) -> Iterator[bulk.BulkChunk]:
        config = self.config
        seq = time.time_ns()
        return bulk.iter_bulk_chunks(
            batch,
            index=config.index,
            spans_index=self.spans_index,
            seq_start=seq,
            max_docs=self._max_docs,
            max_bytes=config.bulk_bytes,
            data_stream=config.data_stream,
            transform=transform,
        )

    @property
    def _max_docs(self) -> int:
        config = self.config
        return max(config.buffer_size or config.batch_size, config.bulk_docs)

    def _send_chunk(self, chunk: bulk.BulkChunk) -> bulk.BulkOutcome:
        if chunk.gzipped is not None:
            answer = self.request(
                "POST", "/_bulk", chunk.gzipped, records=chunk.records, gzipped=True
            )
        else:
            answer = self.request(
                "POST", "/_bulk", chunk.body(), records=chunk.records, gzip=self.config.gzip
            )
        return bulk.read_bulk_answer(answer.body, chunk.records)

    def _send_all(self, batch: Sequence[Any]) -> list[tuple[bulk.BulkChunk, Outcome]]:
        """The chunks of a batch, each with its outcome or the error that kept it from
        being written. A batch of several chunks is sent on ``concurrent_requests``
        threads while the next chunks are made here: the cluster never waits for a body,
        and indexes that many requests at once. With one request at a time, the chunks
        after a retryable failure are not sent (they fail with it)."""
        if len(batch) <= self._max_docs:  # one chunk, mostly: no thread
            whole = self._chunks(batch)
            if len(whole) <= 1:
                return [(chunk, self._try_chunk(chunk)) for chunk in whole]
            made: Iterable[bulk.BulkChunk] = whole
        else:
            made = self._iter_chunks(batch)
        lanes = self.config.concurrent_requests
        todo: queue.Queue[int | None] = queue.Queue(maxsize=lanes)  # made ahead: `lanes`
        outcomes: dict[int, Outcome] = {}
        chunks: list[bulk.BulkChunk] = []

        def lane() -> None:
            failure: DeliveryError | None = None
            while (index := todo.get()) is not None:
                if failure is not None:
                    outcomes[index] = failure
                    continue
                outcome = outcomes[index] = self._try_chunk(chunks[index])
                if lanes == 1 and isinstance(outcome, DeliveryError) and outcome.retryable:
                    failure = outcome

        # Daemon threads for one export only: an exit never waits for them.
        threads = [
            threading.Thread(target=lane, name="flowtrail-elastic-bulk", daemon=True)
            for _ in range(lanes)
        ]
        for thread in threads:
            thread.start()
        try:
            for chunk in made:
                if self.config.gzip:  # here, not on the lane: its next request waits less
                    chunk.gzipped = bulk.compress(chunk.body())
                chunks.append(chunk)
                todo.put(len(chunks) - 1)
        finally:
            for _ in threads:
                todo.put(None)
            for thread in threads:
                thread.join()
        return [(chunk, outcomes[index]) for index, chunk in enumerate(chunks)]

    def _try_chunk(self, chunk: bulk.BulkChunk) -> Outcome:
        try:
            return self._send_chunk(chunk)
        except DeliveryError as exc:
            return exc
        except Exception as exc:  # never lose a chunk's records to a lane's error
            return DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True)

    def export(self, batch: Sequence[Any]) -> None:
        """Index the batch (see the module docstring). Raises `PartialExport` with the
        documents to send again or refused when part was written, `DeliveryError` when
        nothing was."""
        self.ensure_templates()
        retry: list[Any] = []
        refused: list[tuple[Any, str]] = []
        retry_reason = ""
        cause: DeliveryError | None = None
        for chunk, outcome in self._send_all(batch):
            if isinstance(outcome, DeliveryError):
                if outcome.retryable:
                    cause = outcome
                    retry.extend(chunk.records)
                else:
                    refused.extend((record, str(outcome)) for record in chunk.records)
                continue
            retry.extend(outcome.retry)
            if outcome.retry_reasons:
                retry_reason = outcome.retry_reasons[0]
            refused.extend(outcome.refused)
            if outcome.malformed:
                refused.extend(self._send_sanitised(outcome.malformed, retry))
        if not retry and not refused:
            return
        if len(refused) == len(batch):
            # The cluster took nothing: the fault may be its own or its configuration's
            # (a write block, a missing privilege); the pipeline gives the batch the spool's
            # second chance.
            reasons = sorted({reason for _, reason in refused})
            raise DeliveryError(
                f"{self.describe()} refused {len(refused)} document(s): " + "; ".join(reasons[:3]),
                retryable=False,
                status=400,
            )
        # Documents refused one by one are set aside with their reason at once; only the
        # 429/5xx ones are sent again.
        dead = [
            (record, DeliveryError(f"{self.describe()} refused it: {reason}", retryable=False))
            for record, reason in refused
        ]
        if retry and cause is None:
            cause = DeliveryError(
                f"{len(retry)} document(s) to send again: {retry_reason}",
                retryable=True,
                status=429,
            )
        if cause is None:
            cause = dead[0][1]
        if len(retry) == len(batch):
            raise cause
        raise PartialExport(retry, cause, refused=dead)

    def _send_sanitised(
        self, malformed: list[tuple[Any, str]], retry: list[Any]
    ) -> list[tuple[Any, str]]:
        """Send the records the mapping refused once more with their metadata as JSON
        text; the ones still refused, with the first reason."""
        reasons = {id(record): reason for record, reason in malformed}
        records = [record for record, _ in malformed]
        refused: list[tuple[Any, str]] = []
        for chunk in self._chunks(records, transform=bulk.sanitised_document):
            try:
                outcome = self._send_chunk(chunk)
            except DeliveryError as exc:
                if exc.retryable:
                    retry.extend(chunk.records)
                else:
                    refused.extend((r, reasons[id(r)]) for r in chunk.records)
                continue
            retry.extend(outcome.retry)
            refused.extend((r, reasons[id(r)]) for r, _ in outcome.refused + outcome.malformed)
            written = len(chunk.records) - len(outcome.retry) - len(outcome.refused)
            written -= len(outcome.malformed)
            if written:
                from flowtrail.pipeline import report_once

                report_once(
                    self.describe(),
                    ValueError(reasons[id(chunk.records[0])]),
                    written,
                    "they were written with their metadata as JSON text (metadata_text)",
                    outcome="sanitised",
                )
        return refused

    def retryable(self, exc: BaseException) -> bool:
        """Connection errors, timeouts, 408, 429 and 5xx may pass; a refusal will not
        (a 413, a body too large for the cluster, is refused: the pipeline then sends the
        batch in halves)."""
        if isinstance(exc, DeliveryError):
            return exc.retryable
        return isinstance(exc, OSError)

    def close_exporter(self) -> None:
        delivery = self.__dict__.get("_delivery")
        if delivery is not None:
            delivery.close()

    def after_fork(self) -> None:
        delivery = self.__dict__.get("_delivery")
        if delivery is not None:
            delivery.after_fork()
        self.__dict__.pop("_pool", None)

    # ------------------------------------------------------------------ seed debugging forms
    @property
    def client(self) -> Any:
        """The official client for this cluster (seed 002: ``handler.client.indices.
        exists(index=...)``): ``opensearchpy.OpenSearch`` for an OpenSearch cluster,
        else ``elasticsearch.Elasticsearch``, with this handler's hosts, credentials and
        TLS options. Made on first use; needs the ``[elasticsearch]`` extra."""
        client = self.__dict__.get("_official")
        if client is not None:
            return client
        try:
            root = self.request_json("GET", "/")
        except DeliveryError:
            root = {}
        version = root.get("version", {}) if isinstance(root, dict) else {}
        opensearch = version.get("distribution") == "opensearch"
        user, password = self._credentials()
        config = self.config
        options: dict[str, Any] = {
            "hosts": self.urls,
            "timeout": config.timeout,
            "verify_certs": config.verify_certs,
        }
        if config.ca_certs:
            options["ca_certs"] = config.ca_certs
        if config.api_key:
            key = config.api_key
            options["api_key"] = tuple(key) if isinstance(key, list) else key
        elif config.bearer_token:
            options["headers"] = {"Authorization": f"Bearer {config.bearer_token}"}
        elif user is not None or password is not None:
            options["http_auth"] = (user or "", password or "")
        try:
            if opensearch:
                from opensearchpy import OpenSearch

                if "api_key" in options:
                    key = bulk.auth_header(api_key=options.pop("api_key"))[0][1]
                    options["headers"] = {"Authorization": key}
                client = OpenSearch(**options)
            else:
                import elasticsearch

                if int(elasticsearch.__version__[0]) >= 8:
                    options["request_timeout"] = options.pop("timeout")
                    if "http_auth" in options:
                        options["basic_auth"] = options.pop("http_auth")
                client = elasticsearch.Elasticsearch(**options)
        except ImportError:
            raise ImportError(CLIENT_HINT) from None
        self.__dict__["_official"] = client
        return client

    @property
    def session(self) -> Any:
        """The HTTP client flowtrail sends with (None once the handler is closed)."""
        if self.__dict__.get("_closed"):
            return None
        return self.delivery.client

    def close(self) -> None:
        """Deliver what was handed in within ``close_timeout`` seconds (what is left is
        in the spool, re-sent later), then release the handler."""
        try:
            deadline = time.monotonic() + self.config.close_timeout
            for pipeline in self._own_pipelines():
                pipeline.close(max(0.0, deadline - time.monotonic()))
            self.close_exporter()
            official = self.__dict__.pop("_official", None)
            if official is not None:
                try:
                    official.close()
                except Exception:
                    pass
            self.__dict__["_closed"] = True
        finally:
            logging.Handler.close(self)


#: Seed 002's option names of the direct handler form.
_SEED_NAMES = {"es_hosts": "hosts", "index_name": "index"}


class ElasticsearchHandler(ElasticHandler):
    """Seed 002's direct form: ``ElasticsearchHandler(run_id=..., es_hosts=...,
    index_name=..., username=..., password=..., buffer_size=100, flush_interval=2.0,
    timeout=30.0, max_retries=3, extras={...})``, added to a stdlib logger."""

    def __init__(
        self,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        es_hosts: str | list[str] | None = None,
        index_name: str | None = None,
        extras: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if es_hosts is not None:
            options["hosts"] = es_hosts
        if index_name is not None:
            options["index"] = index_name
        super().__init__(run_id=run_id, parent_run_id=parent_run_id, extras=extras, **options)


def is_elastic_url(url: str) -> bool:
    """Whether ``url`` names an Elasticsearch store (``elasticsearch+http://...``)."""
    lowered = url.lower()
    return lowered.startswith(_URL_SCHEMES) or lowered.startswith(
        ("elasticsearch://", "opensearch://")
    )


def options_from_url(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Handler options of a store URL: ``elasticsearch+https://user:pass@host1:9200,
    host2:9200/index?spans_index=...&verify_certs=false&ca_certs=...``; the scheme may also
    be ``http(s)://`` or ``opensearch+...``. Credentials not in the URL come from
    `CREDENTIAL_VARIABLES`."""
    from urllib.parse import parse_qs

    environ = os.environ if environ is None else environ
    text = url.strip()
    lowered = text.lower()
    for prefix in _URL_SCHEMES:
        if lowered.startswith(prefix):
            text = text[len(prefix) :]
            break
    else:
        if lowered.startswith(("elasticsearch://", "opensearch://")):
            text = "http://" + text.split("://", 1)[1]
    scheme, _, rest = text.partition("://")
    if not rest:
        scheme, rest = "http", text
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, _, hosts_text = netloc.rpartition("@")
    options: dict[str, Any] = {}
    if credentials:
        user, _, password = credentials.partition(":")
        options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    options["hosts"] = [f"{scheme}://{host}" for host in hosts_text.split(",") if host]
    index = unquote(path.strip("/"))
    if index.endswith("*") and index.count("*") == 1:
        index = index[:-1] + bulk.DATE  # ``workflow-traces-*``: the dated indices
    if index:
        options["index"] = index
    for key, values in parse_qs(query).items():
        value: Any = values[-1]
        if key in ("verify_certs", "gzip", "manage_templates", "data_stream"):
            value = value.lower() not in ("0", "false", "no", "off")
        options[key] = value
    # Credentials the URL does not give: a password for its user, else any kind.
    wanted = () if "api_key" in options else ("password",) if "username" in options else None
    for key, names in CREDENTIAL_VARIABLES.items():
        if key in options or (wanted is not None and key not in wanted):
            continue
        for name in names:
            if environ.get(name):
                options[key] = environ[name]
                break
    return options


__all__ = [
    "CREDENTIAL_VARIABLES",
    "ElasticConfig",
    "ElasticHandler",
    "ElasticsearchHandler",
    "HostPool",
    "is_elastic_url",
    "options_from_url",
    "split_host",
]
