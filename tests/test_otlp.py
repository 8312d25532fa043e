"""OTLPHandler (issue 10): records and spans over OTLP/HTTP to a real receiver
(`oteltap`, which decodes OTLP/HTTP protobuf in-process, and re-emits each request to a
local server here so the resource can be checked too), the OTLP settings from options and
``OTEL_EXPORTER_OTLP_*`` variables, and the failure cases against a local receiver that
plays a collector (503 with Retry-After, 400, 500, partial success, gzip, JSON)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import run_python
from flowtrail import MemoryHandler, Metadata, OTLPHandler, Span, get_trace, make_handler
from flowtrail.config import ConfigError
from flowtrail.formats import otlp as fmt
from flowtrail.handlers.otlp import OTLPConfig, signal_settings

try:
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )
    from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings
except ImportError as exc:  # pragma: no cover - a setup problem, said loudly
    raise ImportError(
        f"{exc}: the OTLP tests need opentelemetry-proto and oteltap: "
        "pip install -e '.[test]' (or pip install opentelemetry-proto oteltap)"
    ) from None

SECRET = "otlp-key-4c3b2a1f0e9d"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _QuietServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class Collector:
    """A local HTTP server that plays an OTLP/HTTP collector: decodes every request
    (protobuf or JSON, gzip or not) and answers as ``plan`` says: ``"ok"``, a status,
    ``(503, "2")`` for a status with Retry-After, ``("partial", n, "why")`` for a
    partial success. Keeps ``requests`` as ``(path, headers, raw body, decoded dict)``."""

    def __init__(self, port: int = 0) -> None:
        self.plan: deque[Any] = deque()
        self.requests: list[tuple[str, dict[str, str], bytes, dict[str, Any]]] = []
        self.times: list[tuple[float, Any]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                collector.handle(self)

        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, http: BaseHTTPRequestHandler) -> None:
        raw = http.rfile.read(int(http.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in http.headers.items()}
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        json_body = headers.get("content-type") == "application/json"
        signal = "logs" if http.path.endswith("/v1/logs") else "traces"
        try:
            if json_body:
                decoded = json.loads(body)
            else:
                message = (
                    ExportLogsServiceRequest if signal == "logs" else ExportTraceServiceRequest
                )()
                message.ParseFromString(body)
                decoded = hex_ids(MessageToDict(message, use_integers_for_enums=True))
        except Exception as exc:
            self.errors.append(f"undecodable {signal} body: {exc}")
            decoded = {}
        with self.lock:
            action = self.plan.popleft() if self.plan else "ok"
            self.times.append((time.monotonic(), action))
        status, extra_headers, answer = 200, [], b""
        if isinstance(action, int):
            status = action
        elif isinstance(action, tuple) and action[0] == "partial":
            response = (
                ExportLogsServiceResponse if signal == "logs" else ExportTraceServiceResponse
            )()
            field = "rejected_log_records" if signal == "logs" else "rejected_spans"
            setattr(response.partial_success, field, action[1])
            response.partial_success.error_message = action[2]
            if json_body:
                answer = json.dumps(MessageToDict(response)).encode()
            else:
                answer = response.SerializeToString()
        elif isinstance(action, tuple):
            status, extra_headers = action[0], [("Retry-After", action[1])]
        if status == 200:
            with self.lock:
                self.requests.append((http.path, headers, raw, decoded))
        http.send_response(status)
        for key, value in extra_headers:
            http.send_header(key, value)
        http.send_header("Content-Type", headers.get("content-type", "application/x-protobuf"))
        http.send_header("Content-Length", str(len(answer)))
        http.end_headers()
        http.wfile.write(answer)

    def log_records(self) -> list[dict[str, Any]]:
        return [
            record
            for path, _, _, data in self.requests
            if path.endswith("/v1/logs")
            for rl in data.get("resourceLogs", [])
            for sl in rl.get("scopeLogs", [])
            for record in sl.get("logRecords", [])
        ]

    def spans(self) -> list[dict[str, Any]]:
        return [
            span
            for path, _, _, data in self.requests
            if path.endswith("/v1/traces")
            for rs in data.get("resourceSpans", [])
            for ss in rs.get("scopeSpans", [])
            for span in ss.get("spans", [])
        ]

    def bodies(self) -> list[str]:
        return [r["body"]["stringValue"] for r in self.log_records()]


def hex_ids(value: Any) -> Any:
    """A `MessageToDict` result with ids as OTLP/JSON has them (hex, not base64)."""
    if isinstance(value, dict):
        return {
            k: base64.b64decode(v).hex()
            if k in ("traceId", "spanId", "parentSpanId")
            else hex_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [hex_ids(v) for v in value]
    return value


class Tap:
    """oteltap's receiver on its own event loop thread: ``spans`` and ``logs`` are the
    protobuf messages it decoded; each request is re-emitted to ``echo`` (a `Collector`)
    so the resource and scope of every request are seen too."""

    def __init__(self) -> None:
        self.port = free_port()
        self.echo = Collector()
        self.spans: list[Any] = []
        self.logs: list[Any] = []
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "oteltap did not start"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        settings = OtelTapHttpProtobufReceiverSettings(
            http_port=self.port,
            reemit_traces_to_url=f"{self.echo.url}/v1/traces",
            reemit_logs_to_url=f"{self.echo.url}/v1/logs",
        )
        self.stop_event = asyncio.Event()
        async with OtelTapHttpProtobufReceiver(settings) as receiver:

            async def collect(stream: Any, into: list[Any]) -> None:
                async for item in stream:
                    into.append(item)

            tasks = [
                asyncio.create_task(collect(receiver.stream_traces(), self.spans)),
                asyncio.create_task(collect(receiver.stream_logs(), self.logs)),
            ]
            await asyncio.sleep(0.1)
            self.ready.set()
            await self.stop_event.wait()
            for task in tasks:
                task.cancel()

    def wait_for(self, logs: int, spans: int, timeout: float = 30.0) -> None:
        """Wait until at least this many arrived, then a little more (a duplicate would
        show)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.logs) >= logs and len(self.spans) >= spans:
                break
            time.sleep(0.05)
        time.sleep(0.5)

    def clear(self) -> None:
        self.spans.clear()
        self.logs.clear()
        self.echo.requests.clear()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)
        self.echo.stop()


@pytest.fixture(scope="module")
def tap():
    receiver = Tap()
    yield receiver
    receiver.close()


@pytest.fixture
def collector():
    server = Collector()
    yield server
    server.stop()


def attributes(message: Any) -> dict[str, Any]:
    """The attributes of a protobuf message (LogRecord, Span, Event) as a dict."""
    out: dict[str, Any] = {}
    for kv in message.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
        if kind == "array_value":
            out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in kv.value.array_value.values]
    return out


def json_attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {kv["key"]: next(iter(kv["value"].values()), None) for kv in items}


def otlp_handler(url: str, tmp_path: Path, **options: Any) -> OTLPHandler:
    handler = make_handler(
        {
            "type": "otlp",
            "endpoint": url,
            "flush_interval": 0.05,
            "spool_dir": str(tmp_path / "spool"),
            **options,
        }
    )
    assert isinstance(handler, OTLPHandler)
    return handler


@pytest.fixture(autouse=True)
def _clean_otel_env(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)


# ---------------------------------------------------------------------- the real receiver
def run_workflow(handlers: list[Any], run_id: str) -> Any:
    trace = get_trace(
        run_id,
        handlers=handlers,
        extras={"user_id": "alice", "environment": "staging", "tenant_id": "t1"},
    )
    trace.info("before any span")
    with trace.span("workflow", name="etl"):
        with trace.span("job", name="extract", source="s3"):
            for i in range(3):
                trace.info(f"row batch {i}")
        with pytest.raises(ValueError), trace.span("stage", name="validate", rows=10):
            trace.warning("checking")
            raise ValueError("bad row 7")
    assert trace.flush(30)
    return trace


def test_every_record_and_span_arrives_at_oteltap_with_ids_parents_attributes_resource(
    tap, tmp_path, monkeypatch
):
    tap.clear()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-etl")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored,team=data%20eng")
    memory = MemoryHandler()
    run_workflow([memory, otlp_handler(tap.url, tmp_path)], "run-otlp-tap")
    records, spans = memory.records, memory.spans
    assert len(records) == 6 and len(spans) == 3
    tap.wait_for(len(records), len(spans))
    # Nothing lost, nothing duplicated.
    assert len(tap.logs) == len(records) and len(tap.spans) == len(spans)

    by_body = {log.body.string_value: log for log in tap.logs}
    assert sorted(by_body) == sorted(r.message for r in records)
    for record in records:
        log = by_body[record.message]
        assert log.trace_id.hex() == record.trace_id
        assert (log.span_id.hex() or None) == record.span_id
        attrs = attributes(log)
        assert attrs["flowtrail.run_id"] == "run-otlp-tap"
        assert attrs["code.file.path"] == "test_otlp.py" and attrs["code.line.number"] > 0
        assert attrs["process.pid"] == record.process and attrs["thread.id"] == record.thread
        assert attrs["enduser.id"] == "alice" and attrs["deployment.environment"] == "staging"
        assert attrs["flowtrail.tenant_id"] == "t1"
        number, text = fmt.SEVERITY[record.level]
        assert (log.severity_number, log.severity_text) == (number, text)
        assert log.time_unix_nano > 0 and log.observed_time_unix_nano >= log.time_unix_nano
    assert by_body["row batch 1"].severity_text == "INFO"
    assert by_body["checking"].severity_number == 13
    assert not by_body["before any span"].span_id  # outside any span: the trace only
    failed = next(r for r in records if r.level == "exception")
    fattrs = attributes(by_body[failed.message])
    assert fattrs["exception.type"] == "ValueError"
    assert fattrs["exception.message"] == "bad row 7"
    assert "raise ValueError" in fattrs["exception.stacktrace"]

    by_id = {span.span_id.hex(): span for span in tap.spans}
    for span in spans:
        sent = by_id[span.span_id]
        assert sent.trace_id.hex() == span.trace_id
        assert (sent.parent_span_id.hex() or None) == span.parent_span_id
        assert sent.name == span.name
        assert sent.start_time_unix_nano == span.start_ns
        assert sent.end_time_unix_nano == span.end_ns
        assert attributes(sent)["flowtrail.kind"] == span.kind
        assert sent.kind == 1  # INTERNAL
    validate = next(s for s in tap.spans if s.name == "validate")
    assert validate.status.code == 2 and "bad row 7" in validate.status.message
    assert attributes(validate)["rows"] == 10
    # A stage's own name is its span name; spans inside a stage carry the stage's name.
    assert "flowtrail.stage_name" not in attributes(validate)
    (exception,) = [e for e in validate.events if e.name == "exception"]
    assert attributes(exception)["exception.type"] == "ValueError"
    logged = [attributes(e)["message"] for e in validate.events if e.name == "log"]
    assert logged == ["checking", "stage validate failed: ValueError: bad row 7"]
    extract = next(s for s in tap.spans if s.name == "extract")
    assert extract.status.code == 1 and attributes(extract)["source"] == "s3"
    assert [e.name for e in extract.events] == ["log"] * 3
    root = next(s for s in tap.spans if s.name == "etl")
    assert not root.parent_span_id
    assert {s.parent_span_id for s in tap.spans if s.name != "etl"} == {root.span_id}

    # The resource and scope of every request (oteltap re-emitted them to the echo).
    deadline = time.monotonic() + 10
    while len(tap.echo.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tap.echo.requests
    for path, _, _, data in tap.echo.requests:
        key = "resourceLogs" if path.endswith("/v1/logs") else "resourceSpans"
        (resource_entry,) = data[key]  # one resource per request
        resource = json_attributes(resource_entry["resource"]["attributes"])
        assert resource["service.name"] == "billing-etl"  # OTEL_SERVICE_NAME wins
        assert resource["team"] == "data eng"
        assert resource["telemetry.sdk.name"] == "flowtrail"
        assert resource["host.name"]
        scope_key = "scopeLogs" if key == "resourceLogs" else "scopeSpans"
        (scope,) = resource_entry[scope_key]  # one scope
        assert scope["scope"]["name"] == "flowtrail"


def test_trace_handlers_config_with_the_seed_backend_name_and_many_records(tap, tmp_path):
    tap.clear()
    trace = get_trace(
        "run-otlp-config",
        extras={
            "trace_handlers": [
                {
                    "type": "otlp",
                    "endpoint": tap.url,
                    "flush_interval": 0.05,
                    "batch_size": 300,
                    "spool_dir": str(tmp_path / "spool"),
                }
            ]
        },
    )
    for i in range(1000):
        trace.info(f"record {i}")
    for i in range(200):
        with trace.span("node", name=f"n{i}"):
            pass
    assert trace.flush(30)
    tap.wait_for(1000, 200)
    assert sorted(log.body.string_value for log in tap.logs) == sorted(
        f"record {i}" for i in range(1000)
    )
    assert sorted(s.name for s in tap.spans) == sorted(f"n{i}" for i in range(200))
    (stats,) = [p.stats for p in trace.pipelines()]
    assert stats.exported == 1200 and stats.spooled == 0 and stats.dropped == 0


# ---------------------------------------------------------------------- settings
def settings(signal: str, env: dict[str, str], **options: Any) -> Any:
    return signal_settings(OTLPConfig(**options), signal, env)


def test_endpoint_precedence_follows_the_specification():
    assert settings("logs", {}).url == "http://localhost:4318/v1/logs"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318/base/"}
    assert settings("logs", env).url == "https://collector:4318/base/v1/logs"
    assert settings("traces", env).url == "https://collector:4318/base/v1/traces"
    # A signal's variable is a full URL, used as it is; it wins over the general one.
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "https://tempo:4318/custom/path"
    assert settings("traces", env).url == "https://tempo:4318/custom/path"
    assert settings("logs", env).url == "https://collector:4318/base/v1/logs"
    # Options win over the environment; the base option gets the paths appended.
    assert settings("traces", env, endpoint="http://opt:4318").url == "http://opt:4318/v1/traces"
    assert (
        settings("traces", env, endpoint="http://opt:4318", traces_endpoint="http://t/x").url
        == "http://t/x"
    )


def test_headers_protocol_compression_timeout_certificate_from_the_environment():
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": f"api-key={SECRET},x-team=data%20eng",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "x-logs=1",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "700",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/ca.pem",
        "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE": "/etc/client.pem",
        "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY": "/etc/client.key",
    }
    logs, traces = settings("logs", env), settings("traces", env)
    assert dict(logs.headers) == {"x-logs": "1"}  # the signal's variable wins
    assert dict(traces.headers) == {"api-key": SECRET, "x-team": "data eng"}
    assert (logs.protocol, traces.protocol) == ("http/json", "http/protobuf")
    assert (logs.compression, traces.compression) == ("none", "gzip")
    assert (logs.timeout, traces.timeout) == (2.5, 0.7)  # milliseconds in variables
    assert logs.certificate == traces.certificate == "/etc/ca.pem"
    assert (logs.client_certificate, logs.client_key) == ("/etc/client.pem", "/etc/client.key")
    assert traces.client_certificate is None
    # Options win; option headers are merged over the environment's.
    opts = settings("traces", env, headers={"x-team": "ops"}, protocol="http/json", timeout=3)
    assert dict(opts.headers) == {"api-key": SECRET, "x-team": "ops"}
    assert (opts.protocol, opts.timeout) == ("http/json", 3)


def test_unsupported_settings_are_refused_with_what_is_accepted(monkeypatch):
    with pytest.raises(ConfigError, match="gRPC is not supported"):
        OTLPHandler(protocol="grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")
    with pytest.raises(ConfigError, match="'gzip' or 'none'"):
        OTLPHandler()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_COMPRESSION")
    with pytest.raises(ConfigError, match="not an http"):
        OTLPHandler(endpoint="ftp://collector")
    with pytest.raises(ConfigError, match="code_names"):
        OTLPHandler(code_names="newest")


def test_secrets_stay_out_of_repr_errors_manifest_and_spool_names(monkeypatch, tmp_path):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-honeycomb-team={SECRET}")
    handler = OTLPHandler(
        endpoint=f"https://user:{SECRET}@api.example.com", headers={"x-api": SECRET}
    )
    for text in (
        repr(handler),
        handler.spool_name(),
        handler.describe(),
        str(handler.destination()),
        handler.spool_manifest().decode(),
    ):
        assert SECRET not in text, text
    (request,) = handler.format_payload([Metadata(run_id="r", message="m")])
    assert request.header("x-honeycomb-team") == SECRET and request.header("x-api") == SECRET
    assert SECRET not in repr(request) and "x-honeycomb-team" in repr(request)
    assert set(handler.delivery("logs")._secrets) >= {SECRET}


# ---------------------------------------------------------------------- failures
def records_through(handler: OTLPHandler, count: int, run_id: str) -> tuple[Any, list[str]]:
    trace = get_trace(run_id, handlers=[handler])
    messages = [f"{run_id} {i}" for i in range(count)]
    for message in messages:
        trace.info(message)
    return trace, messages


def test_503_with_retry_after_is_retried_after_the_asked_delay_once(collector, tmp_path):
    collector.plan.extend([(503, "1"), (429, "0"), 502, 504])
    handler = otlp_handler(collector.url, tmp_path, batch_size=1000, max_retries=10)
    trace, messages = records_through(handler, 200, "run-503")
    assert trace.flush(30)
    assert collector.errors == []
    assert sorted(collector.bodies()) == sorted(messages)  # each exactly once
    actions = [a for _, a in collector.times]
    assert actions[:5] == [(503, "1"), (429, "0"), 502, 504, "ok"]
    times = [t for t, _ in collector.times]
    assert times[1] - times[0] >= 0.9  # Retry-After: 1
    (stats,) = [p.stats for p in trace.pipelines()]
    assert stats.retries == 4 and stats.spooled == 0


@pytest.mark.parametrize("status", [400, 500])
def test_other_statuses_are_refusals_never_retried_and_set_aside(
    collector, tmp_path, capfd, status
):
    collector.plan.extend([status] * 100)
    handler = otlp_handler(collector.url, tmp_path, batch_size=1000, max_retries=10)
    trace, messages = records_through(handler, 8, f"run-{status}")
    assert trace.flush(30)
    (stats,) = [p.stats for p in trace.pipelines()]
    assert stats.retries == 0 and stats.exported == 0 and stats.spooled == 8
    assert collector.requests == []
    # Isolation looked for the refused records, a bounded number of requests (never one
    # per record retried), then kept them in the spool, where a replay sets them aside.
    assert len(collector.times) <= 1 + 2 * (8).bit_length() + 4
    kept = [
        json.loads(line)["message"]
        for p in (tmp_path / "spool").rglob("*.jsonl*")
        for line in p.read_text().splitlines()
    ]
    assert sorted(kept) == sorted(messages)
    assert f"HTTP {status}" in capfd.readouterr().err


def test_partial_success_is_delivered_reported_with_counts_and_not_resent(
    collector, tmp_path, capfd
):
    collector.plan.extend([("partial", 3, "attribute limit exceeded")])
    handler = otlp_handler(collector.url, tmp_path, batch_size=1000)
    trace, messages = records_through(handler, 10, "run-partial")
    assert trace.flush(30)
    assert len(collector.requests) == 1 and sorted(collector.bodies()) == sorted(messages)
    (pipeline,) = trace.pipelines()
    assert pipeline.exporter.rejected == {"logs": 3, "traces": 0}
    assert pipeline.stats.retries == 0 and pipeline.stats.spooled == 0
    err = capfd.readouterr().err
    assert "3 log records rejected: attribute limit exceeded" in err


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_protobuf_and_json_gzip_on_and_off(collector, tmp_path, protocol, compression):
    handler = otlp_handler(
        collector.url, tmp_path, protocol=protocol, compression=compression, batch_size=1000
    )
    memory = MemoryHandler()
    run_workflow([memory, handler], f"run-{protocol[5:]}-{compression}")
    assert collector.errors == []
    paths = {path for path, *_ in collector.requests}
    assert paths == {"/v1/logs", "/v1/traces"}
    for _, headers, raw, _ in collector.requests:
        assert headers["content-type"] == fmt_type(protocol)
        assert (headers.get("content-encoding") == "gzip") == (compression == "gzip")
        if compression == "gzip":
            assert raw[:2] == b"\x1f\x8b"
    sent = {r["body"]["stringValue"]: r for r in collector.log_records()}
    assert sorted(sent) == sorted(r.message for r in memory.records)
    for record in memory.records:
        entry = sent[record.message]
        assert entry["traceId"] == record.trace_id  # hex in both (JSON rule / MessageToDict)
        assert isinstance(entry["timeUnixNano"], str)  # 64-bit integers as strings
        assert entry["severityNumber"] == fmt.SEVERITY[record.level][0]  # enum numbers
    spans = {s["spanId"]: s for s in collector.spans()}
    assert sorted(spans) == sorted(s.span_id for s in memory.spans)
    for span in memory.spans:
        entry = spans[span.span_id]
        assert (
            entry["traceId"] == span.trace_id and entry.get("parentSpanId") == span.parent_span_id
        )
        assert entry["startTimeUnixNano"] == str(span.start_ns)
        assert entry["kind"] == 1 and entry["status"]["code"] == (2 if span.is_error else 1)


def fmt_type(protocol: str) -> str:
    return "application/json" if protocol == "http/json" else "application/x-protobuf"


def test_an_outage_spools_and_a_replay_delivers_every_record_once(collector, tmp_path):
    port = collector.port
    collector.stop()
    handler = otlp_handler(f"http://127.0.0.1:{port}", tmp_path, max_retries=1, retry_deadline=0.3)
    trace = get_trace("run-outage", handlers=[handler])
    messages = [f"outage {i}" for i in range(50)]
    for message in messages:
        trace.info(message)
    with trace.span("stage", name="during"):
        pass
    assert trace.flush(30)
    (pipeline,) = trace.pipelines()
    assert pipeline.stats.spooled == 51 and pipeline.stats.exported == 0
    back = Collector(port)
    try:
        from flowtrail.replay import handler_for, replay_folder

        (folder,) = [p for p in (tmp_path / "spool").iterdir() if p.is_dir()]
        manifest = json.loads((folder / "destination.json").read_text())
        assert manifest["type"] == "otlp" and "headers" not in manifest["options"]
        # `flowtrail replay` without the configuration rebuilds the same destination
        # from destination.json.
        rebuilt = handler_for(folder, trace.settings)
        assert isinstance(rebuilt, OTLPHandler) and rebuilt.spool_name() == folder.name
        result = replay_folder(folder, handler.bound(trace.settings))
        assert result.sent == 51 and result.waiting == 0
        assert sorted(back.bodies()) == sorted(messages)
        assert [s["name"] for s in back.spans()] == ["during"]
    finally:
        back.stop()


def test_bounded_exit_with_a_hung_collector(tmp_path):
    # A collector that accepts connections and never answers: the process still exits
    # within its exit deadline, leaving the records in the spool.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    try:
        started = time.monotonic()
        result = run_python(
            f"""
from flowtrail import get_trace, OTLPHandler
h = OTLPHandler(endpoint="http://127.0.0.1:{port}", timeout=30, flush_interval=0.01,
                spool_dir={str(tmp_path / "spool")!r})
t = get_trace("run-hung", handlers=[h], extras={{"exit_timeout": 2}})
for i in range(100):
    t.info(f"m {{i}}")
""",
            tmp_path,
        )
        took = time.monotonic() - started
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert took < 8  # exit_timeout 2 s, whatever the collector does
    lines = [
        json.loads(line)
        for p in (tmp_path / "spool").rglob("*")
        if p.is_file() and ".jsonl" in p.name and not p.name.endswith(".why")
        for line in p.read_text().splitlines()
    ]
    assert sorted(x["message"] for x in lines) == sorted(f"m {i}" for i in range(100))


# ---------------------------------------------------------------------- encoding
def sample_records() -> tuple[list[Metadata], list[Span]]:
    records = [
        Metadata(
            run_id="r1",
            message="hello",
            level="warning",
            datetime="2026-12-02T17:20:00.123456+07:00",
            created_at="2026-12-02T17:20:00.123999+07:00",
            process=7,
            thread=9,
            filename="job.py",
            lineno=12,
            trace_id="0af7651916cd43dd8448eb211c80319c",
            span_id="b7ad6b7169203331",
            tags=["a", "b"],
            metadata={"big": 2**70, "nested": {"x": [1, 2.5, None, True]}, "nan": float("nan")},
            duration_ms=1.5,
        ),
        Metadata(
            run_id="r1", message="no ids", trace_id="custom-id", datetime="2026-12-02T10:20:00Z"
        ),
    ]
    spans = [
        Span(
            run_id="r1",
            trace_id="0af7651916cd43dd8448eb211c80319c",
            span_id="b7ad6b7169203331",
            parent_span_id="00f067aa0ba902b7",
            name="call",
            kind="client",
            start_ns=1_000,
            end_ns=5_000,
            status="error",
            status_message="boom",
            attributes={"http.method": "GET", "bytes": b"\x00\x01"},
            stage_name="validate",
            cpu_percent=12.5,
        ),
        Span(run_id="r1", trace_id="0af7651916cd43dd8448eb211c80319c", span_id="1", name="open"),
    ]
    return records, spans


def test_encoding_is_pure_and_json_matches_the_protobuf_message():
    records, spans = sample_records()
    logs, finished = fmt.split([*records, *spans])
    assert finished == spans[:1]  # the stored start of an open span is not sent
    encoder = fmt.OTLPEncoder(fmt.resource_attributes("svc", environ={}))
    message = ExportLogsServiceRequest()
    message.ParseFromString(encoder.logs_protobuf(logs))
    expected = MessageToDict(message, use_integers_for_enums=True)
    got = json.loads(encoder.logs_json(logs))
    expected = hex_ids(expected)  # MessageToDict gives base64; OTLP/JSON hex
    # NaN: protobuf JSON writes "NaN" too; compare the rest exactly.
    assert got == expected
    first = got["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert first["timeUnixNano"] == str(1796206800123456000)
    assert first["observedTimeUnixNano"] == str(1796206800123999000)
    attrs = json_attributes(first["attributes"])
    assert attrs["big"] == str(2**70)  # beyond 64 bits: text
    assert attrs["flowtrail.duration_ms"] == 1.5
    assert attrs["nan"] == "NaN"
    second = got["resourceLogs"][0]["scopeLogs"][0]["logRecords"][1]
    assert "traceId" not in second
    assert json_attributes(second["attributes"])["flowtrail.trace_id"] == "custom-id"

    traces = json.loads(encoder.traces_json(finished))
    (span,) = traces["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert span["kind"] == 3 and span["status"] == {"code": 2, "message": "boom"}
    assert span["parentSpanId"] == "00f067aa0ba902b7"
    assert span["startTimeUnixNano"] == "1000" and span["endTimeUnixNano"] == "5000"
    span_attributes = json_attributes(span["attributes"])
    assert span_attributes["bytes"] == "AAE=" and span_attributes["http.method"] == "GET"
    assert span_attributes["flowtrail.stage_name"] == "validate"
    assert span_attributes["flowtrail.cpu_percent"] == 12.5
    assert span_attributes["flowtrail.kind"] == "client"


def test_code_attribute_names_follow_the_semconv_opt_in(monkeypatch):
    (record,) = sample_records()[0][:1]
    for opt_in, keys in (
        ("", {"code.file.path", "code.line.number"}),
        ("http,code/dup", {"code.file.path", "code.line.number", "code.filepath", "code.lineno"}),
    ):
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", opt_in)
        handler = OTLPHandler(protocol="http/json")
        (request,) = handler.format_payload([record])
        entry = json.loads(request.body)["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
        names = {kv["key"] for kv in entry["attributes"] if kv["key"].startswith("code.")}
        assert names == keys
    old = OTLPHandler(protocol="http/json", code_names="old")
    (request,) = old.format_payload([record])
    assert b'"code.filepath"' in request.body and b'"code.file.path"' not in request.body


def test_without_the_otlp_extra_protobuf_names_it_and_json_still_works(tmp_path):
    result = run_python(
        """
import sys
sys.modules["opentelemetry.proto"] = None  # as if opentelemetry-proto were not installed
from flowtrail import OTLPHandler, Metadata
from flowtrail.config import ConfigError
try:
    OTLPHandler(endpoint="http://127.0.0.1:9")
except ConfigError as exc:
    print("REFUSED", exc)
h = OTLPHandler(endpoint="http://127.0.0.1:9", protocol="http/json")
(r,) = h.format_payload([Metadata(run_id="r", message="m")])
print("JSON", r.header("Content-Type"), len(r.body) > 0)
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "REFUSED" in result.stdout and "flowtrail[otlp]" in result.stdout
    assert "JSON application/json True" in result.stdout


def test_assembled_protobuf_is_the_message_the_official_classes_build():
    records, spans = sample_records()
    logs, finished = fmt.split([*records, *spans])
    many = [
        msgspec.structs.replace(logs[i % 2], message=f"m {i}", lineno=i % 3) for i in range(300)
    ]
    encoder = fmt.OTLPEncoder(fmt.resource_attributes("svc", environ={}))
    for _ in range(2):  # the second time from the cache of shared attributes
        got = ExportLogsServiceRequest.FromString(encoder.logs_protobuf(many))
        assert got == ExportLogsServiceRequest(**encoder.logs_dict(many))
        assert len(got.resource_logs[0].scope_logs[0].log_records) == 300
        got_spans = ExportTraceServiceRequest.FromString(encoder.traces_protobuf(finished * 50))
        assert got_spans == ExportTraceServiceRequest(**encoder.traces_dict(finished * 50))
    # A record whose serialized form needs a multi-byte length.
    (big,) = [msgspec.structs.replace(logs[0], message="x" * 100_000)]
    parsed = ExportLogsServiceRequest.FromString(encoder.logs_protobuf([big]))
    assert parsed.resource_logs[0].scope_logs[0].log_records[0].body.string_value == "x" * 100_000


def test_trace_type_shortcut_and_the_direct_logging_handler_form(collector, tmp_path):
    trace = get_trace(
        "run-trace-type",
        extras={
            "trace_type": "otlp",
            "endpoint": collector.url,
            "service_name": "from-extras",
            "flush_interval": 0.05,
            "spool_dir": str(tmp_path / "spool"),
        },
    )
    trace.info("via trace_type")
    assert trace.flush(30)
    handler = OTLPHandler(
        run_id="run-direct", endpoint=collector.url, spool_dir=str(tmp_path / "spool2")
    )
    logger = logging.getLogger("flowtrail-test-otlp-direct")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("via logging %s", 1)
        assert handler.flush(30)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert sorted(collector.bodies()) == ["via logging 1", "via trace_type"]
    services = {
        json_attributes(data["resourceLogs"][0]["resource"]["attributes"])["service.name"]
        for _, _, _, data in collector.requests
    }
    assert services == {"from-extras", "flowtrail"}
    (direct,) = [r for r in collector.log_records() if r["body"]["stringValue"] == "via logging 1"]
    assert json_attributes(direct["attributes"])["flowtrail.run_id"] == "run-direct"
    assert direct["severityNumber"] == 13
