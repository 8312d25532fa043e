"""A run written by several processes (pool workers, a forked child) is read back in the
order things happened, on every store: each process sends its records in batches of its
own, so the stores hold them interleaved by batch, not by time. ``show``, ``tail`` and
``report`` read `iter_records`; the run's first and last record come from
`record_counts`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flowtrail import FileHandler, SQLiteHandler
from flowtrail.records import Metadata


def _record(process: int, second: int, micros: int, text: str, error: bool = False) -> Metadata:
    return Metadata(
        run_id="pooled",
        level="error" if error else "info",
        error_flag=error,
        message=text,
        datetime=f"2026-12-01T10:00:{second:02d}.{micros:06d}+00:00",
        process=process,
        hostname="host-a",
    )


def batches() -> list[list[Metadata]]:
    """The parent's first record, then the batches of two workers as they flushed them
    (worker 2 flushed first, though worker 1 started first), then the parent's last."""
    worker1 = [_record(101, 1 + i, 0, f"w1 step {i}") for i in range(3)]
    worker2 = [_record(102, 1 + i, 500, f"w2 step {i}", error=i == 1) for i in range(3)]
    return [
        [_record(100, 0, 0, "parent starts")],
        worker2,
        worker1,
        [_record(100, 9, 0, "parent ends")],
    ]


EXPECTED = [
    "parent starts",
    "w1 step 0",
    "w2 step 0",
    "w1 step 1",
    "w2 step 1",
    "w1 step 2",
    "w2 step 2",
    "parent ends",
]


@pytest.fixture(params=["file", "sqlite"])
def store(request, tmp_path: Path):
    if request.param == "file":
        return FileHandler(path=str(tmp_path / "files"))
    return SQLiteHandler(path=str(tmp_path / "s.db"))


def test_records_of_several_processes_read_in_time_order(store) -> None:
    for batch in batches():
        store.export(batch)
    assert [r.message for r in store.iter_records("pooled")] == EXPECTED
    assert [r.message for r in store.find_trace_with_id("pooled").meta] == EXPECTED
    counts = store.record_counts("pooled")
    assert counts.records == 8 and counts.error_records == 1
    assert counts.first is not None and counts.first.message == "parent starts"
    assert counts.last is not None and counts.last.message == "parent ends"
    assert counts.first_error is not None and counts.first_error.message == "w2 step 1"
    (summary,) = store.runs()
    assert summary.start == "2026-12-01T10:00:00.000000+00:00"
    assert summary.end == "2026-12-01T10:00:09.000000+00:00"


def test_a_pool_run_shows_in_time_order(store, tmp_path: Path) -> None:
    """Real pool workers, each flushing its own batches; `flowtrail show` lists the run
    in time order."""
    url = store.config.path
    kind = "FileHandler" if isinstance(store, FileHandler) else "SQLiteHandler"
    code = f"""
import multiprocessing as mp, time
from flowtrail import {kind}, get_trace
def work(k):
    trace = get_trace("pool-run", handlers=[{kind}(path={url!r})])
    for i in range(3):
        trace.info(f"worker {{k}} step {{i}}")
        time.sleep(0.05)
if __name__ == "__main__":
    mp.set_start_method("spawn")
    trace = get_trace("pool-run", handlers=[{kind}(path={url!r})])
    trace.info("parent starts")
    trace.flush()
    with mp.Pool(2) as pool:
        pool.map(work, [0, 1])
        pool.close()
        pool.join()
    trace.info("parent ends")
"""
    script = tmp_path / "pool.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = list(store.iter_records("pool-run"))
    assert len(records) == 8
    stamps = [r.datetime for r in records]
    assert stamps == sorted(stamps)
    assert records[0].message == "parent starts" and records[-1].message == "parent ends"
    shown = subprocess.run(
        [sys.executable, "-m", "flowtrail", "show", "pool-run", "--store", url],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if "step" in line or "parent" in line]
    assert [line.split("INFO")[1].split("[")[0].strip() for line in lines] == [
        r.message for r in records
    ]


def test_elasticsearch_reads_them_in_the_same_order(search_url: str) -> None:
    import uuid

    from flowtrail import ElasticHandler

    store = ElasticHandler(hosts=[search_url], index=f"order-{uuid.uuid4().hex[:8]}")
    for batch in batches():
        store.export(batch)
    assert [r.message for r in store.iter_records("pooled")] == EXPECTED
    assert [r.message for r in store.find_trace_with_id("pooled").meta] == EXPECTED
    counts = store.record_counts("pooled")
    assert counts.first is not None and counts.first.message == "parent starts"
    assert counts.last is not None and counts.last.message == "parent ends"
    assert counts.first_error is not None and counts.first_error.message == "w2 step 1"


def test_a_file_counted_in_order_then_written_out_of_order_is_read_in_order(tmp_path) -> None:
    """The file store remembers that a run's file was in order when it counted it; a batch
    written after that (an earlier time, from another process) is still put in place."""
    store = FileHandler(path=str(tmp_path / "files"))
    first, worker2, worker1, last = batches()
    store.export(first + worker1)
    assert store.record_counts("pooled").records == 4  # in order, remembered
    assert [r.message for r in store.iter_records("pooled")][:2] == ["parent starts", "w1 step 0"]
    store.export(worker2 + last)
    assert [r.message for r in store.iter_records("pooled")] == EXPECTED
    assert store.record_counts("pooled").first_error.message == "w2 step 1"


def test_tail_prints_a_late_batch_of_another_process_once(store) -> None:
    """`flowtrail tail` polls the run in time order: the batch a second process sends
    late lands among records already printed; each record is printed once."""
    from flowtrail.formats.tail import RunFollower

    first, worker2, worker1, last = batches()
    follower = RunFollower("pooled")
    store.export(first + worker1)
    printed = follower.new_lines(store.find_trace_with_id("pooled", include_children=False))
    store.export(worker2 + last)
    printed += follower.new_lines(store.find_trace_with_id("pooled", include_children=False))
    messages = [line.split("INFO")[-1].split("ERROR")[-1].strip() for line in printed]
    assert sorted(messages) == sorted(EXPECTED)
    assert follower.new_lines(store.find_trace_with_id("pooled", include_children=False)) == []
