"""Context across processes: W3C ``traceparent`` and ``baggage`` in and out, continuing a
trace from an argument or the environment, a subprocess that continues the trace, and the
ratio sampler (one decision per trace id, the same in every process)."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import flowtrail
from conftest import ROOT, run_python
from flowtrail import MemoryHandler, SQLiteHandler, get_trace
from flowtrail.context import (
    TraceParent,
    format_baggage,
    parse_baggage,
    parse_traceparent,
    sample_decision,
)
from flowtrail.formats.tree import render_tree

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
HEADER = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$")


@pytest.fixture(autouse=True)
def close_pipelines():
    yield
    flowtrail.shutdown(10.0)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child interpreter that imports flowtrail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TRACEPARENT", None)
    env.pop("BAGGAGE", None)
    env.update(extra)
    return env


def last_json_line(stdout: str) -> object:
    return json.loads(stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- parsing


def test_parse_traceparent_valid() -> None:
    parsed = parse_traceparent(TRACEPARENT)
    assert parsed == TraceParent(TRACE_ID, PARENT_ID, 1)
    assert parsed.sampled
    assert parsed.header() == TRACEPARENT
    unsampled = parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-00")
    assert unsampled is not None and not unsampled.sampled
    # A later version may add fields after the flags.
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-01-extra") is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE_ID}-{PARENT_ID}",  # no flags
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # short trace id
        f"00-{TRACE_ID}-{PARENT_ID}0-01",  # long span id
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # forbidden version
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE_ID.replace('4', 'g')}-{PARENT_ID}-01",  # not hex
        f"00-{TRACE_ID}-{PARENT_ID}-1",  # one-digit flags
    ],
)
def test_parse_traceparent_invalid_is_none(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_baggage_round_trip_and_malformed_members() -> None:
    items = {"tenant": "acme corp", "flowtrail.run_id": "run-1", "odd": "a=b,c;d"}
    header = format_baggage(items)
    assert dict(parse_baggage(header)) == items
    assert parse_baggage("k1=v1;prop=1, =novalue, justtext,,k2 = v2") == (
        ("k1", "v1"),
        ("k2", "v2"),
    )
    assert parse_baggage(None) == ()


# ---------------------------------------------------------------------- headers out


def test_traceparent_and_headers_out() -> None:
    trace = get_trace("run-out", handlers=[MemoryHandler()], baggage={"tenant": "acme"})
    outside = trace.traceparent()
    match = HEADER.match(outside)
    assert match is not None, outside
    assert match.group(1) == trace.trace_id
    assert match.group(3) == "01"
    assert trace.traceparent() == outside  # stable outside spans

    with trace.span("job", name="j") as span:
        inside = trace.traceparent()
        assert inside == f"00-{trace.trace_id}-{span.span_id}-01"
        assert span.traceparent() == inside
        headers = trace.headers()
        assert headers["traceparent"] == inside
        assert dict(parse_baggage(headers["baggage"])) == {
            "tenant": "acme",
            "flowtrail.run_id": "run-out",
        }
        assert dict(parse_baggage(span.headers()["baggage"]))["tenant"] == "acme"
    assert trace.baggage == {"tenant": "acme", "flowtrail.run_id": "run-out"}

    env = trace.subprocess_env({"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert env["TRACEPARENT"] == outside
    assert dict(parse_baggage(env["BAGGAGE"]))["flowtrail.run_id"] == "run-out"


# ---------------------------------------------------------------------- headers in


def test_continue_from_traceparent_argument() -> None:
    memory = MemoryHandler()
    trace = get_trace(
        "run-in",
        handlers=[memory],
        traceparent=TRACEPARENT,
        baggage="tenant=acme,flowtrail.run_id=run-upstream",
    )
    assert trace.trace_id == TRACE_ID
    assert trace.parent_run_id == "run-upstream"
    assert trace.baggage["tenant"] == "acme"
    assert trace.traceparent() == TRACEPARENT  # no span open: the remote parent
    with trace.span("job", name="j") as job, trace.span("stage", name="s"):
        trace.info("inside")
    stage, root = memory.spans
    assert root.trace_id == stage.trace_id == TRACE_ID
    assert root.parent_span_id == PARENT_ID
    assert stage.parent_span_id == job.span_id
    (record,) = memory.records
    assert record.trace_id == TRACE_ID
    assert record.parent_run_id == "run-upstream"


def test_continue_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEPARENT", TRACEPARENT)
    monkeypatch.setenv("BAGGAGE", "flowtrail.run_id=run-env-parent")
    memory = MemoryHandler()
    trace = get_trace("run-env", handlers=[memory])
    with trace.span("job", name="j"):
        pass
    (span,) = memory.spans
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert trace.parent_run_id == "run-env-parent"
    # An explicit argument wins over the environment.
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    assert get_trace("run-env-2", handlers=[memory], traceparent=other).trace_id == "1" * 32


@pytest.mark.parametrize("bad", ["not-a-header", f"00-{'0' * 32}-{PARENT_ID}-01"])
def test_invalid_traceparent_argument_warns_and_starts_a_new_trace(bad: str) -> None:
    memory = MemoryHandler()
    with pytest.warns(RuntimeWarning, match="invalid traceparent"):
        trace = get_trace("run-bad", handlers=[memory], traceparent=bad)
    assert re.fullmatch(r"[0-9a-f]{32}", trace.trace_id)
    assert trace.trace_id != "0" * 32
    with trace.span("job", name="j"):
        trace.info("still works")
    (span,) = memory.spans
    assert span.parent_span_id is None
    assert memory.messages == ["still works"]


def test_invalid_environment_values_warn_and_never_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEPARENT", "00-xyz-123-01")
    monkeypatch.setenv("BAGGAGE", "%%%,===,;;;")
    memory = MemoryHandler()
    with pytest.warns(RuntimeWarning, match="TRACEPARENT|environment"):
        trace = get_trace("run-bad-env", handlers=[memory])
    with trace.span("job", name="j"):
        pass
    assert memory.spans[0].parent_span_id is None
    assert "flowtrail.run_id" in trace.baggage


def test_valid_environment_gives_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEPARENT", TRACEPARENT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_trace("run-quiet", handlers=[MemoryHandler()])


# ---------------------------------------------------------------------- subprocess

CHILD = textwrap.dedent(
    """
    import json, os
    from flowtrail import MemoryHandler, get_trace
    memory = MemoryHandler()
    trace = get_trace("child-run", handlers=[memory])
    with trace.span("job", name="child-job"):
        with trace.span("stage", name="child-stage"):
            trace.info("hello from the child")
    print(json.dumps({
        "env": os.environ.get("TRACEPARENT"),
        "parent_run_id": trace.parent_run_id,
        "spans": [
            {"name": s.name, "trace_id": s.trace_id, "span_id": s.span_id,
             "parent_span_id": s.parent_span_id, "parent_run_id": s.parent_run_id}
            for s in memory.spans
        ],
        "records": [[r.message, r.trace_id, r.span_id] for r in memory.records],
    }))
    """
)


def test_subprocess_continues_the_trace(tmp_path: Path) -> None:
    memory = MemoryHandler()
    trace = get_trace("parent-run", handlers=[memory])
    with trace.span("workflow", name="wf"), trace.span("job", name="spawner") as current:
        result = trace.run_subprocess(
            [sys.executable, "-c", CHILD],
            env=child_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    child = last_json_line(result.stdout)
    assert child["env"] == f"00-{trace.trace_id}-{current.span_id}-01"
    assert child["parent_run_id"] == "parent-run"
    spans = {s["name"]: s for s in child["spans"]}
    assert set(spans) == {"child-job", "child-stage"}
    for span in spans.values():
        assert span["trace_id"] == trace.trace_id
        assert span["parent_run_id"] == "parent-run"
    assert spans["child-job"]["parent_span_id"] == current.span_id
    assert spans["child-stage"]["parent_span_id"] == spans["child-job"]["span_id"]
    ((message, trace_id, span_id),) = child["records"]
    assert (message, trace_id, span_id) == (
        "hello from the child",
        trace.trace_id,
        spans["child-stage"]["span_id"],
    )
    # The parent's own environment is untouched.
    assert os.environ.get("TRACEPARENT") is None


def test_parent_and_child_read_back_as_one_tree(tmp_path: Path) -> None:
    """Parent and child write to one store; the parent's run read with its children shows
    the child's spans under the span that started it."""
    db = tmp_path / "shared.db"
    store = SQLiteHandler(path=str(db))
    trace = get_trace("tree-parent", handlers=[store])
    code = textwrap.dedent(
        f"""
        from flowtrail import SQLiteHandler, get_trace
        trace = get_trace("tree-child", handlers=[SQLiteHandler(path={str(db)!r})])
        with trace.span("job", name="remote-job"):
            trace.info("child working")
        trace.flush()
        """
    )
    with trace.span("workflow", name="wf"), trace.span("job", name="launch"):
        trace.info("starting child")
        result = trace.run_subprocess(
            [sys.executable, "-c", code],
            env=child_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    trace.flush()
    data = store.find_trace_with_id("tree-parent", include_children=True)
    assert {s.name for s in data.spans} == {"wf", "launch", "remote-job"}
    assert len({s.trace_id for s in data.spans}) == 1
    lines = render_tree(data, run_id="tree-parent").splitlines()
    launch = next(i for i, line in enumerate(lines) if line.startswith("  → job.launch"))
    launch_end = next(i for i, line in enumerate(lines) if line.startswith("  ← job.launch"))
    remote = next(i for i, line in enumerate(lines) if "→ job.remote-job" in line)
    assert launch < remote < launch_end
    assert lines[remote].startswith("    → job.remote-job")
    assert "      [INFO] child working" in lines


# ---------------------------------------------------------------------- sampling

# Trace ids whose low 64 bits sit on either side of the 0.5 threshold (2**63), and far.
SAMPLING_IDS = {
    "a" * 16 + "0000000000000001": True,
    "b" * 16 + "7fffffffffffffff": True,
    "c" * 16 + "8000000000000000": False,
    "d" * 16 + "ffffffffffffffff": False,
}
DECIDE = textwrap.dedent(
    """
    import json, sys
    from flowtrail import MemoryHandler, get_trace
    trace = get_trace("sampling-child", handlers=[MemoryHandler()])
    print(json.dumps([trace.trace_id, trace.sampled, trace.traceparent()[-2:]]))
    """
)


def test_sample_decision_is_deterministic_from_the_trace_id() -> None:
    for trace_id, expected in SAMPLING_IDS.items():
        assert sample_decision(trace_id, 0.5) is expected
        assert sample_decision(trace_id, 1.0) is True
        assert sample_decision(trace_id, 0.0) is False
    # The same id gives the same answer every time; the share follows the ratio.
    ids = [os.urandom(16).hex() for _ in range(4000)]
    first = [sample_decision(i, 0.25) for i in ids]
    assert first == [sample_decision(i, 0.25) for i in ids]
    assert 0.2 < sum(first) / len(first) < 0.3


def test_sampling_is_off_by_default() -> None:
    for trace_id in SAMPLING_IDS:
        trace = get_trace(
            "run-default", handlers=[MemoryHandler()], traceparent=f"00-{trace_id}-{PARENT_ID}-00"
        )
        assert trace.sampled


def test_sampling_agrees_across_processes(tmp_path: Path) -> None:
    """Each trace id is decided in this process, in a child started with the trace's
    context, and in a child given only the TRACEPARENT variable: all agree with
    `sample_decision`."""
    ratio = 0.5
    for trace_id, expected in SAMPLING_IDS.items():
        trace = get_trace(
            "sampling-parent",
            handlers=[MemoryHandler()],
            traceparent=f"00-{trace_id}-{PARENT_ID}-01",
            sample_ratio=ratio,
        )
        assert trace.sampled is expected is sample_decision(trace_id, ratio)
        assert trace.traceparent().endswith("-01" if expected else "-00")
        result = trace.run_subprocess(
            [sys.executable, "-c", DECIDE],
            env=child_env(FLOWTRAIL_SAMPLE_RATIO=str(ratio)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        child_id, child_sampled, flags = last_json_line(result.stdout)
        assert child_id == trace_id
        assert child_sampled is expected
        assert flags == ("01" if expected else "00")

    # A child told only the header (with a flag that disagrees) still decides the same.
    for trace_id, expected in SAMPLING_IDS.items():
        result = run_python(
            DECIDE,
            tmp_path,
            env={
                "TRACEPARENT": f"00-{trace_id}-{PARENT_ID}-{'00' if expected else '01'}",
                "FLOWTRAIL_SAMPLE_RATIO": str(ratio),
            },
        )
        assert result.returncode == 0, result.stderr
        assert last_json_line(result.stdout)[:2] == [trace_id, expected]


def test_unsampled_run_keeps_warnings_errors_and_the_path_to_an_error() -> None:
    memory = MemoryHandler()
    unsampled = "d" * 16 + "ffffffffffffffff"
    trace = get_trace(
        "run-unsampled",
        handlers=[memory],
        traceparent=f"00-{unsampled}-{PARENT_ID}-01",
        sample_ratio=0.5,
    )
    assert not trace.sampled
    trace.debug("debug outside")
    trace.info("info outside")
    trace.warning("warning outside")
    with trace.span("workflow", name="wf"):
        trace.info("info in workflow")
        with trace.span("job", name="good-job"), trace.span("stage", name="good-stage"):
            trace.debug("debug in stage")
            trace.warning("warning in stage")
        with trace.span("job", name="bad-job"):
            with trace.span("stage", name="fine-stage"):
                pass
            try:
                with trace.span("stage", name="bad-stage"), trace.span("node", name="bad-node"):
                    trace.error("error in node")
                    raise RuntimeError("node failed")
            except RuntimeError:
                trace.exception("caught")
    trace.error("error outside")

    assert [(r.level, r.message) for r in memory.records] == [
        ("warning", "warning outside"),
        ("warning", "warning in stage"),
        ("error", "error in node"),
        ("exception", "node bad-node failed: RuntimeError: node failed"),  # once, innermost
        ("exception", "caught"),
        ("error", "error outside"),
    ]
    spans = {s.name: s for s in memory.spans}
    assert set(spans) == {"wf", "bad-job", "bad-stage", "bad-node"}
    assert spans["bad-node"].parent_span_id == spans["bad-stage"].span_id
    assert spans["bad-stage"].parent_span_id == spans["bad-job"].span_id
    assert spans["bad-job"].parent_span_id == spans["wf"].span_id
    assert all(not s.sampled for s in spans.values())
    assert (spans["bad-node"].status, spans["bad-stage"].status) == ("error", "error")
    assert spans["bad-job"].status == "ok"


def test_unsampled_run_without_errors_keeps_no_spans() -> None:
    memory = MemoryHandler()
    trace = get_trace(
        "run-clean",
        handlers=[memory],
        traceparent=f"00-{'c' * 16}8000000000000000-{PARENT_ID}-01",
        sample_ratio=0.5,
    )
    with trace.span("workflow", name="wf"), trace.span("job", name="j"):
        trace.info("fine")
    assert memory.spans == []
    assert memory.records == []


def test_sampled_run_keeps_everything() -> None:
    memory = MemoryHandler()
    trace = get_trace(
        "run-kept",
        handlers=[memory],
        traceparent=f"00-{'a' * 16}0000000000000001-{PARENT_ID}-01",
        sample_ratio=0.5,
    )
    assert trace.sampled
    with trace.span("workflow", name="wf"):
        trace.debug("d")
        with trace.span("job", name="j"):
            trace.info("i")
    assert memory.messages == ["d", "i"]
    assert [s.name for s in memory.spans] == ["j", "wf"]
    assert all(s.sampled for s in memory.spans)
