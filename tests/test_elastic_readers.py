"""The Elasticsearch reader gives the SQLite store's answers for the same records: search
by every filter, runs and their status, a run's records and spans, counts, run ids, and
the ``flowtrail`` commands with ``--store elasticsearch+http://...``. On Elasticsearch 7.9
and on osmem (OpenSearch)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowtrail import ElasticHandler, SQLiteHandler, get_trace
from flowtrail.cli import main
from flowtrail.fronts import ElasticsearchTrace
from flowtrail.pipeline import flush_all
from store_cases import dataset, search_cases


def new_index() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def stores(search_url: str, tmp_path: Path):
    """(SQLite store, Elasticsearch store, its URL) holding the same records and spans."""
    index = new_index()
    sqlite = SQLiteHandler(path=str(tmp_path / "same.db"), flush_interval=0.01)
    elastic = ElasticHandler(hosts=[search_url], index=index, flush_interval=0.01)
    records = [r for run in dataset().values() for r in run]
    sqlite.export(records)
    elastic.export(records)
    # A traced run with spans: a retried stage, a failing job, a child run.
    handlers = [sqlite, elastic]
    trace = get_trace("spanrun", handlers=handlers, extras={"workflow_name": "spans-wf"})
    with trace.span("workflow", name="main"):
        trace.info("inside main")
        for attempt in range(2):
            try:
                with trace.span("stage", name="flaky", attempt=attempt):
                    if attempt == 0:
                        raise ValueError("first try fails")
                    trace.info("second try works")
            except ValueError:
                trace.warning("retrying flaky")
    child = get_trace("spanchild", parent_run_id="spanrun", handlers=handlers)
    try:
        with child.span("job", name="broken"):
            child.info("about to fail")
            raise RuntimeError("job broke")
    except RuntimeError:
        child.exception("job failed")
    flush_all(30)
    return sqlite, elastic, f"elasticsearch+{search_url}/{index}"


def test_search_gives_the_sqlite_answers(stores) -> None:
    sqlite, elastic, _ = stores
    for kwargs, expected in search_cases():
        want = [
            r.message for r in sqlite.search(**kwargs) if r.run_id in ("alpha", "beta", "gamma")
        ]
        got = [
            r.message for r in elastic.search(**kwargs) if r.run_id in ("alpha", "beta", "gamma")
        ]
        if "limit" not in kwargs:
            assert want == expected, kwargs
        assert got == want, kwargs
        assert elastic.search(**kwargs) == sqlite.search(**kwargs), kwargs


def test_search_by_user_and_tags(search_url: str) -> None:
    elastic = ElasticHandler(hosts=[search_url], index=new_index(), flush_interval=0.01)
    a = get_trace("u1", handlers=[elastic], extras={"user_id": "user-1", "tags": ["team:a", "x"]})
    b = get_trace("u2", handlers=[elastic], extras={"user_id": "user-2", "tags": ["team:b", "x"]})
    a.info("from a")
    b.info("from b")
    flush_all(30)
    assert [r.message for r in elastic.search(user="user-1")] == ["from a"]
    assert [r.message for r in elastic.search(tags=["x", "team:b"])] == ["from b"]
    assert len(elastic.search(tags=["x"])) == 2


def test_runs_and_status_are_the_sqlite_ones(stores) -> None:
    sqlite, elastic, _ = stores
    assert elastic.runs() == sqlite.runs()
    assert elastic.runs(workflow="etl") == sqlite.runs(workflow="etl")
    assert elastic.runs(limit=2) == sqlite.runs(limit=2)
    statuses = {s.run_id: s.status for s in elastic.runs()}
    assert statuses["spanchild"] == "error" and statuses["spanrun"] in ("ok", "retried")
    assert elastic.run_ids() == sqlite.run_ids()
    assert elastic.run_ids("span") == ["spanchild", "spanrun"]


def test_one_run_is_read_as_from_sqlite(stores) -> None:
    sqlite, elastic, _ = stores
    for run_id in ("alpha", "beta", "spanrun", "spanchild"):
        for children in (True, False):
            mine = elastic.find_trace_with_id(run_id, include_children=children)
            theirs = sqlite.find_trace_with_id(run_id, include_children=children)
            assert mine.meta == theirs.meta, run_id
            assert mine.stdout == theirs.stdout and mine.stderr == theirs.stderr
            assert mine.spans == theirs.spans
            assert mine.open_spans == theirs.open_spans
            assert elastic.record_counts(run_id, include_children=children) == (
                sqlite.record_counts(run_id, include_children=children)
            )
            assert list(elastic.iter_records(run_id, include_children=children)) == list(
                sqlite.iter_records(run_id, include_children=children)
            )
            assert elastic.run_spans(run_id, include_children=children) == sqlite.run_spans(
                run_id, include_children=children
            )
        assert list(elastic.iter_records(run_id, level="warning")) == list(
            sqlite.iter_records(run_id, level="warning")
        )
    assert elastic.spans(run_id="spanrun") == sqlite.spans(run_id="spanrun")
    assert elastic.spans(workflow="spans-wf") == sqlite.spans(workflow="spans-wf")
    assert elastic.find_trace_with_id("nobody", force_raise=False).meta == []
    with pytest.raises(LookupError):
        elastic.find_trace_with_id("nobody")


def test_elasticsearch_trace_finds_traces(stores, search_url: str) -> None:
    _, elastic, _ = stores
    extras = {"es_hosts": search_url, "index_name": elastic.config.index}
    traces = list(ElasticsearchTrace.find_traces(extras=extras))
    assert len(traces) == len(elastic.runs())
    found = ElasticsearchTrace.find_trace_with_id(run_id="alpha", extras=extras)
    assert [r.message for r in found.meta][:4] == [
        "[WORKFLOW]: Start alpha",
        "loading rows",
        "Retrying upload",
        "Upload FAILED",
    ]
    import asyncio

    again = asyncio.run(ElasticsearchTrace.afind_trace_with_id("alpha", extras=extras))
    assert again.meta == found.meta
    assert len(asyncio.run(ElasticsearchTrace.afind_traces(extras=extras))) == len(traces)


def test_elasticsearch_trace_writes(search_url: str) -> None:
    index = new_index()
    trace = ElasticsearchTrace(
        url=search_url, run_id="front-1", extras={"index_name": index, "workflow_name": "w"}
    )

    async def work() -> None:
        await trace.ainfo("async hello")
        await trace.aerror("async error")

    import asyncio

    trace.info("sync hello")
    asyncio.run(work())
    trace.close()
    found = trace.find_trace_with_id("front-1")
    assert [r.message for r in found.meta] == ["sync hello", "async hello", "async error"]


def _cli(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _same(text: str) -> str:
    """Output without the store's name."""
    text = re.sub(r"SQLite store \S+|'elastic' index \S+ at \S+", "STORE", text)
    return text


@pytest.mark.parametrize(
    "args",
    [
        ["runs"],
        ["runs", "--workflow", "etl"],
        ["show", "alpha"],
        ["show", "spanrun"],
        ["search", "upload"],
        ["search", "--level", "error"],
        ["stats"],
        ["stats", "--run", "spanrun"],
        ["tail", "spanrun", "--idle-exit", "0.2", "--interval", "0.05"],
    ],
)
def test_the_command_line_reads_elasticsearch_like_sqlite(stores, args: list[str]) -> None:
    sqlite, _, url = stores
    with_sqlite = _cli([*args, "--store", f"sqlite:///{sqlite.config.path}"])
    with_elastic = _cli([*args, "--store", url])
    assert _same(with_elastic) == _same(with_sqlite)


def test_report_from_elasticsearch(stores, tmp_path: Path) -> None:
    sqlite, _, url = stores
    a, b = tmp_path / "a.html", tmp_path / "b.html"
    _cli(["report", "spanrun", "--store", f"sqlite:///{sqlite.config.path}", "-o", str(a)])
    _cli(["report", "spanrun", "--store", url, "-o", str(b)])
    assert "flaky" in b.read_text() and "inside main" in b.read_text()
    assert len(b.read_text()) == pytest.approx(len(a.read_text()), rel=0.05)


def test_a_missing_cluster_or_index_is_a_clear_error(search_url: str) -> None:
    index = f"0-{new_index()}"  # first of the names listed (at most 10 are)
    written = ElasticHandler(hosts=[search_url], index=index)
    get_trace("named-run", handlers=[written]).info("here")
    written.flush(30)
    result = CliRunner().invoke(
        main, ["runs", "--store", f"elasticsearch+{search_url}/nothing-here"]
    )
    assert result.exit_code != 0
    assert "no index 'nothing-here'" in result.output
    # The flowtrail indices that are there are named.
    listed = result.output.split("flowtrail indices there: ")[1]
    assert index in listed and f"{index}-spans" not in listed
    result = CliRunner().invoke(main, ["runs", "--store", "elasticsearch+http://127.0.0.1:9/x"])
    assert result.exit_code != 0 and "cannot read" in result.output


def test_demo_writes_to_elasticsearch_and_names_the_store_without_its_password(
    search_url: str,
) -> None:
    index = new_index()
    host = search_url.split("://", 1)[1]
    url = f"elasticsearch+http://demo-user:demo-secret@{host}/{index}"
    result = CliRunner().invoke(main, ["demo", "--quiet", "--store", url])
    assert result.exit_code == 0, result.output
    assert "demo-secret" not in result.output
    shown = f"--store elasticsearch+http://demo-user@{host}/{index}"
    assert f"flowtrail show --failed {shown}" in result.output
    failed = _cli(["show", "--failed", "--store", f"elasticsearch+{search_url}/{index}"])
    assert "PermissionError" in failed and "Status: error" in failed
