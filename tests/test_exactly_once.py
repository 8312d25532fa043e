"""Exactly once, whatever fails: a disk that fills up in the middle of a batch, a replay
that is partly written, a record that cannot be encoded, options that change between
runs, a damaged spool file, a spool that fails too, and a flush that must survive a
power loss. Each test counts the records written against the records stored."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

import flowtrail
from conftest import run_python
from flowtrail import FileHandler, Metadata, SQLiteHandler, get_trace
from flowtrail.pipeline import PartialExport, Pipeline, PipelineOptions
from flowtrail.spool import Spool


@pytest.fixture(autouse=True)
def close_pipelines():
    yield
    flowtrail.shutdown(10.0)


def metadata_lines(folder: Path) -> list[Metadata]:
    """Every line of metadata.txt decoded: a torn or glued line fails the test."""
    data = (folder / "metadata.txt").read_bytes()
    assert data.endswith(b"\n"), data[-200:]
    return [msgspec.json.decode(line, type=Metadata) for line in data.split(b"\n")[:-1]]


# ---------------------------------------------------------------------- 10: disk full
DISK_FULL = """
import resource, signal, sys
from flowtrail import FileHandler, get_trace
base, limit, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
handler = FileHandler(path=base, format="{message}", batch_size=40, max_retries=0)
trace = get_trace("full", handlers=[handler])
trace.info("warm-up")
assert trace.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
for i in range(count):
    (trace.error if i % 5 == 0 else trace.info)(f"record {i} " + "x" * (i % 7 * 60))
    if i % 40 == 39:
        assert trace.flush()
assert trace.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the space returns
pipeline = trace.pipelines()[0]
assert pipeline.close()
trace.info("after")  # a new worker replays the spool first
assert trace.flush()
stats = pipeline.stats
print(stats.spooled, stats.dropped, stats.replayed)
"""


def test_a_disk_that_fills_up_mid_batch_leaves_each_line_once(tmp_path: Path) -> None:
    base, count = tmp_path / "traces", 800
    result = run_python(
        f"import sys; sys.argv = ['x', {str(base)!r}, '60000', '{count}']\n" + DISK_FULL,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    spooled, dropped, replayed = map(int, result.stdout.split())
    assert spooled > 0 and dropped == 0 and replayed == spooled, result.stdout
    expected = ["warm-up", *(f"record {i} " + "x" * (i % 7 * 60) for i in range(count)), "after"]
    folder = base / "run_id=full"
    records = metadata_lines(folder)
    assert Counter(r.message for r in records) == Counter(expected)
    for name, error in (("stdout.txt", False), ("stderr.txt", True)):
        text = (folder / name).read_text()
        assert text.endswith("\n")
        lines = text.split("\n")[:-1]
        wanted = [r.message for r in records if r.error_flag == error]
        assert Counter(lines) == Counter(wanted), name  # no torn, glued or doubled line
