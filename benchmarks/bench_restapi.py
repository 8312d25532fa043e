"""Records to a local HTTP receiver: flowtrail's RestAPIHandler (Datadog, Loki and generic
formats) against the stdlib ``logging.handlers.HTTPHandler`` and python-logging-loki's
``LokiHandler``, in the same run.

    python benchmarks/bench_restapi.py                  # 100,000 records (peers: 5,000)
    python benchmarks/bench_restapi.py --n 20000 --peer-n 2000

The receiver runs in its own process (it must not share flowtrail's interpreter lock) and
counts the records in each request it acknowledges. For each case, in a fresh
interpreter: **caller µs/call** = logging loop time / N; **records/s** = N / (loop + the
time until the receiver acknowledged all N). flowtrail's ``FileHandler`` caller cost is
measured in the same run as the bar the remote handler's caller cost must stay under.
Peers send one request per record on the caller's thread, so they run with fewer
records (``--peer-n``); rates are per second either way.
"""

from __future__ import annotations

import argparse
import gzip
import json
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
    "tags": ["team:bench"],
}


# ---------------------------------------------------------------------- receiver
def serve(port_file: str) -> None:
    count = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/reset":
                with lock:
                    count[0] = 0
            body = str(count[0]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            if self.path.startswith("/stdlib"):
                n = 1
            elif self.path.startswith("/loki"):
                n = sum(len(s["values"]) for s in json.loads(raw)["streams"])
            elif self.headers.get("Content-Type") == "application/x-ndjson":
                n = raw.count(b"\n")
            else:
                n = len(json.loads(raw))
            with lock:
                count[0] += n
            self.send_response(204 if self.path.startswith("/loki") else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def received(port: int, path: str = "/count") -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    value = int(conn.getresponse().read())
    conn.close()
    return value


# ---------------------------------------------------------------------- cases
def run_case(case: str, n: int, port: int) -> dict[str, float]:
    base = f"http://127.0.0.1:{port}"
    start_wait = None
    if case.startswith("flowtrail"):
        sys.path.insert(0, str(ROOT / "src"))
        from flowtrail import FileHandler, get_trace, make_handler

        if case == "flowtrail-file":
            handler = FileHandler(path="traces")
        else:
            kind = case.split("-")[1]
            url = {
                "datadog": f"{base}/api/v2/logs",
                "loki": f"{base}/loki/api/v1/push",
                "generic": f"{base}/generic",
            }[kind]
            handler = make_handler(
                {
                    "type": "restapi",
                    "service_type": "grafana" if kind == "loki" else kind,
                    "api_url": url,
                    "api_key": "bench-key",
                    "queue_size": n,
                }
            )
        trace = get_trace("bench-run", handlers=[handler], extras=EXTRAS)
        info = trace.info
        t0 = time.perf_counter()
        for i in range(n):
            info(f"record number {i}")
        loop = time.perf_counter() - t0
        start_wait = time.perf_counter()
        assert trace.flush(600)
    else:
        import logging

        logger = logging.getLogger(f"bench-{case}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        if case == "stdlib-http":
            from logging.handlers import HTTPHandler

            logger.addHandler(HTTPHandler(f"127.0.0.1:{port}", "/stdlib", method="POST"))
        elif case == "python-logging-loki":
            import logging_loki

            logger.addHandler(
                logging_loki.LokiHandler(
                    url=f"{base}/loki/api/v1/push", tags={"service": "bench"}, version="1"
                )
            )
        adapter = logging.LoggerAdapter(logger, EXTRAS)
        t0 = time.perf_counter()
        for i in range(n):
            adapter.info(f"record number {i}")
        loop = time.perf_counter() - t0
        start_wait = time.perf_counter()
    if case != "flowtrail-file":
        deadline = time.monotonic() + 600
        while received(port) < n and time.monotonic() < deadline:
            time.sleep(0.01)
    total = loop + (time.perf_counter() - start_wait)
    got = n if case == "flowtrail-file" else received(port)
    return {"caller_us": loop / n * 1e6, "records_per_s": n / total, "received": got}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--peer-n", type=int, default=5_000)
    parser.add_argument("--only", default="")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.n, args.port)))
        return
    cases = [
        "flowtrail-file",
        "flowtrail-datadog",
        "flowtrail-loki",
        "flowtrail-generic",
        "stdlib-http",
        "python-logging-loki",
    ]
    if args.only:
        cases = [c for c in cases if c in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            port = int(port_file.read_text())
            print(f"{'case':22} {'N':>8} {'caller µs/call':>15} {'records/s':>12}")
            for case in cases:
                n = args.n if case.startswith("flowtrail") else args.peer_n
                received(port, "/reset")
                work = Path(tempfile.mkdtemp(dir=tmp))
                result = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--n", str(n), "--port", str(port)],
                    cwd=work,
                    capture_output=True,
                    text=True,
                )
                if result.returncode != 0:
                    print(f"{case:22} FAILED: {result.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(result.stdout.strip().splitlines()[-1])
                flag = "" if r["received"] == n else f"  (received {r['received']} of {n})"
                print(
                    f"{case:22} {n:>8} {r['caller_us']:>15.2f} {r['records_per_s']:>12,.0f}{flag}"
                )
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
