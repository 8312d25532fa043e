"""``data_stream=True`` on a cluster that has data streams (Elasticsearch 7.9+ with the
default distribution, OpenSearch 1+). Neither server the tests run has them (the OSS
build of 7.9 and osmem; `test_elastic` shows the clear error there), so a local receiver
that answers as Elasticsearch 8 does checks the documented wire format
(https://www.elastic.co/guide/en/elasticsearch/reference/current/use-a-data-stream.html):
a composable index template with ``data_stream: {}`` whose pattern matches the stream,
records sent with ``create`` to the stream's name with an ``@timestamp``, and spans in an
ordinary index (a span's end replaces its start, which a data stream does not allow)."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import ThreadingHTTPServer

from flowtrail import ElasticHandler, get_trace
from test_elastic import _BulkReceiver


class _StreamCluster(_BulkReceiver):
    templates: dict[str, dict] = {}
    actions: list[dict] = []

    def do_PUT(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self.path.startswith("/_index_template/"):
            self._answer(400, {"error": f"unexpected PUT {self.path}", "status": 400})
            return
        type(self).templates[self.path.rsplit("/", 1)[-1]] = body
        self._answer(200, {"acknowledged": True})

    def do_POST(self):
        if self.path.split("?")[0].endswith("/_bulk"):
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            lines = [json.loads(x) for x in raw.splitlines() if x.strip()]
            type(self).actions += lines[0::2]
            type(self).seen.append(lines[1::2])
            items = [
                {next(iter(a)): {"_index": next(iter(a.values()))["_index"], "status": 201}}
                for a in lines[0::2]
            ]
            self._answer(200, {"errors": False, "items": items})
            return
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(200, {})


def test_records_go_to_a_data_stream_with_create_and_a_timestamp() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StreamCluster)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        handler = ElasticHandler(
            hosts=[url], index="logs-flowtrail-prod", data_stream=True, flush_interval=0.01
        )
        trace = get_trace("ds-run", handlers=[handler], extras={"workflow_name": "wf"})
        with trace.span("stage", name="load"):
            trace.info("into the stream")
        assert handler.flush(30)
    finally:
        server.shutdown()
        server.server_close()
    templates = _StreamCluster.templates
    streams = [t for t in templates.values() if "data_stream" in t]
    assert len(streams) == 1, templates
    (stream,) = streams
    assert stream["data_stream"] == {}
    assert any(
        __import__("fnmatch").fnmatchcase("logs-flowtrail-prod", p)
        for p in stream["index_patterns"]
    )
    assert stream["template"]["mappings"]["properties"]["@timestamp"]["type"].startswith("date")
    # The spans' template is an ordinary one.
    assert any("data_stream" not in t for t in templates.values())
    records = [
        (a, d)
        for a, d in zip(_StreamCluster.actions, sum(_StreamCluster.seen, []), strict=True)
        if "message" in d
    ]
    assert [d["message"] for _, d in records] == ["into the stream"]
    ((action, doc),) = records
    assert list(action) == ["create"]
    assert action["create"]["_index"] == "logs-flowtrail-prod"
    assert doc["@timestamp"] == doc["datetime"]
    spans = [
        a for a in _StreamCluster.actions if next(iter(a.values()))["_index"].endswith("spans")
    ]
    assert spans and all(next(iter(a.values()))["_index"] != "logs-flowtrail-prod" for a in spans)
