"""Records and spans over OTLP/HTTP protobuf to a local receiver: flowtrail's OTLPHandler
against the OpenTelemetry SDK (``LoggingHandler`` + ``BatchLogRecordProcessor`` +
``OTLPLogExporter``; ``BatchSpanProcessor`` + ``OTLPSpanExporter``), in the same run.

    python benchmarks/bench_otlp.py                     # 100,000 records, 20,000 spans, 3 rounds
    python benchmarks/bench_otlp.py --records 20000 --spans 5000 --repeat 1

The receiver runs in its own process (it must not share the interpreter lock of the case
it measures), decodes every request with the official messages and counts the log
records and spans it acknowledges. Each case runs in a fresh interpreter; the cases
alternate, round after round, and the median of the rounds is shown.

- **caller µs/call**: the logging (or span) loop's time / N.
- **items/s**: items acknowledged / (the loop + the time until the receiver acknowledged
  everything, or, for a case that dropped some, until its count stopped growing).
- **dropped**: N minus what the receiver got. The SDK's batch processors drop when their
  queue (2,048 by default) is full; flowtrail spills to its spool instead (and its queue
  is sized here so nothing spills: what is measured is delivery).

Both send the caller's file and line; flowtrail's records carry more fields (run,
thread, process, the workflow, job and stage, the environment) and its spans more
attributes (kind, run, CPU and memory) than the SDK's.
Target: flowtrail at least 3x the SDK's records/s and spans/s, with nothing dropped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = {
    "workflow_name": "bench-workflow",
    "stage_name": "stage",
    "job_name": "job",
    "environment": "bench",
}


# ---------------------------------------------------------------------- receiver
def serve(port_file: str) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    counts = {"logs": 0, "spans": 0}
    lock = threading.Lock()
    answers = {
        "logs": ExportLogsServiceResponse().SerializeToString(),
        "spans": ExportTraceServiceResponse().SerializeToString(),
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/reset":
                with lock:
                    counts.update(logs=0, spans=0)
            body = json.dumps(counts).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path.endswith("/v1/logs"):
                request = ExportLogsServiceRequest.FromString(raw)
                n = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
                kind = "logs"
            else:
                request = ExportTraceServiceRequest.FromString(raw)
                n = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                kind = "spans"
            with lock:
                counts[kind] += n
            body = answers[kind]
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def received(port: int, path: str = "/count") -> dict[str, int]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    value = json.loads(conn.getresponse().read())
    conn.close()
    return value


def wait_for(port: int, kind: str, n: int) -> int:
    """Wait until the receiver has ``n`` items, or its count stopped growing for 3 s."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        got = received(port)[kind]
        if got >= n:
            return got
        if got != last:
            last, since = got, time.monotonic()
        elif time.monotonic() - since > 3.0:
            return got
        time.sleep(0.005)
    return last


# ---------------------------------------------------------------------- cases
def run_case(case: str, n: int, port: int) -> dict[str, float]:
    base = f"http://127.0.0.1:{port}"
    kind = "logs" if case.endswith("logs") else "spans"
    settle = 0.0
    if case.startswith("flowtrail"):
        sys.path.insert(0, str(ROOT / "src"))
        if case == "flowtrail-spans-otel-imported":
            # The bridge's cost: the OpenTelemetry SDK imported with a provider set.
            from opentelemetry import trace as otel_trace
            from opentelemetry.sdk.trace import TracerProvider

            otel_trace.set_tracer_provider(TracerProvider())
        from flowtrail import OTLPHandler, get_trace

        handler = OTLPHandler(endpoint=base, queue_size=n + 10)
        trace = get_trace("bench-run", handlers=[handler], extras=EXTRAS)
        if kind == "logs":
            info = trace.info
            t0 = time.perf_counter()
            for i in range(n):
                info(f"record number {i}")
            loop = time.perf_counter() - t0
        else:
            span = trace.span
            with span("workflow", name="bench"):
                t0 = time.perf_counter()
                for i in range(n - 1):
                    with span("stage", name=f"stage {i}"):
                        pass
                loop = time.perf_counter() - t0
        start_wait = time.perf_counter()
        assert trace.flush(600)
        stats = trace.pipelines()[0].stats
        extra = {"spooled": stats.spooled, "flowtrail_dropped": stats.dropped}
    elif kind == "logs":
        import logging

        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        provider = LoggerProvider()
        provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{base}/v1/logs"))
        )
        logger = logging.getLogger("bench-otel")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(LoggingHandler(logger_provider=provider))
        adapter = logging.LoggerAdapter(logger, EXTRAS)
        t0 = time.perf_counter()
        for i in range(n):
            adapter.info(f"record number {i}")
        loop = time.perf_counter() - t0
        start_wait = time.perf_counter()
        provider.force_flush(600_000)
        extra = {}
        settle = 3.0
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"))
        )
        tracer = provider.get_tracer("bench")
        start = tracer.start_as_current_span
        with start("bench", attributes=EXTRAS):
            t0 = time.perf_counter()
            for i in range(n - 1):
                with start(f"stage {i}"):
                    pass
            loop = time.perf_counter() - t0
        start_wait = time.perf_counter()
        provider.force_flush(600_000)
        extra = {}
        settle = 3.0
    got = wait_for(port, kind, n)
    total = loop + (time.perf_counter() - start_wait)
    if got < n:
        total -= settle  # the wait that saw the count stop growing is not delivery time
    return {
        "caller_us": loop / n * 1e6,
        "per_s": got / total,  # delivered items only
        "received": got,
        "dropped": n - got,
        **extra,
    }


CASES = {
    "logs": ["flowtrail-logs", "sdk-logs"],
    "spans": ["flowtrail-spans", "sdk-spans", "flowtrail-spans-otel-imported"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.n, args.port)))
        return
    cases = [c for group in CASES.values() for c in group]
    if args.only:
        cases = [c for c in cases if c in args.only.split(",")]
    results: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            port = int(port_file.read_text())
            for round_ in range(args.repeat):
                for case in cases:  # alternating, round after round
                    n = args.records if case.endswith("logs") else args.spans
                    received(port, "/reset")
                    work = Path(tempfile.mkdtemp(dir=tmp))
                    run = subprocess.run(
                        [sys.executable, __file__, "--case", case, "--n", str(n)]
                        + ["--port", str(port)],
                        cwd=work,
                        capture_output=True,
                        text=True,
                    )
                    if run.returncode != 0:
                        print(f"{case}: FAILED {run.stderr.strip().splitlines()[-3:]}")
                        continue
                    r = json.loads(run.stdout.strip().splitlines()[-1])
                    results[case].append(r)
                    print(
                        f"  round {round_ + 1} {case:30} {r['caller_us']:8.2f} µs/call "
                        f"{r['per_s']:>10,.0f}/s dropped {r['dropped']}",
                        flush=True,
                    )
        finally:
            server.terminate()
            server.wait(10)
    print()
    print(f"{'case':30} {'N':>7} {'caller µs/call':>15} {'items/s':>10} {'dropped':>8}")
    medians = {}
    for case, runs in results.items():
        if not runs:
            continue
        n = args.records if case.endswith("logs") else args.spans
        caller = statistics.median(r["caller_us"] for r in runs)
        rate = statistics.median(r["per_s"] for r in runs)
        dropped = max(r["dropped"] for r in runs)
        medians[case] = rate
        print(f"{case:30} {n:>7} {caller:>15.2f} {rate:>10,.0f} {dropped:>8}")
    print()
    for ours, theirs in (("flowtrail-logs", "sdk-logs"), ("flowtrail-spans", "sdk-spans")):
        if ours in medians and theirs in medians:
            ratio = medians[ours] / medians[theirs]
            verdict = "ok" if ratio >= 3 else "MISS"
            print(f"{ours} / {theirs}: {ratio:.2f}x (target 3x: {verdict})")


if __name__ == "__main__":
    main()
