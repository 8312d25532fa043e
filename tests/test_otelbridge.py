"""Context shared with the real OpenTelemetry SDK, both ways (issue 10, point 4): spans
and records made inside an OpenTelemetry span join its trace as its children; inside a
flowtrail span, spans the SDK starts (``tracer.start_as_current_span``, the httpx
instrumentation) are its children, and the ``traceparent`` an instrumented client sends
names it. Without OpenTelemetry, nothing of it is imported."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import run_python
from flowtrail import MemoryHandler, get_trace

try:
    import httpx
    from opentelemetry import baggage, context, propagate, trace
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError as exc:  # pragma: no cover - a setup problem, said loudly
    raise ImportError(
        f"{exc}: these tests need opentelemetry-sdk and opentelemetry-instrumentation-httpx: "
        "pip install -e '.[test]'"
    ) from None

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def sdk():
    """The SDK's tracer (its own provider, not the global one) and its finished spans."""
    _EXPORTER.clear()
    yield _PROVIDER.get_tracer("library"), _EXPORTER
    _EXPORTER.clear()


def hexid(value: int, size: int = 16) -> str:
    return f"{value:0{size}x}"


def test_flowtrail_spans_and_records_join_the_current_opentelemetry_span(sdk):
    tracer, exported = sdk
    memory = MemoryHandler()
    flow = get_trace("run-otel-in", handlers=[memory])
    with tracer.start_as_current_span("http-server") as server:
        server_ctx = server.get_span_context()
        flow.info("in the server span")
        with flow.span("workflow", name="etl") as wf:
            flow.info("in the workflow")
            with flow.span("stage", name="load"):
                pass
    flow.info("after")
    trace_id, server_id = hexid(server_ctx.trace_id, 32), hexid(server_ctx.span_id)
    spans = {s.name: s for s in memory.spans}
    assert spans["etl"].trace_id == trace_id and spans["etl"].parent_span_id == server_id
    assert spans["load"].trace_id == trace_id and spans["load"].parent_span_id == wf.span_id
    records = {r.message: r for r in memory.records}
    assert records["in the server span"].trace_id == trace_id
    assert records["in the server span"].span_id == server_id
    assert records["in the workflow"].span_id == wf.span_id
    assert records["in the workflow"].trace_id == trace_id
    # Outside the OpenTelemetry span: the trace's own ids again.
    assert records["after"].trace_id == flow.trace_id and records["after"].span_id is None
    assert [s.name for s in exported.get_finished_spans()] == ["http-server"]


def test_inside_a_flowtrail_span_sdk_spans_are_its_children_and_inject_its_traceparent(sdk):
    tracer, exported = sdk
    memory = MemoryHandler()
    flow = get_trace("run-otel-out", handlers=[memory])
    with flow.span("job", name="extract") as job:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        assert carrier["traceparent"] == job.traceparent()
        with tracer.start_as_current_span("db.query") as query:
            flow.info("inside the library's span")
            with (
                flow.span("stage", name="parse") as parse,
                tracer.start_as_current_span("cache.get"),
            ):
                pass
        with tracer.start_as_current_span("after"):
            pass
    assert trace.get_current_span().get_span_context().is_valid is False  # restored
    finished = {s.name: s for s in exported.get_finished_spans()}
    for name in ("db.query", "after"):
        span = finished[name]
        assert hexid(span.context.trace_id, 32) == job.trace_id
        assert hexid(span.parent.span_id) == job.span_id
        assert span.context.trace_flags.sampled
    # flowtrail -> SDK -> flowtrail -> SDK: every link is right.
    query_id = hexid(query.get_span_context().span_id)
    assert parse.parent_span_id == query_id
    assert hexid(finished["cache.get"].parent.span_id) == parse.span_id
    stored = {s.name: s for s in memory.spans}
    assert stored["parse"].parent_span_id == query_id
    (record,) = [r for r in memory.records if r.message == "inside the library's span"]
    assert record.span_id == query_id and record.trace_id == job.trace_id


def test_an_instrumented_http_client_sends_the_flowtrail_span_as_parent(sdk):
    tracer, exported = sdk
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("traceparent"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = httpx.Client()
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=_PROVIDER)
    memory = MemoryHandler()
    flow = get_trace("run-otel-http", handlers=[memory])
    try:
        with flow.span("stage", name="call-api") as stage:
            client.get(f"http://127.0.0.1:{server.server_address[1]}/x")
    finally:
        HTTPXClientInstrumentor.uninstrument_client(client)
        client.close()
        server.shutdown()
        server.server_close()
    (client_span,) = [s for s in exported.get_finished_spans() if s.kind.name == "CLIENT"]
    assert hexid(client_span.parent.span_id) == stage.span_id
    assert hexid(client_span.context.trace_id, 32) == stage.trace_id
    # What the server received names the client span, a child of the stage.
    (header,) = seen
    assert header == f"00-{stage.trace_id}-{hexid(client_span.context.span_id)}-01"


def test_tasks_and_threads_keep_their_own_parents_and_detach_quietly(sdk, caplog):
    tracer, exported = sdk
    memory = MemoryHandler()
    flow = get_trace("run-otel-async", handlers=[memory])

    async def task(name: str) -> str:
        with flow.span("stage", name=name) as stage:
            await asyncio.sleep(0.01)
            with tracer.start_as_current_span(f"lib-{name}"):
                await asyncio.sleep(0.01)
            return stage.span_id

    async def main() -> list[str]:
        with flow.span("job", name="fan-out"):
            return list(await asyncio.gather(*(task(f"t{i}") for i in range(5))))

    def in_thread(results: list[str]) -> None:
        with flow.span("stage", name="thread"), tracer.start_as_current_span("lib-thread") as s:
            results.append(hexid(s.parent.span_id))

    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        stage_ids = asyncio.run(main())
        results: list[str] = []
        with flow.span("job", name="threads"):
            ctx = contextvars.copy_context()
            worker = threading.Thread(target=ctx.run, args=(in_thread, results))
            worker.start()
            worker.join()
    finished = {s.name: s for s in exported.get_finished_spans()}
    for i, stage_id in enumerate(stage_ids):
        assert hexid(finished[f"lib-t{i}"].parent.span_id) == stage_id
    thread_span = next(s for s in memory.spans if s.name == "thread")
    assert results == [thread_span.span_id]
    assert "Failed to detach" not in caplog.text


def test_baggage_and_values_of_the_opentelemetry_context_are_kept(sdk):
    tracer, _ = sdk
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        flow = get_trace("run-otel-baggage", handlers=[MemoryHandler()])
        with flow.span("stage", name="s"):
            assert baggage.get_baggage("tenant") == "acme"
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            assert "tenant=acme" in carrier.get("baggage", "")
        assert baggage.get_baggage("tenant") == "acme"
    finally:
        context.detach(token)


def test_flowtrail_http_requests_are_not_instrumented(sdk, tmp_path):
    # A program that instruments httpx globally: flowtrail's own export requests must
    # not become spans (the SDK's exporters suppress instrumentation the same way).
    tracer, exported = sdk
    from flowtrail.delivery import Delivery, Request

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=_PROVIDER)
    try:
        delivery = Delivery()
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/logs"
        assert delivery.send(Request("POST", url, (), b"x")).status == 200
        delivery.close()
        with httpx.Client() as client:  # an instrumented client of the program's own
            client.post(url, content=b"y")
    finally:
        instrumentor.uninstrument()
        server.shutdown()
        server.server_close()
    assert [s.kind.name for s in exported.get_finished_spans()] == ["CLIENT"]  # only the program's


def test_nothing_of_opentelemetry_is_imported_or_needed_without_it(tmp_path):
    code = """
import sys
{block}
from flowtrail import get_trace, MemoryHandler, OTLPHandler
import flowtrail.otelbridge, flowtrail.handlers.otlp, flowtrail.formats.otlp
m = MemoryHandler()
t = get_trace("run-no-otel", handlers=[m])
with t.span("workflow", name="w") as w:
    with t.span("stage", name="s"):
        t.info("hello")
OTLPHandler(protocol="http/json").format_payload(m.records + m.spans)
assert [s.name for s in m.spans] == ["s", "w"], m.spans
heavy = sorted(
    n for n, m in sys.modules.items()
    if m is not None and n.split(".")[0] in ("opentelemetry", "google", "grpc")
)
print("HEAVY", heavy)
"""
    for block in ("", "sys.modules['opentelemetry'] = None  # not installed"):
        result = run_python(code.replace("{block}", block), tmp_path)
        assert result.returncode == 0, result.stderr
        assert "HEAVY []" in result.stdout, result.stdout


def test_stdlib_records_of_a_library_join_its_opentelemetry_span(sdk):
    from flowtrail import FlowtrailLogHandler

    tracer, _ = sdk
    memory = MemoryHandler()
    flow = get_trace("run-otel-stdlib", handlers=[memory])
    logger = logging.getLogger("flowtrail-test-otel-library")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    bridge = FlowtrailLogHandler(trace=flow)
    logger.addHandler(bridge)
    try:
        with tracer.start_as_current_span("outside") as outside:
            logger.info("library log outside flowtrail")
        with flow.span("stage", name="s") as stage:
            logger.info("library log in the stage")
            with tracer.start_as_current_span("db.query") as query:
                logger.info("library log in its span")
    finally:
        logger.removeHandler(bridge)
    records = {r.message: r for r in memory.records}
    out = records["library log outside flowtrail"]
    assert out.trace_id == hexid(outside.get_span_context().trace_id, 32)
    assert out.span_id == hexid(outside.get_span_context().span_id)
    assert records["library log in the stage"].span_id == stage.span_id
    inner = records["library log in its span"]
    assert inner.span_id == hexid(query.get_span_context().span_id)
    assert inner.parent_span_id == stage.span_id and inner.trace_id == stage.trace_id


def test_the_direct_handler_form_joins_the_opentelemetry_span_too(sdk):
    tracer, _ = sdk
    direct = MemoryHandler(run_id="run-otel-direct")
    logger = logging.getLogger("flowtrail-test-otel-direct")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(direct)
    try:
        logger.info("no span")
        with tracer.start_as_current_span("request") as request:
            logger.info("in the request")
    finally:
        logger.removeHandler(direct)
    records = {r.message: r for r in direct.records}
    assert records["no span"].span_id is None
    inside = records["in the request"]
    assert inside.trace_id == hexid(request.get_span_context().trace_id, 32)
    assert inside.span_id == hexid(request.get_span_context().span_id)
