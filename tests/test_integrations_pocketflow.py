"""flowtrail.integrations.pocketflow against the real PocketFlow package: a flow with a
nested flow, a batch node, a retry that recovers, a failure that does not and logging
inside, written to a real SQLite store and read back (spans, records, ``flowtrail show``)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from flowtrail.handlers.sqlite import SQLiteHandler
from flowtrail.integrations import pocketflow as traced
from flowtrail.integrations._common import MissingEngine
from flowtrail.pipeline import flush_all
from flowtrail.records import Span
from flowtrail.trace import get_trace
from test_cli import cli

try:
    import pocketflow as pf
except ImportError:  # pragma: no cover - the message says what to install
    pytest.fail("these tests need PocketFlow: pip install -e '.[test]' (or 'pocketflow')")

log = logging.getLogger("etl.pocketflow")


# ---------------------------------------------------------------- the flow under test
class ReadFileNode(pf.Node):
    def __init__(self) -> None:
        super().__init__()
        self.node_id = "reader"

    def prep(self, shared: dict[str, Any]) -> str:
        log.info("Opening file: input.txt")
        return "a,b,c"

    def exec(self, text: str) -> list[str]:
        return text.split(",")

    def post(self, shared: dict[str, Any], prep_res: str, rows: list[str]) -> str:
        shared["rows"] = rows
        return "parse"


class FlakyTransformNode(pf.Node):
    """Fails on its first attempt of every run, then works."""

    def prep(self, shared: dict[str, Any]) -> list[str]:
        shared.setdefault("transform_calls", 0)
        return shared["rows"]

    def exec(self, rows: list[str]) -> list[str]:
        shared_calls = FlakyTransformNode.calls = getattr(FlakyTransformNode, "calls", 0) + 1
        trace = traced.current_trace()
        if trace is not None:  # None once uninstrumented
            trace.info(f"Processing {len(rows)} records")
        if shared_calls % 2 == 1:
            raise ConnectionError("upstream busy")
        return [row.upper() for row in rows]

    def post(self, shared: dict[str, Any], prep_res: Any, rows: list[str]) -> None:
        shared["rows"] = rows


class UpperBatchNode(pf.BatchNode):
    def prep(self, shared: dict[str, Any]) -> list[str]:
        return shared["rows"]

    def exec(self, row: str) -> str:
        log.debug("item %s", row)
        return row * 2

    def post(self, shared: dict[str, Any], prep_res: Any, rows: list[str]) -> None:
        shared["doubled"] = rows
        log.warning("doubled %d rows", len(rows))


class BrokenWriteNode(pf.Node):
    def exec(self, prep_res: Any) -> None:
        log.info("writing output")
        raise PermissionError("output.txt is read-only")


class TransformFlow(pf.Flow):
    pass


class PipelineFlow(pf.Flow):
    pass


def make_flow(*, broken: bool = False) -> pf.Flow:
    reader = ReadFileNode()
    transform = TransformFlow(start=FlakyTransformNode(max_retries=3))
    transform.start_node >> UpperBatchNode()
    reader - "parse" >> transform
    if broken:
        transform >> BrokenWriteNode(max_retries=2)
    return PipelineFlow(start=reader)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    """PocketFlow instrumented into a SQLite store; root logger bridged at DEBUG."""
    path = tmp_path / "traces.db"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    traced.instrument(handlers=[{"type": "sqlite", "path": str(path)}])
    try:
        yield SQLiteHandler(path=str(path))
    finally:
        traced.uninstrument()
        root.setLevel(level)


def only_run(store: SQLiteHandler) -> tuple[str, list[Span], list[Any]]:
    flush_all(10.0)
    run_ids = store.run_ids()
    assert len(run_ids) == 1, run_ids
    data = store.find_trace_with_id(run_ids[0])
    return run_ids[0], list(data.spans), list(data.meta)


def by_name(spans: list[Span]) -> dict[str, list[Span]]:
    found: dict[str, list[Span]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        found.setdefault(f"{span.kind}.{span.name}", []).append(span)
    return found


# ---------------------------------------------------------------- tests
def test_flow_nodes_and_attempts_become_spans(store: SQLiteHandler) -> None:
    shared: dict[str, Any] = {}
    make_flow().run(shared)
    assert shared["doubled"] == ["AA", "BB", "CC"]
    run_id, spans, records = only_run(store)
    assert run_id.startswith("pocketflow-")
    names = by_name(spans)
    assert sorted(names) == [
        "attempt.flaky_transform",
        "flow.transform",
        "node.flaky_transform",
        "node.read_file",
        "node.upper_batch",
        "workflow.pipeline",
    ]
    # Each span written once: 1 workflow, 1 nested flow, 3 nodes, 2 attempts.
    assert len(spans) == len({s.span_id for s in spans}) == 7
    (workflow,) = names["workflow.pipeline"]
    (reader,) = names["node.read_file"]
    (subflow,) = names["flow.transform"]
    (flaky,) = names["node.flaky_transform"]
    (batch,) = names["node.upper_batch"]
    attempts = names["attempt.flaky_transform"]
    assert workflow.parent_span_id is None
    assert reader.parent_span_id == subflow.parent_span_id == workflow.span_id
    assert flaky.parent_span_id == batch.parent_span_id == subflow.span_id
    assert [a.parent_span_id for a in attempts] == [flaky.span_id] * 2
    assert len({s.trace_id for s in spans}) == 1
    # Seed 004's attributes.
    assert reader.attributes["node.id"] == "reader"
    assert reader.attributes["node.type"] == "read_file"
    assert '"class": "ReadFileNode"' in reader.attributes["node.config"]
    assert '"max_retries": 3' in flaky.attributes["node.config"]
    # The retry: attempt 1 failed with its error, attempt 2 passed; the node is ok.
    assert [a.attributes["attempt"] for a in attempts] == [1, 2]
    assert [a.status for a in attempts] == ["error", "ok"]
    assert attempts[0].status_message == "ConnectionError: upstream busy"
    assert [e.name for e in attempts[0].events if e.name in ("retry", "exception")] == [
        "retry",
        "exception",
    ]
    assert flaky.attributes["attempts"] == 2
    assert {s.status for s in spans if s not in attempts[:1]} == {"ok"}
    # Action and next node as events.
    events = {e.name: e.attributes for e in reader.events if e.name in ("action", "next")}
    assert events == {
        "action": {"action": "parse"},
        "next": {"next.id": "transform", "next.type": "transform"},
    }
    # Logs inside prep / exec / post carry their node's span, stdlib and flowtrail alike.
    span_of = {r.message: r.span_id for r in records}
    assert span_of["Opening file: input.txt"] == reader.span_id
    assert [r.span_id for r in records if r.message == "Processing 3 records"] == [
        attempts[0].span_id,
        attempts[1].span_id,
    ]
    assert span_of["doubled 3 rows"] == batch.span_id
    assert [r.message for r in records if r.span_id == batch.span_id][:3] == [
        "item A",
        "item B",
        "item C",
    ]
    assert {r.stage_name for r in records if r.span_id == reader.span_id} == {"read_file"}
    assert all(r.run_id == run_id for r in records)
    summary = store.runs()[0]
    assert (summary.status, summary.retried) == ("ok", 1)


def test_failure_that_does_not_recover(store: SQLiteHandler) -> None:
    with pytest.raises(PermissionError):
        make_flow(broken=True).run({})
    run_id, spans, records = only_run(store)
    names = by_name(spans)
    (workflow,) = names["workflow.pipeline"]
    (broken,) = names["node.broken_write"]
    attempts = names["attempt.broken_write"]
    assert [a.status for a in attempts] == ["error", "error"]
    assert [a.attributes["attempt"] for a in attempts] == [1, 2]
    assert broken.status == workflow.status == "error"
    assert broken.status_message == "PermissionError: output.txt is read-only"
    assert names["flow.transform"][0].status == "ok"
    # One exception record per failed attempt, each in its attempt's span.
    errors = [r for r in records if r.exception_type == "PermissionError"]
    assert [r.span_id for r in errors] == [a.span_id for a in attempts]
    summary = store.runs()[0]
    assert summary.status == "error"


def test_show_prints_seed_004_human_format(store: SQLiteHandler, tmp_path: Path) -> None:
    make_flow().run({})
    run_id, _, _ = only_run(store)
    out = cli("show", run_id, "--store", f"sqlite:///{tmp_path / 'traces.db'}", cwd=tmp_path)
    text = out.stdout
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[0].startswith("Workflow Trace: ")
    assert any(line.startswith("→ workflow.pipeline [") for line in lines)
    assert "  → node.read_file [reader]" in lines
    assert "    [INFO] Opening file: input.txt" in lines
    assert any(line.startswith("  ← node.read_file (") and line.endswith("✓") for line in lines)
    assert "      → attempt.flaky_transform [attempt=1, max_retries=3]" in lines
    assert any(
        "← attempt.flaky_transform" in line and "✗ ConnectionError" in line for line in lines
    )
    assert "- Status: ok (retried): 1 failed attempt passed when retried" in lines
    assert any(line.startswith("← workflow.pipeline (") for line in lines)


def test_a_fallback_that_returns_recovers_the_node(store: SQLiteHandler) -> None:
    class GuessNode(pf.Node):
        def exec(self, prep_res: Any) -> str:
            raise LookupError("no match")

        def exec_fallback(self, prep_res: Any, exc: Exception) -> str:
            log.warning("using the default")
            return "default"

        def post(self, shared: dict[str, Any], prep_res: Any, value: str) -> None:
            shared["value"] = value

    shared: dict[str, Any] = {}
    pf.Flow(start=GuessNode(max_retries=2)).run(shared)
    assert shared["value"] == "default"
    _, spans, records = only_run(store)
    attempts = by_name(spans)["attempt.guess"]
    assert [(a.status, a.attributes.get("fallback")) for a in attempts] == [
        ("error", None),
        ("ok", True),
    ]
    assert [e.name for e in attempts[1].events if e.name != "log"] == ["exception", "fallback"]
    assert by_name(spans)["node.guess"][0].status == "ok"
    assert [r.span_id for r in records if r.message == "using the default"] == [attempts[1].span_id]
    assert store.runs()[0].status == "ok"


def test_async_flow_batch_flow_and_parallel_batch(store: SQLiteHandler) -> None:
    class FetchNode(pf.AsyncNode):
        tries = 0

        async def exec_async(self, prep_res: Any) -> str:
            FetchNode.tries += 1
            log.info("fetch try %d", FetchNode.tries)
            if FetchNode.tries == 1:
                raise TimeoutError("slow")
            return "page"

    class ManyNode(pf.AsyncParallelBatchNode):
        async def prep_async(self, shared: dict[str, Any]) -> list[int]:
            return [1, 2, 3]

        async def exec_async(self, item: int) -> int:
            await asyncio.sleep(0.01 * (3 - item))
            log.info("item %d", item)
            return item

    class PerFileNode(pf.Node):
        def exec(self, prep_res: Any) -> None:
            log.info("file %s", self.params["file"])

    class FilesFlow(pf.BatchFlow):
        def prep(self, shared: dict[str, Any]) -> list[dict[str, str]]:
            return [{"file": "a.txt"}, {"file": "b.txt"}]

    class CrawlFlow(pf.AsyncFlow):
        pass

    fetch = FetchNode(max_retries=2)
    fetch >> ManyNode() >> FilesFlow(start=PerFileNode())
    asyncio.run(CrawlFlow(start=fetch).run_async({}))
    run_id, spans, records = only_run(store)
    names = by_name(spans)
    (root,) = names["workflow.crawl"]
    assert [a.status for a in names["attempt.fetch"]] == ["error", "ok"]
    (many,) = names["node.many"]
    (files,) = names["flow.files"]
    batches = names["batch.files"]
    assert [b.parent_span_id for b in batches] == [files.span_id] * 2
    assert ['"a.txt"' in b.attributes["batch.params"] for b in batches] == [True, False]
    per_file = names["node.per_file"]
    assert [p.parent_span_id for p in per_file] == [b.span_id for b in batches]
    assert {many.parent_span_id, files.parent_span_id} == {root.span_id}
    in_span = {r.message: r.span_id for r in records}
    assert {in_span[f"item {i}"] for i in (1, 2, 3)} == {many.span_id}
    assert in_span["file a.txt"] == per_file[0].span_id
    assert in_span["file b.txt"] == per_file[1].span_id
    assert len(spans) == len({s.span_id for s in spans}) == 10


def test_each_run_is_its_own_and_nests_in_an_open_span(
    store: SQLiteHandler, tmp_path: Path
) -> None:
    flow = make_flow()
    flow.run({})
    flow.run({})
    flush_all(10.0)
    assert len(store.run_ids()) == 2
    # Nodes are copied per run: the integration never put anything on an instance.
    for node in (flow, flow.start_node):
        assert not {"_run", "_exec", "_orch"} & set(vars(node))
    trace = get_trace(
        "outer-run", handlers=[{"type": "sqlite", "path": str(tmp_path / "traces.db")}]
    )
    with trace.span("job", name="nightly") as job:
        flow.run({})
    flush_all(10.0)
    spans = store.find_trace_with_id("outer-run").spans
    (workflow,) = [s for s in spans if s.kind == "workflow"]
    assert workflow.parent_span_id == job.span_id


def test_uninstrument_puts_the_classes_back(tmp_path: Path) -> None:
    originals = {(cls, name): cls.__dict__[name] for cls, name in _patched_methods()}
    traced.instrument(handlers=[{"type": "sqlite", "path": str(tmp_path / "t.db")}])
    assert traced.instrumented()
    assert all(cls.__dict__[name] is not originals[cls, name] for cls, name in originals)
    traced.instrument(handlers=[{"type": "sqlite", "path": str(tmp_path / "t.db")}])  # again
    traced.uninstrument()
    assert not traced.instrumented()
    assert all(cls.__dict__[name] is originals[cls, name] for cls, name in originals)
    make_flow().run({})
    flush_all(10.0)
    assert not (tmp_path / "t.db").exists()


def _patched_methods() -> list[tuple[type, str]]:
    return [
        (pf.BaseNode, "_run"),
        (pf.Flow, "_run"),
        (pf.BatchFlow, "_run"),
        (pf.AsyncNode, "_run_async"),
        (pf.AsyncFlow, "_run_async"),
        (pf.Node, "_exec"),
        (pf.AsyncNode, "_exec"),
        (pf.Flow, "_orch"),
        (pf.AsyncFlow, "_orch_async"),
    ]


def test_secrets_in_params_are_masked(store: SQLiteHandler) -> None:
    class LoginNode(pf.Node):
        pass

    flow = pf.Flow(start=LoginNode())
    flow.set_params({"user": "ann", "password": "hunter2-secret"})
    flow.run({})
    _, spans, _ = only_run(store)
    (login,) = [s for s in spans if s.name == "login"]
    assert "hunter2-secret" not in login.attributes["node.config"]
    assert '"user": "ann"' in login.attributes["node.config"]


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pocketflow", None)
    with pytest.raises(MissingEngine, match=r"pip install 'flowtrail\[pocketflow\]'"):
        traced.instrument()
    assert not traced.instrumented()
