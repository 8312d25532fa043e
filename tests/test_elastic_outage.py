"""Outages of a real Elasticsearch: a node stopped while records are written, then
restarted. The caller never waits, nothing is lost (the spool, ``flowtrail replay``),
nothing is duplicated (deterministic ids), exit never hangs, secrets never leak. And a
three-node cluster that loses a node while written to."""

from __future__ import annotations

import socket
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import run_python
from es_server import EsNode, ServerError, es_request, start_cluster
from flowtrail import ElasticHandler, get_trace
from flowtrail.cli import main


def count(url: str, index: str) -> int:
    es_request(f"{url}/{index}/_refresh?ignore_unavailable=true", "POST", timeout=60)
    return es_request(f"{url}/{index}/_count?ignore_unavailable=true", timeout=60)["count"]


def ids(url: str, index: str) -> list[str]:
    es_request(f"{url}/{index}/_refresh", "POST", timeout=60)
    body = {"size": 10000, "_source": False, "query": {"match_all": {}}}
    hits = es_request(f"{url}/{index}/_search", "POST", body, timeout=60)["hits"]["hits"]
    return [hit["_id"] for hit in hits]


@pytest.fixture(scope="module")
def own_node():
    """A node of this module's own, which the tests stop and start again."""
    node = EsNode("outage", cluster="flowtrail-outage")
    try:
        node.start()
        node.wait_ready()
    except ServerError as exc:
        node.remove()
        pytest.fail(str(exc), pytrace=False)
    yield node
    node.remove()


def _restart(node: EsNode) -> None:
    node.start()
    node.wait_ready()


def spooled_lines(spool: Path) -> int:
    return sum(
        len(p.read_bytes().splitlines())
        for p in spool.rglob("*")
        if p.is_file()
        and ".jsonl" in p.name
        and not p.name.endswith(".why")
        and ".failed" not in p.name
    )


@pytest.mark.slow
def test_stopped_node_spools_then_replay_writes_each_record_once(
    own_node: EsNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = f"o-{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "spool"
    monkeypatch.setenv("FLOWTRAIL_ES_PASSWORD", "replay-secret")
    handler = ElasticHandler(
        hosts=[own_node.url],
        index=index,
        spool_dir=str(spool),
        flush_interval=0.01,
        retry_deadline=1.0,
        connect_timeout=1.0,
        timeout=5.0,
        dead_node_backoff=0.2,
    )
    trace = get_trace("outage-run", handlers=[handler])
    for i in range(100):
        trace.info(f"before {i}")
    assert handler.flush(60)
    assert count(own_node.url, index) == 100
    own_node.stop()
    try:
        started = time.monotonic()
        for i in range(300):
            trace.info(f"during {i}")
        caller = time.monotonic() - started
        assert caller < 5.0  # the caller never waits on the dead node (timeout 5 s each)
        handler.flush(60)
        assert spooled_lines(spool) >= 300
        for secret in ("replay-secret",):
            for path in spool.rglob("*"):
                assert secret not in path.name
                if path.is_file():
                    assert secret not in path.read_text(errors="replace")
    finally:
        _restart(own_node)
    result = CliRunner().invoke(main, ["replay", "--spool-dir", str(spool)])
    assert result.exit_code == 0, result.output
    assert "replay-secret" not in result.output
    assert count(own_node.url, index) == 400
    # A replay of batches that were already written writes nothing twice.
    records = handler.find_trace_with_id("outage-run").meta
    handler.export(records)
    found = ids(own_node.url, index)
    assert len(found) == len(set(found)) == 400
    messages = sorted(r.message for r in handler.find_trace_with_id("outage-run").meta)
    assert messages == sorted(
        [f"before {i}" for i in range(100)] + [f"during {i}" for i in range(300)]
    )


def test_exit_never_hangs_on_a_cluster_that_does_not_answer(tmp_path: Path) -> None:
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(100)  # accepts connections, never answers
    port = blackhole.getsockname()[1]
    try:
        code = textwrap.dedent(
            f"""
            import time
            from flowtrail import ElasticHandler, get_trace
            handler = ElasticHandler(
                hosts=["http://elastic:exit-secret@127.0.0.1:{port}"],
                index="exit", spool_dir="spool", timeout=30, close_timeout=2,
                flush_interval=0.01,
            )
            trace = get_trace("exit-run", handlers=[handler])
            started = time.monotonic()
            for i in range(50):
                trace.info(f"m{{i}}")
            print("caller", time.monotonic() - started)
            """
        )
        started = time.monotonic()
        done = run_python(code, tmp_path, timeout=60)
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert took < 30, took  # the request timeout is 30 s: exit does not wait for it
        assert float(done.stdout.split()[-1]) < 2.0
        assert "exit-secret" not in done.stdout + done.stderr
        assert spooled_lines(tmp_path / "spool") == 50
    finally:
        blackhole.close()


@pytest.mark.slow
def test_a_three_node_cluster_loses_a_node_while_written_to(tmp_path: Path) -> None:
    try:
        nodes = start_cluster(3)
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        index = "cluster-traces"
        spool = tmp_path / "spool"
        handler = ElasticHandler(
            hosts=[node.url for node in nodes],
            index=index,
            number_of_replicas=1,
            spool_dir=str(spool),
            flush_interval=0.01,
            buffer_size=50,
            connect_timeout=1.0,
            timeout=10.0,
            retry_deadline=20.0,
            dead_node_backoff=1.0,
        )
        trace = get_trace("cluster-run", handlers=[handler])
        written = 0
        stop = threading.Event()

        def writer() -> None:
            nonlocal written
            while not stop.is_set() and written < 20_000:
                trace.info(f"m{written}")
                written += 1
                if written % 10 == 0:
                    time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1.0)
        victim = nodes[1]
        victim.stop()
        time.sleep(3.0)
        _restart(victim)
        time.sleep(1.0)
        stop.set()
        thread.join()
        handler.flush(120)
        if spooled_lines(spool):
            result = CliRunner().invoke(main, ["replay", "--spool-dir", str(spool)])
            assert result.exit_code == 0, result.output
        es_request(
            f"{nodes[0].url}/_cluster/health/{index}?wait_for_status=green&timeout=60s",
            timeout=70,
        )
        assert written > 500
        assert count(nodes[0].url, index) == written
        messages = [r.message for r in handler.find_trace_with_id("cluster-run").meta]
        assert len(messages) == written  # each record once
        assert set(messages) == {f"m{i}" for i in range(written)}
    finally:
        for node in nodes:
            node.remove()
