"""The HTML report (issue 7, point 9), written by the real ``flowtrail report`` from real
stores and opened in headless Chromium: it opens on the first failure with its stack, its
status is coloured by value, a run without spans lists its records, exception records
show their stack, durations read as ``duration_text`` writes them, records come a page at
a time, and a 1M-record run gives a small report. No JavaScript error in any of them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

import flowtrail
from conftest import ROOT, run_python
from flowtrail.formats.tree import duration_text
from large_run import peak_rss_argv, peak_rss_mb
from test_html_report import chromium


@pytest.fixture(autouse=True)
def close_pipelines():
    yield
    flowtrail.shutdown(10.0)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "flowtrail", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"flowtrail {args}: {result.stdout}\n{result.stderr}"
    return result


def open_page(page: Path, tmp_path: Path, probe: str = "") -> tuple[str, list[str]]:
    """The DOM of ``page`` after its scripts ran in headless Chromium (with ``probe``, a
    script of the test, run after the page's own), and the console lines it logged."""
    target = page
    if probe:
        target = page.with_name(page.stem + "-probe.html")
        text = page.read_text(encoding="utf-8")
        target.write_text(text.replace("</body>", f"<script>{probe}</script></body>"), "utf-8")
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    profile.mkdir()
    result = subprocess.run(
        [
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
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={profile}",
            "--dump-dom",
            target.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


class Dom(HTMLParser):
    """Elements by id and class, with their attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.by_class: dict[str, list[dict[str, str | None]]] = {}
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text_of: dict[str, list[str]] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "body":
            self.body = values
        for name in (values.get("class") or "").split():
            self.by_class.setdefault(name, []).append(values)
        if values.get("id"):
            self.by_id[values["id"] or ""] = values
        if tag not in ("br", "meta", "img", "input"):
            self._open.append((tag, values.get("id")))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            opened, _ = self._open.pop()
            if opened == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id:
                self.text_of.setdefault(element_id, []).append(data)

    def text(self, element_id: str) -> str:
        return "".join(self.text_of.get(element_id, []))


def dom_of(text: str) -> Dom:
    dom = Dom()
    dom.feed(text)
    return dom


FAILING_RUN = """
import time
from flowtrail import SQLiteHandler, get_trace
trace = get_trace("failing-run", handlers=[SQLiteHandler(path="./s.db")],
                  extras={"workflow_name": "nightly"})
try:
    with trace.span("workflow", name="nightly"):
        trace.info("starting")
        with trace.span("job", name="extract"):
            with trace.span("stage", name="download"):
                time.sleep(0.01)
        with trace.span("job", name="transform"):
            with trace.span("stage", name="parse"):
                trace.info("parsing rows")
                raise ValueError("row 17 is not a number")
except ValueError:
    pass
assert trace.flush()
ok = get_trace("ok-run", handlers=[SQLiteHandler(path="./s.db")])
with ok.span("workflow", name="fine"):
    ok.info("all good")
assert ok.flush()
"""


@pytest.fixture(scope="module")
def failing_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("failing")
    result = run_python(FAILING_RUN, folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_report_opens_on_the_first_failure_with_its_stack(failing_store: Path) -> None:
    folder = failing_store
    cli("report", "failing-run", "-o", "run.html", "--store", "s.db", cwd=folder)
    from flowtrail import SQLiteHandler

    spans = SQLiteHandler(path=str(folder / "s.db")).find_trace_with_id("failing-run").spans
    parse = next(s for s in spans if s.name == "parse")
    assert parse.status == "error"
    dom_text, console = open_page(folder / "run.html", folder)
    assert console == [], console
    dom = dom_of(dom_text)
    assert dom.body.get("data-rendered") == str(len(spans)) == "5"
    # The innermost failed span (the first to end in error) is selected, with its stack.
    assert dom.body.get("data-selected") == parse.span_id
    selected = [row for row in dom.by_class.get("row", []) if "selected" in (row["class"] or "")]
    assert [row.get("data-span-id") for row in selected] == [parse.span_id]
    details = dom.text("details")
    assert "stage.parse" in details
    assert "Traceback (most recent call last)" in details
    assert "ValueError: row 17 is not a number" in details
    assert "parsing rows" in details  # the span's own logs
    assert "status-error" in (dom.by_id["run-status"]["class"] or "")
    # One duration format: the summary and the bars read as `show` writes them.
    assert duration_text(parse.duration_ms) in details
    assert not re.search(r"\d ms\b", dom.text("chart") + details)


STATUS_PROBE = """
const badge = document.getElementById('run-status');
document.body.setAttribute('data-status-color', getComputedStyle(badge).backgroundColor);
document.body.setAttribute('data-status-text', getComputedStyle(badge).color);
"""


def test_status_is_coloured_by_its_value(failing_store: Path) -> None:
    folder = failing_store
    colours = {}
    for run_id in ("failing-run", "ok-run"):
        cli("report", run_id, "-o", f"{run_id}.html", "--store", "s.db", cwd=folder)
        dom_text, console = open_page(folder / f"{run_id}.html", folder, STATUS_PROBE)
        assert console == []
        dom = dom_of(dom_text)
        colours[dom.text("run-status")] = dom.body.get("data-status-color")
        assert dom.body.get("data-status-text") == "rgb(255, 255, 255)"  # readable on it
    assert colours == {"error": "rgb(207, 34, 46)", "ok": "rgb(26, 127, 55)"}
    css = (ROOT / "src" / "flowtrail" / "formats" / "timeline.css").read_text()
    for status in ("interrupted", "running"):  # the other run statuses have colours too
        assert f"span.status.status-{status}{{background:" in css


SPANLESS_RUN = """
from flowtrail import FileHandler, get_trace
trace = get_trace("plain-run", handlers=[FileHandler(path="./traces")])
for i in range(350):
    trace.info(f"line {i}")
try:
    {}["missing"]
except KeyError:
    trace.exception("lookup failed")
for i in range(100):
    trace.info(f"after the failure {i}")
assert trace.flush()
"""


def test_run_without_spans_lists_its_records_opened_on_the_first_error(tmp_path: Path) -> None:
    result = run_python(SPANLESS_RUN, tmp_path)
    assert result.returncode == 0, result.stderr
    cli("report", "plain-run", "-o", "plain.html", "--store", "traces", cwd=tmp_path)
    dom_text, console = open_page(tmp_path / "plain.html", tmp_path)
    assert console == [], console
    dom = dom_of(dom_text)
    assert "axis" not in dom.by_class and "bar" not in dom.by_class  # no empty time axis
    assert dom.body.get("data-rendered") == "0"
    logs = dom.by_class["log"]
    # Drawn a page (100) at a time up to the first error (record 350), which is
    # selected with its stack; the rest is a click on "more" away.
    assert dom.body.get("data-selected") == "record:350"
    assert len(logs) == 400 + 1  # + the error again in the details
    listed = dom.text("record-list")
    assert "line 0" in listed and "line 349" in listed and "lookup failed" in listed
    assert "KeyError: 'missing'" in listed and "Traceback (most recent call last)" in listed
    assert "after the failure 48" in listed and "after the failure 49" not in listed
    assert "more (51 more)" in listed
    assert "Records (451)" in dom.text("chart")
    assert "KeyError" in dom.text("details")


def test_exception_records_show_their_stack_and_more_pages_records(tmp_path: Path) -> None:
    code = """
from flowtrail import SQLiteHandler, get_trace
trace = get_trace("busy-run", handlers=[SQLiteHandler(path="./s.db")])
with trace.span("stage", name="busy"):
    for i in range(300):
        trace.debug(f"row {i}")
    try:
        int("x")
    except ValueError:
        trace.exception("conversion failed")
assert trace.flush()
"""
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    cli("report", "busy-run", "-o", "busy.html", "--store", "s.db", cwd=tmp_path)
    click_more = "document.querySelector('#span-logs .more').click();"
    dom_text, console = open_page(tmp_path / "busy.html", tmp_path, click_more)
    assert console == [], console
    logs = dom_of(dom_text).text("details")
    # 100 records per span are embedded, plus its error records: the exception at the
    # end of the span is there, with its stack, after the first page and a "more".
    # The DOM's text runs lines together ("row 10" then "02:27:17.208 ..."): a row's
    # number is what precedes the next line's time stamp.
    rows = re.findall(r"\] row (\d+?)(?=\d\d:\d\d:\d\d\.\d{3})", logs)
    assert rows == [str(i) for i in range(100)], rows
    assert "101 of 301 records are in this report" in logs
    assert "flowtrail show busy-run --format text" in logs
    assert "conversion failed" in logs and "invalid literal for int()" in logs
    assert "Traceback (most recent call last)" in logs


VALUES = [0.0, 0.04, 0.05, 0.25, 0.35, 0.75, 1.0, 12.345, 45.25, 45.35, 99.95, 999.94]
VALUES += [999.95, 999.96, 1000.0, 1004.9, 1125.0, 1375.0, 2345.6789, 59_999.99, 61_000.0]
VALUES += [3_600_000.0, 1e9, 1 / 3, 2 / 3, 123.456789e3, 0.1 + 0.2, 5e-324, 1e-7, -0.04]
VALUES += [-0.25, -0.0, 17.85, 2.675e3, 1.005e3, 0.125e3]


def test_durations_in_the_page_read_as_duration_text(failing_store: Path) -> None:
    folder = failing_store
    cli("report", "ok-run", "-o", "fmt.html", "--store", "s.db", cwd=folder)
    probe = (
        f"const values = {json.dumps(VALUES)};"  # -0.0 stays -0 in JavaScript
        "document.body.setAttribute('data-durations', JSON.stringify(values.map(durationText)));"
    )
    dom_text, console = open_page(folder / "fmt.html", folder, probe)
    assert console == []
    from_js = json.loads(dom_of(dom_text).body.get("data-durations") or "[]")
    assert from_js == [duration_text(v) for v in VALUES]


def write_large_run(folder: Path, records: int, spans: int) -> None:
    """A run of ``records`` records in ``spans`` stages (one of them failed), written by
    the file store's exporter in batches."""
    from flowtrail import FileHandler
    from flowtrail.records import Metadata, Span, SpanEvent

    handler = FileHandler(path=str(folder / "traces"), fsync=False)
    trace_id = "ab" * 16
    root = "f" * 16
    base = 1_700_000_000_000_000_000
    per_span = records // spans
    batch: list = []

    def iso(ns: int) -> str:
        seconds, rest = divmod(ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{stamp}.{rest // 1000:06d}+00:00"

    template = Metadata(run_id="big-run", trace_id=trace_id, workflow_name="big", filename="x.py")
    replace = __import__("msgspec").structs.replace
    for index in range(spans):
        span_id = f"{index + 1:016x}"
        start = base + index * 1_000_000
        failed = index == spans // 2
        for n in range(per_span):
            moment = start + n * 1000
            level = "error" if failed and n == per_span - 1 else "info"
            batch.append(
                replace(
                    template,
                    level=level,
                    error_flag=level == "error",
                    message=f"stage {index} row {n}",
                    datetime=iso(moment),
                    span_id=span_id,
                    parent_span_id=root,
                )
            )
        events = []
        if failed:
            stack = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: big'
            events = [
                SpanEvent(
                    name="exception",
                    time=iso(start),
                    level="error",
                    attributes={"exception.stacktrace": stack},
                )
            ]
        batch.append(
            Span(
                run_id="big-run",
                trace_id=trace_id,
                span_id=span_id,
                name=f"stage-{index}",
                kind="stage",
                parent_span_id=root,
                start_ns=start,
                end_ns=start + 900_000,
                start_time=iso(start),
                end_time=iso(start + 900_000),
                duration_ms=0.9,
                status="error" if failed else "ok",
                events=events,
            )
        )
        if len(batch) >= 50_000:
            handler.export(batch)
            batch = []
    end = base + spans * 1_000_000
    batch.append(
        Span(
            run_id="big-run",
            trace_id=trace_id,
            span_id=root,
            name="big",
            kind="workflow",
            start_ns=base,
            end_ns=end,
            start_time=iso(base),
            end_time=iso(end),
            duration_ms=(end - base) / 1e6,
            status="error",
        )
    )
    handler.export(batch)
    handler.close_exporter()


@pytest.mark.slow
def test_report_of_a_million_records_stays_small_and_opens_on_the_failure(
    tmp_path: Path,
) -> None:
    write_large_run(tmp_path, records=1_000_000, spans=100_000)
    rss_file = tmp_path / "peak-rss"
    argv = peak_rss_argv(
        [sys.executable, "-m", "flowtrail", "report", "big-run", "-o", "big.html"]
        + ["--store", "traces"],
        rss_file,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "100001 spans, 1000000 records" in out.stdout
    # Records are streamed from the store; only the spans and the embedded records are held.
    assert peak_rss_mb(rss_file) < 600
    page = tmp_path / "big.html"
    size = page.stat().st_size
    assert size < 16 * 1024 * 1024, f"the report of 1M records is {size:,} bytes"
    text = page.read_text(encoding="utf-8")
    assert "This report shows 2,000 of 100,001 spans" in text
    assert "of 1,000,000 records" in text and "flowtrail show big-run --format text" in text
    dom_text, console = open_page(page, tmp_path)
    assert console == [], console
    dom = dom_of(dom_text)
    assert dom.body.get("data-rendered") == "2000"
    assert dom.body.get("data-selected") == f"{100_000 // 2 + 1:016x}"  # the failed stage
    details = dom.text("details")
    assert "RuntimeError: big" in details and "stage 50000 row 9" in details
