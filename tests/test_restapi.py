"""RestAPIHandler and the HTTP delivery layer (issue 8), against a local HTTP receiver
that checks every request against the service's documented format and can be told to
fail (connection refused, 500, 503 with Retry-After, 429, a slow answer, a 400, a
connection reset after the body was read, a hang)."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import run_python
from flowtrail import Metadata, get_trace, make_handler
from flowtrail.delivery import Delivery, DeliveryError, Request, parse_retry_after
from flowtrail.formats import services
from flowtrail.handlers import RestAPIHandler

SECRET = "sk-test-9f8e7d6c5b4a"


class _QuietServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (the hang and reset cases)


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that plays a log service.

    ``plan`` holds what to do with the next requests (``"ok"``, a status, ``(503, 1)``
    for a status with Retry-After, ``"reset"``, ``("slow", seconds)``, ``"hang"``);
    ``reject`` is a message text that makes a request answer 400. Accepted requests'
    entries are kept in ``entries`` (one per record); format violations in ``errors``."""

    def __init__(self, kind: str, port: int = 0, tls: tuple[str, str] | None = None) -> None:
        self.kind = kind
        self.tls = tls
        self.plan: deque[Any] = deque()
        self.reject: str | None = None
        self.entries: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.times: list[tuple[float, Any]] = []
        self.errors: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        path = {
            "datadog": "/api/v2/logs",
            "grafana": "/loki/api/v1/push",
            "generic": "/logs",
        }[self.kind]
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                receiver.handle(self)

            do_PUT = do_POST

        self.server = _QuietServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening: connections are refused until `start`."""
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ serving
    def handle(self, http: BaseHTTPRequestHandler) -> None:
        length = int(http.headers.get("Content-Length", "0"))
        raw = http.rfile.read(length)
        headers = {k.lower(): v for k, v in http.headers.items()}
        with self.lock:
            action = self.plan.popleft() if self.plan else "ok"
            self.times.append((time.monotonic(), action))
        if action == "hang":
            self.release.wait(60)
            action = 503
        if isinstance(action, tuple) and action[0] == "slow":
            time.sleep(action[1])
            action = "ok"
        if action == "reset":
            # The body was read; the connection dies without an answer.
            http.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            http.connection.close()
            http.close_connection = True
            return
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        if action == "ok" and self.reject and self.reject.encode() in body:
            action = 400
        if action != "ok":
            status, retry_after = action if isinstance(action, tuple) else (action, None)
            answer = json.dumps({"errors": [f"refused; your key {SECRET} is wrong"]}).encode()
            http.send_response(status)
            if retry_after is not None:
                http.send_header("Retry-After", str(retry_after))
            http.send_header("Content-Length", str(len(answer)))
            http.end_headers()
            http.wfile.write(answer)
            return
        with self.lock:
            self.requests.append((http.path, headers, raw))
            self.entries.extend(self.check(http.path, headers, raw, body))
        status = {"datadog": 202, "grafana": 204}.get(self.kind, 200)
        http.send_response(status)
        http.send_header("Content-Length", "0")
        http.end_headers()

    def fail(self, text: str) -> None:
        self.errors.append(text)

    def check(
        self, path: str, headers: dict[str, str], raw: bytes, body: bytes
    ) -> list[dict[str, Any]]:
        """The entries of a request, after checking it against the documented format."""
        if self.kind in ("datadog", "grafana") and headers.get("content-encoding") != "gzip":
            self.fail("not gzipped")
        if self.kind == "datadog":
            if path != "/api/v2/logs":
                self.fail(f"path {path}")
            if headers.get("content-type") != "application/json":
                self.fail("content type")
            if headers.get("dd-api-key") != SECRET:
                self.fail("DD-API-KEY")
            entries = json.loads(body)
            if not isinstance(entries, list) or not 1 <= len(entries) <= 1000:
                self.fail(f"{len(entries)} entries")
            if len(body) > 5_000_000:
                self.fail("payload over 5 MB")
            for entry in entries:
                if len(json.dumps(entry, separators=(",", ":")).encode()) > 1_000_000:
                    self.fail("entry over 1 MB")
                for key in ("ddsource", "service", "status", "message"):
                    if not isinstance(entry.get(key), str):
                        self.fail(f"{key} missing")
            return entries
        if self.kind == "grafana":
            if path != "/loki/api/v1/push":
                self.fail(f"path {path}")
            push = json.loads(body)
            out = []
            for stream in push["streams"]:
                labels = stream["stream"]
                if not set(labels) <= {"service", "environment", "level", "workflow"}:
                    self.fail(f"labels {sorted(labels)}")
                if not all(isinstance(v, str) for v in labels.values()):
                    self.fail("label values must be strings")
                stamps = []
                for value in stream["values"]:
                    if not isinstance(value[0], str) or not value[0].isdigit():
                        self.fail(f"timestamp {value[0]!r}")
                    stamps.append(int(value[0]))
                    if len(value) == 3:
                        meta = value[2]
                        if not all(isinstance(v, str) for v in meta.values()):
                            self.fail("structured metadata values must be strings")
                        out.append({**labels, **meta, "message": value[1], "ts": value[0]})
                    else:
                        line = value[1]
                        try:
                            fields = json.loads(line)
                        except ValueError:
                            fields = {"line": line}
                        out.append({**labels, **fields, "ts": value[0]})
                if stamps != sorted(stamps):
                    self.fail("entries out of order in a stream")
            return out
        if headers.get("content-type") == "application/x-ndjson":
            return [json.loads(line) for line in body.decode().splitlines() if line]
        return json.loads(body)

    def messages(self) -> list[str]:
        return [entry.get("message", entry.get("line")) for entry in self.entries]


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(kind: str, tls: tuple[str, str] | None = None) -> Receiver:
        receiver = Receiver(kind, tls=tls)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.release.set()
        try:
            receiver.stop()
        except Exception:
            pass


def spooled_lines(spool: Path) -> list[dict[str, Any]]:
    lines = []
    for path in spool.rglob("*"):
        if path.is_file() and ".jsonl" in path.name and not path.name.endswith(".why"):
            lines += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return lines


def handler_for(receiver: Receiver, tmp_path: Path, **options: Any) -> RestAPIHandler:
    settings = {
        "type": "restapi",
        "service_type": receiver.kind,
        "api_url": receiver.url,
        "api_key": SECRET,
        "flush_interval": 0.05,
        "spool_dir": str(tmp_path / "spool"),
        **options,
    }
    handler = make_handler(settings)
    assert isinstance(handler, RestAPIHandler)
    return handler


def log_records(handler: RestAPIHandler, count: int, run_id: str = "run-1", **extras: Any):
    trace = get_trace(run_id, handlers=[handler], extras=extras)
    messages = [f"message {i}" for i in range(count)]
    for message in messages:
        trace.info(message)
    return trace, messages


# ---------------------------------------------------------------------- formats, live
def test_datadog_requests_follow_the_intake_v2_format(receivers, tmp_path):
    receiver = receivers("datadog")
    handler = handler_for(receiver, tmp_path)
    trace = get_trace(
        "dd-run",
        handlers=[handler],
        extras={
            "workflow_name": "etl",
            "job_name": "extract",
            "stage_name": "read",
            "environment": "production",
            "tags": ["team:data"],
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331",
        },
    )
    trace.info("hello")
    trace.warning("careful")
    trace.error("broken")
    assert trace.flush(10)
    assert receiver.errors == []
    by_message = {entry["message"]: entry for entry in receiver.entries}
    assert sorted(by_message) == ["broken", "careful", "hello"]
    entry = by_message["careful"]
    assert entry["status"] == "warning" and by_message["broken"]["status"] == "error"
    assert entry["ddsource"] == "flowtrail" and entry["service"] == "flowtrail"
    tags = entry["ddtags"].split(",")
    assert {"env:production", "workflow:etl", "job:extract", "stage:read", "team:data"} <= set(tags)
    assert entry["dd.trace_id"] == str(int("8448eb211c80319c", 16))
    assert entry["dd.span_id"] == str(int("b7ad6b7169203331", 16))
    assert entry["run_id"] == "dd-run" and entry["date"]


def test_datadog_limits_split_and_truncate_never_drop():
    handler = RestAPIHandler(
        service_type="datadog", api_url="https://example.invalid/api/v2/logs", api_key=SECRET
    )
    many = [Metadata(run_id="r", message=f"m{i}") for i in range(2500)]
    requests = handler.format_payload(many)
    sizes = [len(json.loads(gzip.decompress(r.body))) for r in requests]
    assert sizes == [1000, 1000, 500]
    assert [m for r in requests for m in r.records] == many
    # 5 MB uncompressed per payload: 12 records of 600 kB make at least 2 requests.
    big = [Metadata(run_id="r", message="x" * 600_000) for _ in range(12)]
    bodies = [gzip.decompress(r.body) for r in handler.format_payload(big)]
    assert len(bodies) >= 2 and all(len(b) <= 5_000_000 for b in bodies)
    assert sum(len(json.loads(b)) for b in bodies) == 12
    # An entry over 1 MB is cut with a marker, never dropped.
    (huge,) = handler.format_payload([Metadata(run_id="r", message="é" * 900_000)])
    (entry,) = json.loads(gzip.decompress(huge.body))
    assert len(json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()) <= 1_000_000
    assert "truncated by flowtrail" in entry["message"] and entry["flowtrail.truncated"]
    assert entry["message"].startswith("éé")


def test_datadog_v1_url_and_env_fallbacks(monkeypatch):
    monkeypatch.setenv("DD_API_KEY", SECRET)
    monkeypatch.setenv("DD_SITE", "datadoghq.eu")
    handler = RestAPIHandler(service_type="datadog")
    (request,) = handler.format_payload([Metadata(run_id="r", message="m")])
    assert request.url == "https://http-intake.logs.datadoghq.eu/api/v2/logs"
    assert request.header("DD-API-KEY") == SECRET
    assert SECRET not in repr(handler) and SECRET not in repr(request)
    seed = RestAPIHandler(
        type="restapi",
        service_type="datadog",
        api_url="https://http-intake.logs.datadoghq.com/v1/input",
        api_key="your-datadog-api-key",
        timeout=10.0,
        max_retries=3,
    )
    (v1,) = seed._format_for_service(Metadata(run_id="r", message="m"))
    assert v1.url.endswith("/v1/input") and v1.header("DD-API-KEY") == "your-datadog-api-key"


def test_loki_streams_labels_order_and_tenant(receivers, tmp_path):
    receiver = receivers("grafana")
    handler = handler_for(receiver, tmp_path, org_id="team-a", service="pipelines")
    trace = get_trace(
        "loki-run-1", handlers=[handler], extras={"workflow_name": "ml", "environment": "stg"}
    )
    for i in range(30):
        (trace.info if i % 3 else trace.error)(f"m{i}")
    assert trace.flush(10)
    assert receiver.errors == []
    (_, headers, _) = receiver.requests[0]
    assert headers["x-scope-orgid"] == "team-a"
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert sorted(receiver.messages(), key=lambda m: int(m[1:])) == [f"m{i}" for i in range(30)]
    labels = {(e["service"], e["environment"], e["level"], e["workflow"]) for e in receiver.entries}
    assert labels == {("pipelines", "stg", "info", "ml"), ("pipelines", "stg", "error", "ml")}
    assert all(e["run_id"] == "loki-run-1" for e in receiver.entries)  # in the line only


def test_loki_structured_metadata_and_logfmt_are_pure_functions():
    records = [
        Metadata(run_id="r", message="late", datetime="2026-01-01T00:00:02+00:00"),
        Metadata(run_id="r", message="early", datetime="2026-01-01T00:00:01.5+00:00"),
    ]
    meta = RestAPIHandler(
        service_type="grafana", api_url="http://l/loki/api/v1/push", loki_fields="metadata"
    )
    (request,) = meta.format_payload(records)
    push = json.loads(gzip.decompress(request.body))
    (stream,) = push["streams"]
    assert stream["stream"] == {"service": "flowtrail", "level": "info"}
    assert [v[1] for v in stream["values"]] == ["early", "late"]
    assert stream["values"][0][0] == "1767225601500000000"
    assert stream["values"][0][2]["run_id"] == "r"
    assert request.header("Authorization") is None  # no key, no auth header
    line = services.logfmt({"run_id": "r", "message": 'a "b" c', "n": 3})
    assert line == 'run_id=r message="a \\"b\\" c" n=3'


def test_generic_ndjson_basic_auth_headers_and_method(receivers, tmp_path):
    receiver = receivers("generic")
    handler = handler_for(
        receiver,
        tmp_path,
        body_format="ndjson",
        auth="basic",
        username="svc",
        password="pw-123456",
        method="PUT",
        gzip=True,
        headers={"X-Team": "data"},
    )
    trace, messages = log_records(handler, 120)
    assert trace.flush(10)
    assert receiver.errors == []
    assert sorted(receiver.messages()) == sorted(messages)
    _, headers, _ = receiver.requests[0]
    assert headers["content-type"] == "application/x-ndjson"
    assert headers["x-team"] == "data" and headers["content-encoding"] == "gzip"
    assert headers["authorization"].startswith("Basic ")
    assert "pw-123456" not in repr(handler)


# ---------------------------------------------------------------------- delivery
def test_delivery_classifies_answers(receivers):
    receiver = receivers("generic")
    delivery = Delivery(timeout=2.0, secrets=[SECRET])
    request = Request("POST", receiver.url, (("Content-Type", "application/json"),), b"[]")
    assert delivery.send(request).status == 200
    for action, retryable in ((500, True), (429, True), (408, True), (400, False), (403, False)):
        receiver.plan.append(action)
        with pytest.raises(DeliveryError) as info:
            delivery.send(request)
        assert info.value.retryable is retryable and info.value.status == action
        assert SECRET not in str(info.value) and "refused" in str(info.value)
    receiver.plan.append((503, 7))
    with pytest.raises(DeliveryError) as info:
        delivery.send(request)
    assert info.value.retry_after == 7.0
    receiver.plan.append("reset")
    with pytest.raises(DeliveryError) as info:
        delivery.send(request)
    assert info.value.retryable and info.value.status is None
    receiver.stop()
    with pytest.raises(DeliveryError) as info:
        delivery.send(request)
    assert info.value.retryable
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    delivery.close()
    assert delivery.session is None


def test_failures_are_retried_and_every_record_arrives_once(receivers, tmp_path):
    receiver = receivers("datadog")
    receiver.plan.extend([500, (503, 1), 429, "reset", ("slow", 0.5)])
    handler = handler_for(receiver, tmp_path, max_retries=10, buffer_size=1000)
    trace, messages = log_records(handler, 300)
    assert trace.flush(30)
    assert receiver.errors == []
    assert sorted(receiver.messages()) == sorted(messages)  # each exactly once
    (stats,) = [p.stats for p in trace.pipelines()]
    assert stats.retries >= 4 and stats.spooled == 0
    # Retry-After: the request after the 503 came at least a second later.
    times = [t for t, _ in receiver.times]
    after_503 = [a for _, a in receiver.times].index((503, 1))
    assert times[after_503 + 1] - times[after_503] >= 0.9


def test_a_refused_record_is_isolated_and_set_aside_with_its_reason(receivers, tmp_path, capfd):
    receiver = receivers("generic")
    receiver.reject = "POISON"
    handler = handler_for(receiver, tmp_path, buffer_size=100)
    trace = get_trace("run-400", handlers=[handler])
    for i in range(64):
        trace.info("POISON" if i == 17 else f"ok {i}")
    assert trace.flush(30)
    delivered = receiver.messages()
    assert sorted(delivered) == sorted(f"ok {i}" for i in range(64) if i != 17)
    (left,) = spooled_lines(tmp_path / "spool")
    assert left["message"] == "POISON"
    err = capfd.readouterr().err
    assert "HTTP 400" in err and "refused" in err and SECRET not in err


def test_outage_then_back_every_record_exactly_once(receivers, tmp_path):
    receiver = receivers("grafana")
    handler = handler_for(receiver, tmp_path, max_retries=50, retry_deadline=60.0)
    trace = get_trace("outage", handlers=[handler])
    receiver.stop()
    sent = []
    for i in range(500):
        trace.info(f"during {i}")
        sent.append(f"during {i}")
    time.sleep(1.5)
    receiver.start()
    for i in range(500):
        trace.info(f"after {i}")
        sent.append(f"after {i}")
    assert trace.flush(30)
    assert receiver.errors == []
    got = receiver.messages()
    assert len(got) == len(sent) and sorted(got) == sorted(sent)


_CHILD = """
import json, sys, time
from flowtrail import FileHandler, get_trace, make_handler
url, spool, mode = sys.argv[1], sys.argv[2], sys.argv[3]
def timed(handler):
    trace = get_trace("caller-cost", handlers=[handler])
    start = time.perf_counter()
    for i in range(10_000):
        trace.info(f"record {i}")
    return trace, time.perf_counter() - start
report = {}
if mode == "hang":
    _, report["file"] = timed(FileHandler(path="file-store"))
handler = make_handler({"type": "restapi", "service_type": "generic", "api_url": url,
    "api_key": "SECRET_KEY", "spool_dir": spool, "timeout": 30.0, "close_timeout": 2.0})
trace, report["rest"] = timed(handler)
start = time.perf_counter()
handler.close()
report["close"] = time.perf_counter() - start
import flowtrail.pipeline as p
p.set_exit_timeout(1.0)
print(json.dumps(report))
""".replace("SECRET_KEY", SECRET)


def test_caller_never_waits_on_a_hung_service_and_close_spools(receivers, tmp_path):
    receiver = receivers("generic")
    receiver.plan.extend(["hang"] * 50)
    spool = tmp_path / "spool"
    code = _CHILD.replace("sys.argv[1], sys.argv[2], sys.argv[3]", "URL, SPOOL, 'hang'")
    code = code.replace("URL", repr(receiver.url)).replace("SPOOL", repr(str(spool)))
    start = time.monotonic()
    result = run_python(code, tmp_path, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print("caller cost (s per 10,000 calls) and close time:", report)
    # No call waited on the network: the remote handler costs about what the file
    # store costs (generous bound), and close() kept its 2 s deadline.
    assert report["rest"] < 3 * report["file"] + 1.0, report
    assert report["close"] < 8.0, report
    assert elapsed < 40
    assert receiver.entries == []
    lines = spooled_lines(spool)
    assert sorted(line["message"] for line in lines) == sorted(f"record {i}" for i in range(10_000))
    for path in spool.rglob("*"):
        assert SECRET not in str(path)
    assert SECRET not in result.stderr
    # The next process sending to the same destination delivers the spool, once.
    receiver.plan.clear()
    receiver.release.set()
    replay = f"""
from flowtrail import get_trace, make_handler
h = make_handler({{"type": "restapi", "service_type": "generic", "api_url": {receiver.url!r},
    "api_key": "other-key-now", "spool_dir": {str(spool)!r}, "timeout": 5.0}})
t = get_trace("replayer", handlers=[h])
t.info("new record")
assert t.flush(30)
import time; time.sleep(0.5)
assert t.flush(30)
"""
    result = run_python(replay, tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    got = sorted(receiver.messages())
    assert got == sorted([*(f"record {i}" for i in range(10_000)), "new record"])
    assert spooled_lines(spool) == []


# ---------------------------------------------------------------------- seed forms, secrets
def test_seed_direct_logging_form_and_debugging_forms(receivers, tmp_path):
    receiver = receivers("generic")
    handler = RestAPIHandler(
        run_id="direct-123",
        api_url=receiver.url,
        service_type="generic",
        buffer_size=50,
        timeout=10.0,
        max_retries=3,
        spool_dir=str(tmp_path / "spool"),
        extras={"workflow_name": "direct-test", "stage_name": "s", "job_name": "j"},
    )
    logger = logging.getLogger("direct-test")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        logger.info("Direct handler test")
        logger.error("Error message")
        assert isinstance(handler.log_buffer, list)
        assert handler.session is not None
        assert handler.flush() is True
        assert handler.log_buffer == []
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert handler.session is None
    assert sorted(receiver.messages()) == ["Direct handler test", "Error message"]
    assert {e["run_id"] for e in receiver.entries} == {"direct-123"}
    assert {e["workflow_name"] for e in receiver.entries} == {"direct-test"}


def test_get_trace_trace_type_restapi_extras(receivers, tmp_path):
    receiver = receivers("datadog")
    extras = {
        "trace_type": "restapi",
        "api_url": receiver.url,
        "api_key": SECRET,
        "service_type": "datadog",
        "workflow_name": "data-processing-pipeline",
        "stage_name": "data-validation",
        "job_name": "validate-customer-data",
        "trace_id": "trace-123",
        "span_id": "span-456",
        "user_id": "user-123",
        "tenant_id": "tenant-456",
        "environment": "production",
        "tags": ["service:workflow", "team:data-engineering"],
        "spool_dir": str(tmp_path / "spool"),
    }
    trace = get_trace(run_id="workflow-123", parent_run_id="parent-456", extras=extras)
    trace.info("Starting workflow")
    trace.debug("Processing data")
    assert trace.close()
    assert receiver.errors == []
    assert sorted(receiver.messages()) == ["Processing data", "Starting workflow"]
    entry = receiver.entries[0]
    assert entry["dd.trace_id"] == "trace-123" and entry["tenant_id"] == "tenant-456"
    assert "team:data-engineering" in entry["ddtags"]


def test_secrets_stay_out_of_repr_errors_and_spool_names(tmp_path):
    handler = RestAPIHandler(
        service_type="generic",
        api_url=f"https://user:{SECRET}@logs.example.com/in?token={SECRET}",
        api_key=SECRET,
        headers={"Authorization": f"Bearer {SECRET}"},
        password=SECRET,
    )
    for text in (
        repr(handler),
        handler.spool_name(),
        handler.describe(),
        str(handler.destination()),
    ):
        assert SECRET not in text, text
    (request,) = handler.format_payload([Metadata(run_id="r")])
    assert SECRET not in repr(request)
    with pytest.raises(Exception) as info:
        RestAPIHandler(service_type="generic", api_url="ftp://x", api_key=SECRET)
    assert SECRET not in str(info.value)
    with pytest.raises(Exception) as info:
        RestAPIHandler(service_type="generic", api_url="https://x", password=SECRET, timeout=-1)
    assert SECRET not in str(info.value)


def test_partial_delivery_resends_only_the_failed_requests(receivers, tmp_path):
    receiver = receivers("datadog")
    # One batch of 2,500 records is three requests; the second fails once.
    receiver.plan.extend(["ok", 500])
    handler = handler_for(receiver, tmp_path, buffer_size=2500, flush_interval=5.0)
    trace, messages = log_records(handler, 2500)
    assert trace.flush(30)
    assert sorted(receiver.messages()) == sorted(messages)
    assert len(receiver.requests) == 3  # the first once, then the two it had not delivered
    assert [a for _, a in receiver.times].count(500) == 1


def test_seed_restapi_trace_class_sync_and_async(receivers, tmp_path):
    import asyncio
    from urllib.parse import urlparse

    from flowtrail import RestAPITrace

    receiver = receivers("generic")
    trace = RestAPITrace(
        url=urlparse(receiver.url),
        run_id="rest-trace-1",
        parent_run_id="parent",
        extras={"service_type": "generic", "spool_dir": str(tmp_path / "spool")},
    )
    trace.info("sync info")
    trace.warning("sync warning")

    async def run() -> None:
        await trace.ainfo("async info")
        await trace.aerror("async error")

    asyncio.run(run())
    assert trace.close()
    assert sorted(receiver.messages()) == ["async error", "async info", "sync info", "sync warning"]
    assert {e["parent_run_id"] for e in receiver.entries} == {"parent"}


def test_tls_is_verified_by_default_and_ca_certs_trusts_a_private_ca(receivers, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    receiver = receivers("generic", tls=(str(cert), str(key)))
    request = Request("POST", receiver.url, (("Content-Type", "application/json"),), b"[]")
    with pytest.raises(DeliveryError) as info:
        Delivery(timeout=5.0).send(request)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) or "certificate" in str(info.value)
    assert Delivery(timeout=5.0, ca_certs=str(cert)).send(request).status == 200
    assert Delivery(timeout=5.0, verify_certs=False).send(request).status == 200
    handler = handler_for(receiver, tmp_path, ca_certs=str(cert))
    trace, messages = log_records(handler, 10)
    assert trace.flush(10)
    assert sorted(receiver.messages()) == sorted(messages)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_killed_process_leaves_its_records_to_the_next_one(receivers, tmp_path, signal_name):
    """SIGTERM with the service hanging: the queued and in-flight records are spooled
    within exit_timeout. SIGKILL: what was spooled before it (the service refused
    connections) survives. Either way the next process delivers every record once."""
    receiver = receivers("datadog")
    spool = tmp_path / "spool"
    if signal_name == "SIGTERM":
        receiver.plan.extend(["hang"] * 20)
    else:
        receiver.stop()
    child = f"""
import os, signal, time
from flowtrail import get_trace, make_handler
h = make_handler({{"type": "restapi", "service_type": "datadog", "api_url": {receiver.url!r},
    "api_key": {SECRET!r}, "spool_dir": {str(spool)!r}, "timeout": 30.0,
    "retry_deadline": 0.5, "flush_interval": 0.05}})
t = get_trace("killed", handlers=[h], exit_timeout=1.0)
for i in range(1000):
    t.info(f"record {{i}}")
if {signal_name!r} == "SIGKILL":
    assert t.flush(20)
else:
    time.sleep(0.3)  # a batch is in flight, the rest queued
os.kill(os.getpid(), signal.{signal_name})
time.sleep(30)
"""
    result = run_python(child, tmp_path, timeout=60)
    assert result.returncode == (-15 if signal_name == "SIGTERM" else -9), result.stderr
    assert receiver.entries == []
    assert len(spooled_lines(spool)) == 1000
    if signal_name == "SIGKILL":
        receiver.start()
    receiver.plan.clear()
    receiver.release.set()
    replay = f"""
from flowtrail import get_trace, make_handler
h = make_handler({{"type": "restapi", "service_type": "datadog", "api_url": {receiver.url!r},
    "api_key": {SECRET!r}, "spool_dir": {str(spool)!r}}})
t = get_trace("next", handlers=[h])
t.info("next")
assert t.flush(30)
"""
    result = run_python(replay, tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert receiver.errors == []
    assert sorted(receiver.messages()) == sorted(["next", *(f"record {i}" for i in range(1000))])


def test_outage_memory_stays_bounded_and_spilled_records_arrive_once(receivers, tmp_path):
    """A long outage: the queue holds at most ``queue_size`` records; the rest spill to
    the spool (memory stays bounded) and are all delivered, once, when the service is
    back."""
    receiver = receivers("generic")
    handler = handler_for(receiver, tmp_path, queue_size=200, retry_deadline=0.2, max_retries=1)
    trace = get_trace("long-outage", handlers=[handler])
    (pipeline,) = trace.pipelines()
    receiver.stop()
    sent = [f"r{i}" for i in range(5000)]
    most_waiting = 0
    for i, message in enumerate(sent):
        trace.info(message)
        if i % 100 == 0:
            most_waiting = max(most_waiting, pipeline.pending())
    assert trace.flush(30)
    assert most_waiting <= 200
    assert pipeline.stats.spooled == 5000 and receiver.entries == []
    receiver.start()
    trace.info("back")
    deadline = time.monotonic() + 30
    while len(receiver.entries) < 5001 and time.monotonic() < deadline:
        pipeline._next_replay = 0.0  # replay now rather than after replay_interval
        trace.flush(5)
        time.sleep(0.1)
    got = receiver.messages()
    assert len(got) == 5001 and sorted(got) == sorted([*sent, "back"])


def test_spans_travel_as_entries_with_their_ids(receivers, tmp_path):
    receiver = receivers("datadog")
    handler = handler_for(receiver, tmp_path)
    trace = get_trace("span-run", handlers=[handler], extras={"workflow_name": "wf"})
    with trace.span("stage", name="validate"):
        trace.info("inside")
    assert trace.flush(10)
    assert receiver.errors == []
    by_message = {e["message"]: e for e in receiver.entries}
    inside = by_message["inside"]
    (span,) = [e for m, e in by_message.items() if m.startswith("span stage 'validate' ok")]
    assert span["span_name"] == "validate" and span["dd.span_id"] == inside["dd.span_id"]
    assert span["dd.trace_id"] == inside["dd.trace_id"]


def test_a_forked_child_sends_on_its_own_connections(receivers, tmp_path):
    receiver = receivers("generic")
    code = f"""
import os
from flowtrail import get_trace, make_handler
h = make_handler({{"type": "restapi", "service_type": "generic", "api_url": {receiver.url!r},
    "spool_dir": {str(tmp_path / "spool")!r}, "flush_interval": 0.05}})
t = get_trace("forked", handlers=[h])
t.info("parent before")
assert t.flush(10)
pid = os.fork()
if pid == 0:
    t.info("child")
    ok = t.flush(10)
    os._exit(0 if ok else 3)
t.info("parent after")
assert t.flush(10)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
"""
    result = run_python(code, tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(receiver.messages()) == ["child", "parent after", "parent before"]
