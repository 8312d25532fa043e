"""Records to a local HTTP receiver: flowtrail's RestAPIHandler (Datadog, Loki and generic
formats) against the stdlib ``logging.handlers.HTTPHandler`` and python-logging-loki's
``LokiHandler``; and CloudWatch Logs through moto's server: flowtrail against
``watchtower``. All in the same run, alternating the order of the cases each round;
medians are quoted, with the ratios the issue's targets are stated in.

    python benchmarks/bench_restapi.py                  # 100,000 records (peers: 5,000)
    python benchmarks/bench_restapi.py --n 20000 --peer-n 2000 --rounds 3
    python benchmarks/bench_restapi.py --only flowtrail-cloudwatch,watchtower

The receiver runs in its own process (it must not share flowtrail's interpreter lock) and
counts the records in each request it acknowledges. For each case, in a fresh
interpreter: **caller µs/call** = logging loop time / N; **records/s** = N / (loop + the
time until the receiver acknowledged all N). flowtrail's ``FileHandler`` caller cost is
measured in the same run as the bar the remote handler's caller cost must stay under.
Peers that send one request per record on the caller's thread run with fewer records
(``--peer-n``); rates are per second either way. CloudWatch: both sides batch (watchtower
in its own thread), ``records/s`` runs until the last ``PutLogEvents`` was answered
(flowtrail's ``flush``, watchtower's ``flush``), and the events are counted back with
``GetLogEvents``; moto's own speed bounds both.
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
def cloudwatch_count(endpoint: str, group: str, stream: str) -> int:
    """Events stored in a CloudWatch stream (paged GetLogEvents)."""
    import boto3

    client = boto3.client("logs", endpoint_url=endpoint)
    count, token = 0, None
    while True:
        args = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
        if token:
            args["nextToken"] = token
        page = client.get_log_events(**args)
        count += len(page["events"])
        if not page["events"] or page.get("nextForwardToken") == token:
            return count
        token = page["nextForwardToken"]


def log_through(handler: object, n: int, flush: bool = True) -> float:
    """Log ``n`` records through a flowtrail trace on ``handler``; the loop's seconds
    (and, with ``flush``, wait until all were acknowledged)."""
    from flowtrail import get_trace

    trace = get_trace("bench-run", handlers=[handler], extras=EXTRAS)
    info = trace.info
    t0 = time.perf_counter()
    for i in range(n):
        info(f"record number {i}")
    loop = time.perf_counter() - t0
    if flush:
        assert trace.flush(600)
    return loop


class SameFieldsFormatter:
    """The fields flowtrail's record carries, as one JSON document per event, so that the
    peer sends the same information (its default sends the message text alone)."""

    def __init__(self) -> None:
        import platform
        import socket

        self.host = socket.gethostname()
        self.python = platform.python_version()

    def format(self, record: object) -> str:
        from datetime import datetime, timezone

        r = record.__dict__
        when = datetime.fromtimestamp(r["created"], timezone.utc).isoformat()
        return json.dumps(
            {
                "run_id": "bench-run",
                "level": r["levelname"].lower(),
                "message": r["msg"] % r["args"] if r["args"] else r["msg"],
                "error_flag": False,
                "datetime": when,
                "process": r["process"],
                "thread": r["thread"],
                "filename": r["filename"],
                "lineno": r["lineno"],
                "cut_id": "bench-run",
                **{k: r[k] for k in EXTRAS},
                "trace_id": "e97e256987811bc3edd31b70c9a4693e",
                "hostname": self.host,
                "ip_address": "127.0.0.1",
                "python_version": self.python,
                "created_at": when,
                "mode": "stdout",
            },
            separators=(",", ":"),
        )


def run_cloudwatch(case: str, n: int, endpoint: str) -> dict[str, float]:
    stream = f"{case}-{time.time_ns()}"
    if case == "flowtrail-cloudwatch":
        sys.path.insert(0, str(ROOT / "src"))
        from flowtrail import make_handler

        handler = make_handler(
            {
                "type": "restapi",
                "service_type": "cloudwatch",
                "api_url": endpoint,
                "log_group": "bench",
                "log_stream": stream,
                "queue_size": n,
            }
        )
        t0 = time.perf_counter()
        loop = log_through(handler, n)
    elif case == "cloudwatch-floor":
        # No logging library: the same JSON documents, made and sent in batches of
        # 1 MiB / 10,000 events with a prepared client. What moto itself allows.
        import boto3

        client = boto3.client("logs", endpoint_url=endpoint)
        for call, args in (
            (client.create_log_group, {"logGroupName": "bench"}),
            (client.create_log_stream, {"logGroupName": "bench", "logStreamName": stream}),
        ):
            try:
                call(**args)
            except client.exceptions.ResourceAlreadyExistsException:
                pass
        fmt = SameFieldsFormatter()
        import logging

        t0 = time.perf_counter()
        events: list[dict[str, object]] = []
        size = 0
        for i in range(n):
            record = logging.LogRecord("b", logging.INFO, "x.py", 1, f"record number {i}", (), None)
            record.__dict__.update(EXTRAS)
            message = fmt.format(record)
            if len(events) == 10_000 or size + len(message) + 26 > 1_048_576:
                client.put_log_events(logGroupName="bench", logStreamName=stream, logEvents=events)
                events, size = [], 0
            events.append({"timestamp": int(record.created * 1000), "message": message})
            size += len(message) + 26
        loop = time.perf_counter() - t0
        if events:
            client.put_log_events(logGroupName="bench", logStreamName=stream, logEvents=events)
    else:
        import logging

        import boto3
        import watchtower

        logger = logging.getLogger("bench-watchtower")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = watchtower.CloudWatchLogHandler(
            log_group_name="bench",
            log_stream_name=stream,
            boto3_client=boto3.client("logs", endpoint_url=endpoint),
        )
        handler.setFormatter(SameFieldsFormatter())
        logger.addHandler(handler)
        adapter = logging.LoggerAdapter(logger, EXTRAS)
        t0 = time.perf_counter()
        for i in range(n):
            adapter.info(f"record number {i}")
        loop = time.perf_counter() - t0
        handler.flush()
    total = time.perf_counter() - t0
    if case == "watchtower":
        handler.close()  # what its flush() left behind counts as received, if it arrives
    got = cloudwatch_count(endpoint, "bench", stream)
    return {"caller_us": loop / n * 1e6, "records_per_s": n / total, "received": got}


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
        loop = log_through(handler, n, flush=False)
        start_wait = time.perf_counter()
        assert get_trace("bench-run", handlers=[handler], extras=EXTRAS).flush(600)
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


#: Each remote flowtrail case and the peers it is compared with.
PEERS = {
    "flowtrail-datadog": ("stdlib-http",),
    "flowtrail-loki": ("python-logging-loki", "stdlib-http"),
    "flowtrail-generic": ("stdlib-http",),
    "flowtrail-cloudwatch": ("watchtower",),
}
#: The plain-Python floor of the same work, where there is one.
FLOORS = {"flowtrail-cloudwatch": "cloudwatch-floor"}
CLOUDWATCH = ("flowtrail-cloudwatch", "watchtower", "cloudwatch-floor")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    import socket

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    import os
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--peer-n", type=int, default=5_000)
    parser.add_argument("--cw-n", type=int, default=50_000, help="records per CloudWatch case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.case:
        if args.case in CLOUDWATCH:
            print(json.dumps(run_cloudwatch(args.case, args.n, args.endpoint)))
        else:
            print(json.dumps(run_case(args.case, args.n, args.port)))
        return
    cases = [
        "flowtrail-file",
        "flowtrail-datadog",
        "flowtrail-loki",
        "flowtrail-generic",
        "stdlib-http",
        "python-logging-loki",
        "flowtrail-cloudwatch",
        "watchtower",
        "cloudwatch-floor",
    ]
    if args.only:
        cases = [c for c in cases if c in args.only.split(",")]
    results: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    sizes: dict[str, int] = {}
    moto = None
    endpoint = ""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            if any(case in CLOUDWATCH for case in cases):
                moto, endpoint = _start_moto()
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            port = int(port_file.read_text())
            for round_no in range(args.rounds):
                order = cases if round_no % 2 == 0 else cases[::-1]
                for case in order:
                    if case in CLOUDWATCH:
                        n = args.cw_n
                    else:
                        n = args.n if case.startswith("flowtrail") else args.peer_n
                    sizes[case] = n
                    received(port, "/reset")
                    work = Path(tempfile.mkdtemp(dir=tmp))
                    command = [sys.executable, __file__, "--case", case, "--n", str(n)]
                    command += ["--port", str(port), "--endpoint", endpoint]
                    result = subprocess.run(
                        command,
                        cwd=work,
                        capture_output=True,
                        text=True,
                        env={**os.environ, **AWS_ENV},
                    )
                    if result.returncode != 0:
                        print(f"{case:22} FAILED: {result.stderr.strip().splitlines()[-1:]}")
                        continue
                    results[case].append(json.loads(result.stdout.strip().splitlines()[-1]))
        finally:
            server.terminate()
            server.wait(10)
            if moto is not None:
                moto.terminate()
                moto.wait(10)
    medians: dict[str, dict[str, float]] = {}
    print(f"medians of {args.rounds} rounds (alternating order)")
    print(f"{'case':22} {'N':>8} {'caller µs/call':>15} {'records/s':>12}")
    for case in cases:
        runs = results[case]
        if not runs:
            continue
        n = sizes[case]
        median = {k: statistics.median(r[k] for r in runs) for k in ("caller_us", "records_per_s")}
        medians[case] = median
        lost = [r["received"] for r in runs if r["received"] != n]
        flag = f"  (received {lost} of {n})" if lost else ""
        print(
            f"{case:22} {n:>8} {median['caller_us']:>15.2f} {median['records_per_s']:>12,.0f}{flag}"
        )
    print("\nratios (target: records/s >= 10x the best peer; caller <= flowtrail-file)")
    file_cost = medians.get("flowtrail-file", {}).get("caller_us")
    for case, peers in PEERS.items():
        if case not in medians:
            continue
        mine = medians[case]
        present = [p for p in peers if p in medians]
        if present:
            best = max(present, key=lambda p: medians[p]["records_per_s"])
            ratio = mine["records_per_s"] / medians[best]["records_per_s"]
            print(f"{case:22} records/s {ratio:8.1f}x {best}")
        floor = FLOORS.get(case)
        if floor in medians:
            ratio = mine["records_per_s"] / medians[floor]["records_per_s"]
            print(f"{case:22} records/s {ratio:8.2f}x {floor} (no logging library)")
        if file_cost:
            print(f"{case:22} caller    {mine['caller_us'] / file_cost:8.2f}x flowtrail-file")


if __name__ == "__main__":
    main()
