"""The HTML timeline of a run, opened in headless Chromium: one self-contained file that
needs no network, draws one bar per span in a waterfall, and can be screenshot."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

import flowtrail
from flowtrail import MemoryHandler, TraceData, get_trace
from flowtrail.formats.html import render_html

CHROMIUM = "/usr/bin/chromium"
NASTY = "</script><script>document.body.dataset.rendered='hacked'</script><!-- <b>"

#: Appended to a copy of the report: measures every bar after layout and writes what it
#: found into attributes that ``--dump-dom`` shows (in its own scope: the page's script
#: has top-level names of its own).
MEASURE = """<script>(() => {
const axis = document.querySelector('.axis .track').getBoundingClientRect();
const found = [...document.querySelectorAll('.bar')].map(bar => {
  const box = bar.getBoundingClientRect();
  const track = bar.parentElement.getBoundingClientRect();
  const style = getComputedStyle(bar);
  return {id: bar.dataset.spanId, x: box.left - track.left, w: box.width, h: box.height,
          track_left: track.left, track_width: track.width, color: style.backgroundColor,
          visible: style.display !== 'none' && style.visibility !== 'hidden'};
});
document.body.setAttribute('data-measured', JSON.stringify(found));
document.body.setAttribute('data-axis', JSON.stringify([axis.left, axis.width]));
})();</script>"""


@pytest.fixture(autouse=True)
def close_pipelines():
    yield
    flowtrail.shutdown(10.0)


def chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path is None:
        pytest.fail(
            "headless Chromium is required for the HTML report tests: install the Debian "
            "package `chromium` (apt-get install chromium), which provides /usr/bin/chromium"
        )
    return path


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    profile.mkdir()
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{result.stderr}"
    return result


class DomSummary(HTMLParser):
    """The bars, rows and body attributes of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, str | None]] = []
        self.rows: list[str | None] = []
        self.body: dict[str, str | None] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        if tag == "body":
            self.body = values
        if "bar" in classes:
            self.bars.append(values)
        if "row" in classes:
            self.rows.append(values.get("data-span-id"))
        for name in ("src", "href"):
            if values.get(name):
                self.external.append(f"{tag} {name}={values[name]}")


def parse_dom(text: str) -> DomSummary:
    summary = DomSummary()
    summary.feed(text)
    return summary


def sample_run() -> tuple[TraceData, list[str]]:
    """A traced run with nested spans, a failure, many small nodes and a log message that
    tries to break out of the page's data; returns it and its spans in tree order."""
    memory = MemoryHandler()
    trace = get_trace("html-run", handlers=[memory], extras={"workflow_name": "html-wf"})

    @trace.span("node")
    def tiny(i: int) -> None:
        trace.debug(f"node {i}")

    with trace.span("workflow", name="html-wf"):
        trace.info(NASTY)
        with trace.span("job", name="extract"):
            with trace.span("stage", name="download"):
                time.sleep(0.02)
            try:
                with trace.span("stage", name="validate"):
                    time.sleep(0.01)
                    raise ValueError("<bad> & 'quoted'")
            except ValueError:
                trace.exception("validate failed")
        with trace.span("job", name="fan-out", count=30):
            for i in range(30):
                tiny(i)
        with trace.span("job", name="load"):
            time.sleep(0.01)
    data = memory.find_trace_with_id("html-run")

    order: list[str] = []
    children: dict[str | None, list] = {}
    for span in sorted(data.spans, key=lambda s: s.start_ns):
        children.setdefault(span.parent_span_id, []).append(span)

    def walk(parent: str | None) -> None:
        for span in children.get(parent, []):
            order.append(span.span_id)
            walk(span.span_id)

    walk(None)
    return data, order


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TraceData, list[str]]:
    data, order = sample_run()
    folder = tmp_path_factory.mktemp("report")
    page = folder / "run.html"
    page.write_text(render_html(data, run_id="html-run"), encoding="utf-8")
    return page, data, order


def test_report_is_self_contained(report) -> None:
    page, data, _ = report
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    summary = parse_dom(text)
    assert summary.external == [], "the report must not load anything"
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", text)
    assert "<script src" not in text and "<link" not in text
    # The run's data sits in one JSON script element that the nasty message cannot close.
    assert text.count("</script>") == 2
    match = re.search(r"<script type='application/json' id='run-data'>(.*?)</script>", text, re.S)
    assert match is not None
    document = json.loads(match.group(1))
    assert len(document["spans"]) == len(data.spans)
    assert NASTY in [log["message"] for log in document["logs"]]


def test_every_span_bar_is_drawn_in_chromium(report, tmp_path: Path) -> None:
    page, data, order = report
    measured_page = tmp_path / "measured.html"
    measured_page.write_text(
        page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"),
        encoding="utf-8",
    )
    dom = run_chromium(tmp_path, "--dump-dom", measured_page.as_uri()).stdout
    summary = parse_dom(dom)
    count = len(data.spans)
    assert count == 36

    assert summary.body.get("data-rendered") == str(count), summary.body
    assert len(summary.bars) == count
    assert sorted(bar["data-span-id"] for bar in summary.bars) == sorted(
        s.span_id for s in data.spans
    )
    assert summary.rows == order  # a waterfall in tree order
    statuses = {s.span_id: s.status for s in data.spans}
    for bar in summary.bars:
        classes = (bar["class"] or "").split()
        assert ("error" if statuses[bar["data-span-id"]] == "error" else "ok") in classes

    measured = {m["id"]: m for m in json.loads(summary.body["data-measured"] or "[]")}
    assert set(measured) == set(statuses)
    colors = {"ok": "rgb(45, 164, 78)", "error": "rgb(207, 34, 46)"}
    axis_left, axis_width = json.loads(summary.body["data-axis"] or "[0, 0]")
    assert axis_width > 100
    t0 = min(s.start_ns for s in data.spans)
    total = max(s.end_ns for s in data.spans) - t0
    for span in data.spans:
        box = measured[span.span_id]
        assert box["visible"]
        assert box["w"] > 0 and box["h"] > 0, box
        assert box["color"] == colors[statuses[span.span_id]]
        # Every row's track lies under the time axis, whatever the depth of its label.
        assert box["track_left"] == pytest.approx(axis_left, abs=0.5), (span.name, box)
        assert box["track_width"] == pytest.approx(axis_width, abs=0.5), (span.name, box)
        # The bar starts at the span's start on that axis, and is at least as long as
        # the span (short spans get a minimum width).
        assert box["x"] == pytest.approx((span.start_ns - t0) / total * axis_width, abs=1.0)
        assert box["w"] >= (span.end_ns - span.start_ns) / total * axis_width - 1.0
        assert box["x"] + box["w"] <= axis_width + 2.5, box
    # The page's own data and text were not broken by the message.
    assert "hacked" not in (summary.body.get("data-rendered") or "")


def read_png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert (length, kind) == (13, b"IHDR")
    return struct.unpack(">II", raw[16:24])


def test_screenshot_of_the_report(report, tmp_path: Path) -> None:
    page, _, _ = report
    shot = tmp_path / "timeline.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", page.as_uri())
    assert shot.exists(), "chromium wrote no screenshot"
    assert shot.stat().st_size > 10_000  # a blank page compresses to far less
    assert read_png_size(shot) == (1280, 900)


def test_empty_run_renders(tmp_path: Path) -> None:
    page = tmp_path / "empty.html"
    data = TraceData(meta=[])
    page.write_text(render_html(data, run_id="nothing"), encoding="utf-8")
    summary = parse_dom(run_chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)
    assert summary.body.get("data-rendered") == "0"
    assert summary.bars == []
