"""The file store: the seed's layout, the readers and their filters, torn lines, run ids
that cannot leave the base directory, and concurrent writers (threads and processes)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from conftest import ROOT, run_python
from flowtrail import (
    FileHandler,
    Metadata,
    Trace,
    TraceData,
    TraceNotFound,
    get_trace,
    make_handler,
)
from store_cases import ALL, _stamp, dataset, search_cases

BAD_RUN_IDS = ["../x", "a/b", "/etc/passwd", "/tmp/abs", "a\x00b", "..", ".", "a\\b", "", "..\\x"]


#: (search keyword arguments, expected messages oldest first)
SEARCH_CASES = search_cases()


def write_dataset(handler: FileHandler) -> None:
    """Export the data set directly and give the runs increasing modification times."""
    for offset, (run_id, records) in enumerate(dataset().items()):
        handler.export(records)
        stamp = time.time() - 100 + offset * 10
        os.utime(handler.base / f"run_id={run_id}" / "metadata.txt", (stamp, stamp))
    handler.close_exporter()


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def spawn(code: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------------- layout
def test_seed_layout_stdout_stderr_metadata(tmp_path: Path) -> None:
    base = tmp_path / "traces"
    handler = FileHandler(
        type="file",
        path=str(base),
        format=(
            "{datetime} ({process:5d}, {thread:5d}) ({cut_id}) {message:120s} ({filename}:{lineno})"
        ),
    )
    trace = Trace(run_id="workflow-123", parent_run_id="parent-456", handlers=[handler])
    trace.debug("debug line")
    trace.info("Workflow started")
    trace.warning("Retrying failed operation")
    trace.error("an error")
    try:
        raise KeyError("missing")
    except KeyError:
        trace.exception("it broke")
    assert trace.flush()

    folder = base / "run_id=workflow-123"
    assert {p.name for p in folder.iterdir()} == {"stdout.txt", "stderr.txt", "metadata.txt"}
    assert tree(base) == {
        "run_id=workflow-123",
        *(f"run_id=workflow-123/{name}" for name in ("stdout.txt", "stderr.txt", "metadata.txt")),
    }

    stdout = (folder / "stdout.txt").read_text(encoding="utf-8").splitlines()
    stderr = (folder / "stderr.txt").read_text(encoding="utf-8").splitlines()
    assert len(stdout) == 3
    assert len(stderr) == 2
    for line, text in zip(
        stdout, ["debug line", "Workflow started", "Retrying failed"], strict=True
    ):
        assert text in line
        assert "(parent-456 -> workflow-123)" in line
        assert "test_file_handler.py:" in line
    assert "an error" in stderr[0]
    assert "it broke" in stderr[1]
    assert not any("an error" in line or "it broke" in line for line in stdout)

    lines = (folder / "metadata.txt").read_bytes().splitlines()
    records = [msgspec.json.decode(line, type=Metadata) for line in lines]
    assert [r.level for r in records] == ["debug", "info", "warning", "error", "exception"]
    assert [r.error_flag for r in records] == [False, False, False, True, True]
    assert [r.mode for r in records] == ["stdout"] * 3 + ["stderr"] * 2
    assert {r.run_id for r in records} == {"workflow-123"}
    assert {r.parent_run_id for r in records} == {"parent-456"}
    assert all(r.filename == "test_file_handler.py" and r.lineno > 0 for r in records)
    assert all(r.process == os.getpid() for r in records)
    broke = records[-1]
    assert broke.exception_type == "KeyError"
    assert broke.exception_message == "'missing'"
    assert "raise KeyError" in (broke.stack_trace or "")
    # Each JSON line is a complete object with every seed field.
    raw = msgspec.json.decode(lines[0])
    for key in ("run_id", "parent_run_id", "level", "message", "error_flag", "datetime"):
        assert key in raw


def test_empty_stderr_file_without_errors_and_records_of_several_runs(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path / "t"))
    for run_id in ("one", "two"):
        get_trace(run_id, handlers=[handler]).info(f"hello {run_id}")
    assert get_trace("one", handlers=[handler]).flush()
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["run_id=one", "run_id=two"]
    # Seed 000 lists stderr.txt in every run folder: present, and empty without errors.
    assert (tmp_path / "t" / "run_id=one" / "stderr.txt").read_bytes() == b""
    assert handler.find_trace_with_id("two").meta[0].message == "hello two"


def test_from_dict_and_default_path_under_cwd(isolated: Path) -> None:
    handler = make_handler({"type": "file"})
    trace = get_trace("dict-run", handlers=[handler])
    trace.info("via dict")
    trace.flush()
    folder = isolated / "logs" / "traces" / "run_id=dict-run"
    assert (folder / "metadata.txt").is_file()
    assert "via dict" in (folder / "stdout.txt").read_text(encoding="utf-8")


def test_every_field_round_trips(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path / "t"))
    full = Metadata(
        run_id="full",
        parent_run_id="parent",
        level="exception",
        message="all fields",
        error_flag=True,
        datetime=_stamp(1),
        process=11,
        thread=22,
        filename="f.py",
        lineno=33,
        cut_id="parent -> full",
        workflow_name="wf",
        stage_name="stage",
        job_name="job",
        duration_ms=1.5,
        memory_usage_mb=2.25,
        cpu_usage_percent=99.5,
        trace_id="a" * 32,
        span_id="b" * 16,
        parent_span_id="c" * 16,
        exception_type="ValueError",
        exception_message="bad value",
        stack_trace="Traceback\n  line",
        error_code="E42",
        user_id="user",
        tenant_id="tenant",
        environment="prod",
        hostname="host",
        ip_address="10.0.0.1",
        python_version="3.11.7",
        package_version="0.1.0",
        tags=["a", "b"],
        metadata={"k": [1, 2, {"n": None}], "s": "v"},
        created_at=_stamp(1),
        mode="stderr",
    )
    handler.export([full])
    handler.close_exporter()
    assert handler.find_trace_with_id("full").meta == [full]
    assert handler.search(run_id="full") == [full]


# ---------------------------------------------------------------------- readers
def test_find_traces_newest_first(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path / "t"))
    write_dataset(handler)
    traces = list(handler.find_traces())
    assert all(isinstance(t, TraceData) for t in traces)
    assert [t.run_id for t in traces] == ["gamma", "beta", "alpha"]
    assert [len(t.meta) for t in traces] == [5, 2, 4]
    alpha = traces[2]
    assert "Retrying upload" in alpha.stdout
    assert "Upload FAILED" in alpha.stderr
    assert "Upload FAILED" not in alpha.stdout
    assert FileHandler(path=str(tmp_path / "missing")).runs() == []
    assert list(FileHandler(path=str(tmp_path / "missing")).find_traces()) == []


def test_find_trace_with_id(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path / "t"))
    write_dataset(handler)
    alpha = handler.find_trace_with_id("alpha", include_children=False)
    assert [r.message for r in alpha.meta] == ALL[:4]
    assert alpha.run_id == "alpha"
    assert alpha.stdout.splitlines() == ALL[:3]
    assert alpha.stderr.splitlines() == ["Upload FAILED"]
    with_children = handler.find_trace_with_id("alpha", include_children=True)
    assert [r.message for r in with_children.meta] == ALL[:6]
    assert "boom" in with_children.stderr
    assert handler.find_trace_with_id("alpha").meta == with_children.meta  # the default
    empty = handler.find_trace_with_id("never-ran", force_raise=False)
    assert empty.meta == [] and empty.stdout == "" and empty.run_id is None
    with pytest.raises(TraceNotFound, match="never-ran"):
        handler.find_trace_with_id("never-ran")


@pytest.mark.parametrize(("kwargs", "expected"), SEARCH_CASES)
def test_search_filters(tmp_path: Path, kwargs: dict, expected: list[str]) -> None:
    handler = FileHandler(path=str(tmp_path / "t"))
    write_dataset(handler)
    text = kwargs.pop("text", None)
    found = handler.search(text, **kwargs)
    assert [r.message for r in found] == expected


def test_search_unknown_level(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path / "t"))
    write_dataset(handler)
    with pytest.raises(ValueError, match="unknown level"):
        handler.search(level="loud")


def test_runs_summaries_and_filters(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path / "t"))
    write_dataset(handler)
    runs = handler.runs()
    assert [r.run_id for r in runs] == ["gamma", "beta", "alpha"]
    by_id = {r.run_id: r for r in runs}
    alpha = by_id["alpha"]
    assert (alpha.records, alpha.warnings, alpha.errors) == (4, 1, 1)
    assert alpha.workflow_name == "etl"
    assert alpha.status == "error"
    assert alpha.start == _stamp(0) and alpha.end == _stamp(3)
    assert alpha.duration_s == 180.0
    beta = by_id["beta"]
    assert (beta.records, beta.warnings, beta.errors, beta.parent_run_id) == (2, 0, 1, "alpha")
    gamma = by_id["gamma"]
    assert (gamma.records, gamma.errors, gamma.status) == (5, 0, "ok")
    assert [r.run_id for r in handler.runs(workflow="etl")] == ["gamma", "alpha"]
    assert [r.run_id for r in handler.runs(workflow="report")] == ["beta"]
    assert handler.runs(workflow="none") == []
    assert [r.run_id for r in handler.runs(limit=2)] == ["gamma", "beta"]
    assert [r.run_id for r in handler.runs(workflow="etl", limit=1)] == ["gamma"]


def test_readers_see_unflushed_records_of_this_process(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path / "t"), flush_interval=60.0)
    trace = get_trace("pending", handlers=[handler], extras={"workflow_name": "wf"})
    for i in range(10):
        trace.info(f"pending {i}")
    # No flush: the readers flush this process's pipelines to the same path themselves.
    assert len(handler.find_trace_with_id("pending").meta) == 10
    assert len(handler.search("pending")) == 10
    assert handler.runs()[0].records == 10
    assert len(next(iter(handler.find_traces())).meta) == 10


# ---------------------------------------------------------------------- torn lines
def test_readers_tolerate_a_torn_last_line(tmp_path: Path) -> None:
    handler = FileHandler(path=str(tmp_path / "t"))
    write_dataset(handler)
    metadata = tmp_path / "t" / "run_id=alpha" / "metadata.txt"
    whole = metadata.read_bytes().splitlines()[1]
    with metadata.open("ab") as out:
        out.write(whole[: len(whole) // 2])  # a writer killed in the middle of a line
    alpha = handler.find_trace_with_id("alpha", include_children=False)
    assert [r.message for r in alpha.meta] == ALL[:4]
    assert [r.message for r in handler.search(run_id="alpha")] == ALL[:4]
    assert [r.message for r in handler.search("upload")] == ["Retrying upload", "Upload FAILED"]
    assert {r.run_id: r.records for r in handler.runs()}["alpha"] == 4
    assert sum(len(t.meta) for t in handler.find_traces()) == len(ALL)
    with_children = handler.find_trace_with_id("alpha", include_children=True)
    assert len(with_children.meta) == 6


def test_torn_first_line_only(tmp_path: Path) -> None:
    folder = tmp_path / "t" / "run_id=torn"
    folder.mkdir(parents=True)
    (folder / "metadata.txt").write_bytes(b'{"run_id":"torn","level":"in')
    handler = FileHandler(path=str(tmp_path / "t"))
    assert handler.find_trace_with_id("torn", force_raise=False).meta == []
    with pytest.raises(TraceNotFound):
        handler.find_trace_with_id("torn")
    assert handler.runs() == []
    assert handler.search() == []
    assert handler.find_trace_with_id("other", force_raise=False).meta == []


def test_records_appended_after_a_torn_line_are_kept(tmp_path: Path) -> None:
    """A writer killed mid-line leaves no newline; the next writer's records must not be
    glued to the fragment and lost."""
    base = tmp_path / "t"
    handler = FileHandler(path=str(base))
    trace = get_trace("resumed", handlers=[handler])
    trace.info("before the crash")
    trace.flush()
    handler.close_exporter()
    for name in ("metadata.txt", "stdout.txt"):
        with (base / "run_id=resumed" / name).open("ab") as out:
            out.write(b'{"run_id":"resumed","level":"info","mess')
    # Another process (fresh descriptors) continues the run.
    result = run_python(
        "from flowtrail import FileHandler, get_trace\n"
        f"t = get_trace('resumed', handlers=[FileHandler(path={str(base)!r})])\n"
        "t.info('after the crash 1')\n"
        "t.info('after the crash 2')\n"
        "t.flush()\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    messages = [r.message for r in handler.find_trace_with_id("resumed").meta]
    assert messages == ["before the crash", "after the crash 1", "after the crash 2"]
    stdout = (base / "run_id=resumed" / "stdout.txt").read_text(encoding="utf-8").splitlines()
    assert sum("after the crash 1" in line for line in stdout) == 1
    assert sum("after the crash 2" in line for line in stdout) == 1


# ---------------------------------------------------------------------- run ids
@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_bad_run_ids_are_refused_everywhere(tmp_path: Path, run_id: str) -> None:
    base = tmp_path / "inside" / "traces"
    base.mkdir(parents=True)
    handler = FileHandler(path=str(base))
    before = tree(tmp_path)
    with pytest.raises(ValueError):
        get_trace(run_id, handlers=[handler])
    with pytest.raises(ValueError):
        Trace(run_id=run_id, handlers=[handler])
    with pytest.raises(ValueError):
        get_trace("fine", parent_run_id=run_id, handlers=[handler])
    with pytest.raises(ValueError):
        handler.run_dir(run_id)
    with pytest.raises(ValueError):
        handler.find_trace_with_id(run_id)
    with pytest.raises(ValueError):
        handler.find_trace_with_id(run_id, include_children=True)
    if run_id:
        with pytest.raises(ValueError):
            handler.search(run_id=run_id)
        with pytest.raises(ValueError):
            FileHandler(path=str(base), run_id=run_id)  # the stdlib direct-handler form
    # A record that reaches the writer anyway (built by hand) is refused, not written.
    with pytest.raises(ValueError):
        handler.export([Metadata(run_id=run_id, message="escape")])
    handler.close_exporter()
    assert tree(tmp_path) == before


def test_record_with_bad_run_id_through_pipeline_writes_nothing_outside(tmp_path: Path) -> None:
    base = tmp_path / "inside" / "traces"
    handler = FileHandler(path=str(base), max_retries=0)
    trace = get_trace("good", handlers=[handler])
    pipeline = trace.pipelines()[0]
    for run_id in ("../../evil", "/tmp/evil-flowtrail", "..", "a/../../b"):
        pipeline.submit(Metadata(run_id=run_id, message="escape"))
        assert trace.flush()
    outside = {p for p in tree(tmp_path) if not p.startswith("inside")}
    assert all(p == "logs" or p.startswith("logs/spool") for p in outside), outside
    assert not Path("/tmp/evil-flowtrail").exists()
    assert not (tmp_path / "b").exists()
    assert not base.exists() or list(base.iterdir()) == []


def test_stdlib_record_with_unsafe_logger_name_does_not_lose_good_records(
    tmp_path: Path,
) -> None:
    """The direct-handler form uses the logger name as run id when none is given; a
    logger called ``plugins/loader`` gives a run id the file store refuses. The records of
    other runs that share its batch must still be written, once.

    Currently fails: `FileHandler.export` raises ValueError for the first group and the
    pipeline (`Pipeline._export`) spools the whole batch, good records included; the
    spool file can never be replayed (the same ValueError) and `_replay_spool` stops at
    it, so it also blocks every later spool file of this handler."""
    base = tmp_path / "traces"
    handler = FileHandler(path=str(base), flush_interval=60.0)
    trace = get_trace("good", handlers=[FileHandler(path=str(base), flush_interval=60.0)])
    logger = logging.getLogger("plugins/loader")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("from a logger whose name is a path")
        trace.info("good 1")
        trace.info("good 2")
        assert trace.flush()
    finally:
        logger.removeHandler(handler)
    assert not (tmp_path / "plugins").exists()
    assert [r.message for r in FileHandler(path=str(base)).search(run_id="good")] == [
        "good 1",
        "good 2",
    ]


def test_symlinked_run_folder_cannot_leave_the_base(tmp_path: Path) -> None:
    base = tmp_path / "traces"
    outside = tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "run_id=sneaky").symlink_to(outside, target_is_directory=True)
    handler = FileHandler(path=str(base))
    with pytest.raises(ValueError):
        handler.run_dir("sneaky")
    with pytest.raises(ValueError):
        handler.export([Metadata(run_id="sneaky", message="x")])
    assert list(outside.iterdir()) == []


def test_unusual_but_safe_run_ids_stay_inside(tmp_path: Path) -> None:
    base = tmp_path / "traces"
    handler = FileHandler(path=str(base))
    odd = ["...", "a..b", "run id with spaces", "ünïcødé-run", "-dash", "run_id=nested", "x" * 248]
    for run_id in odd:
        get_trace(run_id, handlers=[handler]).info(f"in {run_id}")
    get_trace(odd[0], handlers=[handler]).flush()
    assert {p.parent for p in base.iterdir()} == {base}
    for run_id in odd:
        assert handler.run_dir(run_id).parent == base.resolve()
        assert [r.message for r in handler.find_trace_with_id(run_id).meta] == [f"in {run_id}"]
    with pytest.raises(ValueError):
        get_trace("x" * 256, handlers=[handler])


@pytest.mark.parametrize("run_id", ["x" * 255, "é" * 200], ids=["255-ascii", "200-two-byte"])
def test_run_id_accepted_by_get_trace_is_stored_by_the_file_store(
    tmp_path: Path, run_id: str
) -> None:
    """A run id is either refused up front (ValueError from get_trace) or stored: never
    accepted and then failing in the writer ('File name too long': ``run_id=`` plus 255
    characters, or 200 two-byte characters, is more than a 255-byte folder name)."""
    base = tmp_path / "traces"
    handler = FileHandler(path=str(base), max_retries=0)
    try:
        trace = get_trace(run_id, handlers=[handler])
    except ValueError:
        return
    trace.info("long id")
    assert trace.flush()
    assert trace.pipelines()[0].stats.spooled == 0, trace.pipelines()[0].stats.last_error
    assert [r.message for r in handler.find_trace_with_id(run_id).meta] == ["long id"]


# ---------------------------------------------------------------------- concurrency
def _check_lines(base: Path, run_id: str, writers: list[str], per_writer: int) -> None:
    folder = base / f"run_id={run_id}"
    raw = (folder / "metadata.txt").read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    records = [msgspec.json.decode(line, type=Metadata) for line in lines]  # every line parses
    counts = Counter(r.message.split(" ", 1)[0].rsplit("-", 1)[0] for r in records)
    assert counts == {writer: per_writer for writer in writers}
    for writer in writers:
        numbers = sorted(
            int(r.message.split(" ", 1)[0].rsplit("-", 1)[1])
            for r in records
            if r.message.startswith(f"{writer}-")
        )
        assert numbers == list(range(per_writer))
        # Each writer's own records keep their order.
        own = [r.message.split(" ", 1)[0] for r in records if r.message.startswith(f"{writer}-")]
        assert own == [f"{writer}-{i}" for i in range(per_writer)]
    for record in records:
        pad = int(record.message.split(" ", 1)[0].rsplit("-", 1)[1]) % 5 * 1500
        assert record.message.endswith(" " + "x" * pad + "|")
    errors = sum(1 for r in records if r.error_flag)
    stdout = (folder / "stdout.txt").read_bytes().split(b"\n")
    stderr = (folder / "stderr.txt").read_bytes().split(b"\n")
    assert stdout[-1] == b"" and stderr[-1] == b""
    assert len(stdout) - 1 == len(records) - errors
    assert len(stderr) - 1 == errors
    for line in stdout[:-1] + stderr[:-1]:
        assert line.count(b"|") == 1  # one message per line, nothing glued or cut


def test_eight_threads_same_run(tmp_path: Path) -> None:
    base = tmp_path / "t"
    handler = FileHandler(path=str(base), batch_size=64, format="{level} {message}")
    per_thread = 1500
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        trace = get_trace("shared", handlers=[handler])
        barrier.wait()
        for i in range(per_thread):
            text = f"t{n}-{i} " + "x" * (i % 5 * 1500) + "|"
            if i % 10 == 3:
                trace.error(text)
            else:
                trace.info(text)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert get_trace("shared", handlers=[handler]).flush(60)
    _check_lines(base, "shared", [f"t{n}" for n in range(8)], per_thread)


WRITER = """
import os, sys, time
from flowtrail import FileHandler, get_trace
name, per_writer, base, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
handler = FileHandler(path=base, batch_size=int(sys.argv[5]), format="{level} {message}")
trace = get_trace("shared", handlers=[handler])
trace.info  # warm up before the start signal
while not os.path.exists(go):
    time.sleep(0.005)
for i in range(per_writer):
    text = f"{name}-{i} " + "x" * (i % 5 * 1500) + "|"
    if i % 10 == 3:
        trace.error(text)
    else:
        trace.info(text)
    if i % 500 == 499:
        trace.flush()
"""


def test_four_processes_same_run(tmp_path: Path) -> None:
    base = tmp_path / "t"
    go = tmp_path / "go"
    per_writer = 2500
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = []
    for n in range(4):
        code = (
            f"import sys; sys.argv = ['w', 'p{n}', '{per_writer}', {str(base)!r}, "
            f"{str(go)!r}, '{7 + n * 40}']\n" + WRITER
        )
        procs.append(spawn(code, tmp_path))
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert "flowtrail:" not in err, err
    _check_lines(base, "shared", [f"p{n}" for n in range(4)], per_writer)


def test_threads_inside_processes_same_run(tmp_path: Path) -> None:
    base = tmp_path / "t"
    code = f"""
import threading
from flowtrail import FileHandler, get_trace
handler = FileHandler(path={str(base)!r}, batch_size=50, format="{{level}} {{message}}")
def work(name):
    trace = get_trace("shared", handlers=[handler])
    for i in range(400):
        text = f"{{name}}-{{i}} " + "x" * (i % 5 * 1500) + "|"
        (trace.error if i % 10 == 3 else trace.info)(text)
import sys
threads = [threading.Thread(target=work, args=(f"{{sys.argv[1]}}{{n}}",)) for n in range(3)]
for t in threads: t.start()
for t in threads: t.join()
"""
    procs = []
    for n in range(3):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRAIL_")}
        env["PYTHONPATH"] = str(ROOT / "src")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, f"p{n}x"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    _check_lines(base, "shared", [f"p{n}x{t}" for n in range(3) for t in range(3)], 400)
