"""Engine integrations: the cost of tracing per node or task, in one run.

For each engine the same flow runs in three ways, each in a fresh interpreter, the
cases alternating over ``--repeat`` rounds (medians count, the machine is shared):

- ``bare``: the engine alone (its own tracing off where it has one);
- ``integration``: ``flowtrail.integrations.<engine>.instrument()`` writing to SQLite,
  timed until every span is stored;
- ``manual``: the engine alone plus a bare ``with trace.span("node", ...)`` around the
  work of every node or task, to SQLite, timed until stored.

It prints the overhead per node (case minus bare, divided by the nodes) and the ratio
integration / manual (target: at most 1.5). PocketFlow runs 10,000 trivial nodes; the
heavier engines fewer (ddeutil stages, Celery eager tasks, Dagster ops, Prefect tasks):
their own cost per node is milliseconds, so more would only measure the engine. For
Prefect, ``otel`` is its built-in OpenTelemetry tracing with an SDK provider and a
processor that does nothing, the peer the integration is built on.

    python benchmarks/bench_engines.py [--engines pocketflow,ddeutil,celery,dagster,prefect]
        [--repeat 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMON = r"""
import sys, time, sqlite3, os
import flowtrail  # imported before any timing, in every case
case, n, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
HANDLERS = [{"type": "sqlite", "path": db}]

def stored():
    try:
        return sqlite3.connect(db).execute("SELECT COUNT(*) FROM traces_spans").fetchone()[0]
    except sqlite3.OperationalError:
        return 0

def manual_span():
    from flowtrail import get_trace
    trace = get_trace("bench-manual", handlers=HANDLERS)
    return trace

def finish(t0, expect):
    flowtrail.flush_all(60)
    elapsed = time.perf_counter() - t0
    if expect:
        got = stored()
        assert got >= expect, (got, expect)
    print(elapsed)
"""

POCKETFLOW = r"""
import pocketflow as pf
trace = manual_span() if case == "manual" else None

class Work(pf.Node):
    def exec(self, prep_res):
        if trace is not None:
            with trace.span("node", name="work", **{"node.id": "w"}):
                return 1
        return 1

nodes = [Work() for _ in range(n)]
for a, b in zip(nodes, nodes[1:]):
    a >> b
flow = pf.Flow(start=nodes[0])
if case == "integration":
    from flowtrail.integrations import pocketflow as traced
    traced.instrument(handlers=HANDLERS, logs=False)
t0 = time.perf_counter()
flow.run({})
finish(t0, n if case != "bare" else 0)
"""

DDEUTIL = r"""
os.environ["WORKFLOW_LOG_TRACE_HANDLERS"] = '[{"type": "file", "path": "' + db + '.files"}]'
from ddeutil.workflow import Workflow
trace = manual_span() if case == "manual" else None
if trace is not None:
    import ddeutil.workflow.stages as stages
    original = stages.EmptyStage.process
    def process(self, *args, **kwargs):
        with trace.span("stage", name=self.name):
            return original(self, *args, **kwargs)
    stages.EmptyStage.process = process
wf = Workflow.model_validate({"name": "bench", "jobs": {"one": {"stages": [
    {"name": f"s{i}", "echo": "x"} for i in range(n)]}}})
if case == "integration":
    from flowtrail.integrations import ddeutil as traced
    traced.instrument(handlers=HANDLERS, logs=False)
t0 = time.perf_counter()
result = wf.execute({})
assert result.status.name == "SUCCESS", result.status
finish(t0, n if case != "bare" else 0)
"""

CELERY = r"""
from celery import Celery
app = Celery("bench", broker="memory://", backend="cache+memory://")
app.conf.task_always_eager = True
trace = manual_span() if case == "manual" else None

@app.task
def work(i):
    if trace is not None:
        with trace.span("task", name="work"):
            return i
    return i

if case == "integration":
    from flowtrail.integrations import celery as traced
    traced.instrument(handlers=HANDLERS, logs=False)
# As in a worker of a traced run: every task carries its sender's context.
SENDER = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
          "baggage": "flowtrail.run_id=bench-run"}
work.apply(args=(0,), headers=SENDER)  # warm
t0 = time.perf_counter()
for i in range(n):
    work.apply(args=(i,), headers=SENDER)
finish(t0, n if case != "bare" else 0)
"""

DAGSTER = r"""
import dagster as dg
trace = manual_span() if case == "manual" else None

def make(i):
    @dg.op(name=f"op{i}")
    def work(x):
        if trace is not None:
            with trace.span("stage", name=f"op{i}"):
                return x
        return x
    return work

ops = [make(i) for i in range(n)]


@dg.op
def start():
    return 1


@dg.job
def chain():
    value = start()
    for op in ops:
        value = op(value)


QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
if case == "integration":
    from flowtrail.integrations import dagster as traced
    traced.instrument(handlers=HANDLERS, logs=False)
t0 = time.perf_counter()
assert chain.execute_in_process(run_config=QUIET).success
finish(t0, n if case != "bare" else 0)
"""

PREFECT = r"""
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
if case == "otel":
    from opentelemetry import trace as ot
    from opentelemetry.sdk.trace import TracerProvider, SpanProcessor
    provider = TracerProvider()
    provider.add_span_processor(SpanProcessor())
    ot.set_tracer_provider(provider)
from prefect import flow, task
from prefect.testing.utilities import prefect_test_harness
trace = manual_span() if case == "manual" else None

@task
def work(i):
    if trace is not None:
        with trace.span("stage", name="work"):
            return i
    return i

@flow
def many():
    for i in range(n):
        work(i)

if case == "integration":
    from flowtrail.integrations import prefect as traced
    traced.instrument(handlers=HANDLERS, logs=False)
with prefect_test_harness():
    many.fn  # noqa
    t0 = time.perf_counter()
    many()
    finish(t0, n if case in ("integration", "manual") else 0)
"""

ENGINES = {
    "pocketflow": (POCKETFLOW, 10_000, ("bare", "integration", "manual")),
    "ddeutil": (DDEUTIL, 300, ("bare", "integration", "manual")),
    "celery": (CELERY, 1_000, ("bare", "integration", "manual")),
    "dagster": (DAGSTER, 100, ("bare", "integration", "manual")),
    "prefect": (PREFECT, 200, ("bare", "otel", "integration", "manual")),
}


def run_case(engine: str, case: str, n: int) -> float:
    code, _, _ = ENGINES[engine]
    with tempfile.TemporaryDirectory() as folder:
        db = os.path.join(folder, "bench.db")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
        env["PYTHONPATH"] = str(ROOT / "src")
        result = subprocess.run(
            [sys.executable, "-c", COMMON + code, case, str(n), db],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            raise SystemExit(f"{engine}/{case} failed:\n{result.stderr[-3000:]}")
        return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the node counts")
    args = parser.parse_args()
    for engine in args.engines.split(","):
        _, base, cases = ENGINES[engine]
        n = max(1, int(base * args.scale))
        times: dict[str, list[float]] = {case: [] for case in cases}
        for _ in range(args.repeat):
            for case in cases:  # alternating: every round runs each case once
                times[case].append(run_case(engine, case, n))
        median = {case: statistics.median(values) for case, values in times.items()}
        print(f"\n{engine}: {n} nodes, median of {args.repeat} (seconds: {median})")
        for case in cases:
            per_node = median[case] / n * 1e6
            line = f"  {case:<12} {per_node:9.1f} µs/node"
            if case != "bare":
                line += f"   overhead {(median[case] - median['bare']) / n * 1e6:8.1f} µs/node"
            print(line)
        manual = median["manual"] - median["bare"]
        integration = median["integration"] - median["bare"]
        spread = max(max(v) - min(v) for v in times.values())
        if manual <= 0 or integration <= 0:
            print(
                f"  overheads within the run-to-run spread ({spread / n * 1e6:.1f} µs/node): "
                "the engine's own cost per node dominates"
            )
        else:
            print(f"  integration / manual overhead: {integration / manual:.2f} (target <= 1.5)")
        if "otel" in median:
            otel = median["otel"] - median["bare"]
            print(f"  built-in OpenTelemetry overhead: {otel / n * 1e6:.1f} µs/node")


if __name__ == "__main__":
    main()
