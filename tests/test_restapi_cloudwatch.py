"""RestAPIHandler with ``service_type="cloudwatch"`` against moto's Logs server, started
by these tests on 127.0.0.1 with IAM authentication on: requests must carry a valid AWS
Signature V4 made from the standard credential chain (here the environment)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from flowtrail import Metadata, get_trace, make_handler
from flowtrail.config import ConfigError
from flowtrail.formats import services
from flowtrail.handlers import RestAPIHandler

try:
    import botocore.session as botocore_session
    import moto  # noqa: F401  (the server is started from it below)
except ImportError as missing:  # never a silent skip: CI installs both (the test extra)
    raise ImportError(
        f"{missing}: the CloudWatch tests need botocore and moto's server: "
        "pip install -e '.[test]' (or: pip install botocore 'moto[server]')"
    ) from missing


@pytest.fixture(scope="module")
def moto_logs():
    """(endpoint URL, access key id, secret) of a moto server that checks signatures."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    # The first three actions (making an IAM user, its key and its policy) need no auth.
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        iam = botocore_session.Session().create_client(
            "iam",
            region_name="us-east-1",
            endpoint_url=url,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="flowtrail")
        key = iam.create_access_key(UserName="flowtrail")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="flowtrail", PolicyName="all", PolicyDocument=json.dumps(policy)
        )
        yield url, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def aws_env(moto_logs, monkeypatch):
    url, key_id, secret = moto_logs
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return url, secret


def read_back(url: str, group: str, stream: str) -> list[dict]:
    client = botocore_session.Session().create_client("logs", endpoint_url=url)
    events, token = [], None
    while True:
        args = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
        if token:
            args["nextToken"] = token
        page = client.get_log_events(**args)
        events += page["events"]
        if not page["events"] or page.get("nextForwardToken") == token:
            return events
        token = page["nextForwardToken"]


def test_cloudwatch_events_arrive_signed_sorted_and_complete(aws_env, tmp_path):
    url, secret = aws_env
    handler = make_handler(
        {
            "type": "restapi",
            "service_type": "cloudwatch",
            "api_url": url,
            "api_key": "your-aws-credentials",  # seed 003: never sent as a header
            "flush_interval": 0.05,
            "spool_dir": str(tmp_path / "spool"),
        }
    )
    trace = get_trace("cw-run-1", handlers=[handler], extras={"workflow_name": "etl-pipeline"})
    sent = []
    for i in range(250):
        message = f"event {i}"
        (trace.info if i % 5 else trace.warning)(message)
        sent.append(message)
    assert trace.flush(30)
    (pipeline,) = trace.pipelines()
    assert pipeline.stats.spooled == 0 and pipeline.stats.errors == {}, pipeline.stats
    events = read_back(url, "etl-pipeline", "cw-run-1")
    messages = [json.loads(event["message"])["message"] for event in events]
    assert messages == sent
    stamps = [event["timestamp"] for event in events]
    assert stamps == sorted(stamps)
    assert secret not in repr(handler) and secret not in handler.spool_name()


def test_cloudwatch_wrong_credentials_are_refused_and_kept(aws_env, tmp_path, monkeypatch, capfd):
    url, secret = aws_env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all")
    handler = make_handler(
        {
            "type": "restapi",
            "service_type": "cloudwatch",
            "api_url": url,
            "log_group": "refused",
            "flush_interval": 0.05,
            "spool_dir": str(tmp_path / "spool"),
        }
    )
    trace = get_trace("cw-run-2", handlers=[handler])
    for i in range(20):
        trace.info(f"event {i}")
    assert trace.flush(30)
    (pipeline,) = trace.pipelines()
    assert pipeline.stats.exported == 0 and pipeline.stats.spooled == 20
    err = capfd.readouterr().err
    assert "SignatureDoesNotMatch" in err
    assert "not-the-secret-at-all" not in err


def test_cloudwatch_batches_follow_the_put_log_events_limits():
    day = 24 * 3600
    records = [
        Metadata(run_id="r", message=f"m{i}", datetime=f"2026-01-01T00:00:{i % 60:02d}+00:00")
        for i in range(25_000)
    ]
    batches = services.cloudwatch_batches(records)
    assert len(batches) >= 3
    for batch in batches:
        assert len(batch.events) <= 10_000
        assert sum(len(e["message"].encode()) + 26 for e in batch.events) <= 1_048_576
    stamps = [e["timestamp"] for b in batches for e in b.events]
    assert stamps == sorted(stamps)
    assert sum(len(b.records) for b in batches) == 25_000
    # 1 MiB per call, counting 26 bytes an event.
    big = [Metadata(run_id="r", message="x" * 100_000) for _ in range(30)]
    for batch in services.cloudwatch_batches(big):
        size = sum(len(e["message"].encode()) + 26 for e in batch.events)
        assert size <= 1_048_576
    # 24 hours per call.
    apart = [
        Metadata(run_id="r", message="a", datetime="2026-01-01T00:00:00+00:00"),
        Metadata(run_id="r", message="b", datetime="2026-01-02T00:00:01+00:00"),
    ]
    first, second = services.cloudwatch_batches(apart)
    assert second.events[0]["timestamp"] - first.events[0]["timestamp"] > day * 1000
    # An event over 256 KiB is cut with a marker.
    (cut,) = services.cloudwatch_batches([Metadata(run_id="r", message="y" * 400_000)])
    (event,) = cut.events
    assert len(event["message"].encode()) + 26 <= 262_144
    assert "truncated by flowtrail" in json.loads(event["message"])["message"]
    # Groups and streams: the workflow and the run by default, or as configured.
    (named,) = services.cloudwatch_batches([Metadata(run_id="a:b", workflow_name="w f")])
    assert (named.group, named.stream) == ("w_f", "a_b")


def test_cloudwatch_throttling_is_retryable_and_refusals_are_not():
    from botocore.exceptions import ClientError, EndpointConnectionError

    from flowtrail.cloudwatch import classify

    def error(code: str, status: int) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "PutLogEvents",
        )

    assert classify(error("ThrottlingException", 400)).retryable
    assert classify(error("ServiceUnavailableException", 503)).retryable
    assert not classify(error("InvalidParameterException", 400)).retryable
    assert classify(EndpointConnectionError(endpoint_url="http://x")).retryable


def test_cloudwatch_without_botocore_names_the_extra(monkeypatch):
    import flowtrail.handlers.restapi as restapi

    monkeypatch.setattr(restapi, "botocore_available", lambda: False)
    with pytest.raises(ConfigError, match=r"flowtrail\[aws\]"):
        RestAPIHandler(service_type="cloudwatch", region="us-east-1")


def test_cloudwatch_region_comes_from_the_url_or_the_environment(monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    seed = RestAPIHandler(
        type="restapi", service_type="cloudwatch", api_url="https://logs.us-east-1.amazonaws.com"
    )
    assert seed.cloudwatch.region == "us-east-1"
    with pytest.raises(ConfigError, match="region"):
        RestAPIHandler(service_type="cloudwatch")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    handler = RestAPIHandler(service_type="cloudwatch")
    assert handler.url() == "https://logs.eu-west-1.amazonaws.com"


class _ThrottlingProxy:
    """Plays CloudWatch Logs answering the first ``throttle`` PutLogEvents calls with the
    service's real ``ThrottlingException`` (HTTP 400, JSON 1.1 error); every other call is
    forwarded unchanged, signature included, to moto's server."""

    def __init__(self, upstream: str, throttle: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.throttled = 0
        self.puts = 0
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                import http.client

                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("X-Amz-Target", "").endswith(".PutLogEvents"):
                    proxy.puts += 1
                    if proxy.throttled < throttle:
                        proxy.throttled += 1
                        answer = json.dumps(
                            {"__type": "ThrottlingException", "message": "Rate exceeded"}
                        ).encode()
                        self.send_response(400)
                        self.send_header("x-amzn-ErrorType", "ThrottlingException")
                        self.send_header("Content-Type", "application/x-amz-json-1.1")
                        self.send_header("Content-Length", str(len(answer)))
                        self.end_headers()
                        self.wfile.write(answer)
                        return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request("POST", self.path, body, dict(self.headers.items()))
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cloudwatch_throttling_is_retried_until_every_event_is_in_once(aws_env, tmp_path):
    url, _ = aws_env
    proxy = _ThrottlingProxy(url, throttle=3)
    try:
        handler = make_handler(
            {
                "type": "restapi",
                "service_type": "cloudwatch",
                "api_url": proxy.url,
                "log_group": "throttled",
                "flush_interval": 0.05,
                "max_retries": 10,
                "spool_dir": str(tmp_path / "spool"),
            }
        )
        trace = get_trace("cw-throttled", handlers=[handler])
        sent = [f"event {i}" for i in range(300)]
        for message in sent:
            trace.info(message)
        assert trace.flush(60)
        (pipeline,) = trace.pipelines()
        assert proxy.throttled == 3
        assert pipeline.stats.retries >= 3 and pipeline.stats.spooled == 0, pipeline.stats
        assert pipeline.stats.errors.get("DeliveryError") == 3
        events = read_back(url, "throttled", "cw-throttled")
        assert [json.loads(e["message"])["message"] for e in events] == sent  # once, in order
    finally:
        proxy.close()
