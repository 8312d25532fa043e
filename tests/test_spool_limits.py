"""The spool's promises to an operator during an outage: it is bounded by
``spool_max_bytes`` (what passes the bound is counted and reported, never a full disk),
it says why records wait (``flowtrail spool``'s last error, a ``.why`` beside each dead
letter, secrets masked), and replays wait as long as the service's ``Retry-After`` asks."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conftest import run_python
from flowtrail import get_trace
from flowtrail.delivery import DeliveryError
from flowtrail.pipeline import Pipeline, PipelineOptions
from flowtrail.records import Metadata
from flowtrail.spool import LAST_ERROR, Spool, SpoolFull
from test_cli_spool import _cli, _listing
from test_restapi import SECRET, Receiver, handler_for, spooled_lines


def _log_in_child(receiver: Receiver, options: dict[str, Any], count: int, spool: Path) -> None:
    """Log ``count`` records ``m0``... to the receiver from a child process that exits
    normally (what it could not deliver is in ``spool``)."""
    handler = {"type": "restapi", "api_url": receiver.url, **options}
    code = textwrap.dedent(
        f"""
        from flowtrail import get_trace, make_handler
        trace = get_trace("child", handlers=[make_handler({handler!r})], exit_timeout=2,
                          log_dir={str(spool.parent)!r})
        for i in range({count}):
            trace.info(f"m{{i}}")
        """
    )
    result = run_python(code, spool.parent.parent)
    assert result.returncode == 0, result.stderr


def _folder_bytes(spool: Path) -> int:
    return sum(p.stat().st_size for p in spool.rglob("*.jsonl*") if not p.name.endswith(".why"))


def test_the_spool_stops_at_its_bound_and_counts_the_rest_as_lost(tmp_path: Path, capfd) -> None:
    receiver = Receiver("generic")
    receiver.stop()  # down for the whole test: everything goes to the spool
    limit = 40_000
    handler = handler_for(
        receiver, tmp_path, spool_max_bytes=limit, retry_deadline=0.2, max_retries=0
    )
    trace = get_trace("bounded", handlers=[handler])
    for i in range(2_000):
        trace.info(f"record {i:05d} " + "x" * 60)
    assert trace.flush(30)
    (pipeline,) = trace.pipelines()
    stats = pipeline.stats
    assert stats.spooled > 0 and stats.dropped > 0
    assert stats.spooled + stats.dropped == 2_000  # every record accounted for
    assert _folder_bytes(tmp_path / "spool") <= limit
    assert len(spooled_lines(tmp_path / "spool")) == stats.spooled
    err = capfd.readouterr().err
    assert "spool_max_bytes=40000" in err and "lost" in err
    # What was kept is delivered once when the service is back.
    receiver.start()
    done = _cli("replay", "--spool-dir", str(tmp_path / "spool"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = receiver.messages()
    assert len(got) == len(set(got)) == stats.spooled
    receiver.stop()


def test_spool_refuses_a_batch_past_its_bound_and_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=2_000)
    spool.write_batch([Metadata(run_id="r", message="a" * 300)])
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    try:
        spool.write_batch([Metadata(run_id="r", message="b" * 1_200)])
    except SpoolFull as exc:
        assert "spool_max_bytes=2000" in str(exc)
    else:
        raise AssertionError("a batch past the bound was spooled")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before
    spool.write_batch([Metadata(run_id="r", message="c" * 10)])  # what fits still goes in
    assert spool.count() == 2


def test_spool_lists_the_last_error_of_each_destination_without_secrets(tmp_path: Path) -> None:
    receiver = Receiver("datadog")
    receiver.plan.extend([503] * 100)
    spool = tmp_path / "logs" / "spool"
    try:
        options = {"service_type": "datadog", "api_key": SECRET, "retry_deadline": 0.3}
        _log_in_child(receiver, options, 50, spool)
        [row] = _listing(spool, tmp_path)
        assert row["records"] == "50"
        assert "HTTP 503" in row["last_error"], row
        assert SECRET not in row["last_error"]
        note = json.loads(next(spool.rglob(LAST_ERROR)).read_text())
        assert note["time"] > 0 and SECRET not in json.dumps(note)
    finally:
        receiver.stop()


def test_a_refused_record_is_a_dead_letter_at_once_with_its_reason(tmp_path: Path) -> None:
    receiver = Receiver("generic")
    receiver.reject = "POISON"
    try:
        handler = handler_for(receiver, tmp_path, buffer_size=100)
        trace = get_trace("run-400", handlers=[handler])
        for i in range(40):
            trace.info("POISON" if i == 9 else f"ok {i}")
        assert trace.flush(30)
        (pipeline,) = trace.pipelines()
        assert pipeline.stats.set_aside == 1 and pipeline.stats.spooled == 0
        [failed] = (tmp_path / "spool").rglob("*.jsonl.failed")
        assert json.loads(failed.read_text())["message"] == "POISON"
        why = json.loads(failed.with_name(failed.name + ".why").read_text())
        assert "HTTP 400" in why["error"] and SECRET not in why["error"]
        [row] = _listing(tmp_path / "spool", tmp_path)
        assert (row["failed"], row["failed_recs"]) == ("1", "1")
        assert "HTTP 400" in row["last_error"]
        # Fixed on the service's side: --dead-letters sends it once, and the note goes.
        receiver.reject = None
        spool = str(tmp_path / "spool")
        done = _cli("replay", "--dead-letters", "--spool-dir", spool, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert receiver.messages().count("POISON") == 1
        assert list((tmp_path / "spool").rglob("*.why")) == []
    finally:
        receiver.stop()


def test_replay_waits_as_long_as_retry_after_asks(tmp_path: Path) -> None:
    receiver = Receiver("generic")
    receiver.stop()
    spool = tmp_path / "logs" / "spool"
    try:
        _log_in_child(receiver, {"retry_deadline": 0.3, "max_retries": 5}, 120, spool)
        receiver.start()
        receiver.plan.extend([(503, 2), (429, 1)])
        (tmp_path / "flowtrail.toml").write_text(
            f'log_dir = "{spool.parent}"\n\n[[trace_handlers]]\ntype = "restapi"\n'
            f'api_url = "{receiver.url}"\nretry_deadline = 10.0\nmax_retries = 5\n'
        )
        done = _cli("replay", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "120 records re-sent, 0 still waiting" in done.stdout
        assert sorted(receiver.messages()) == sorted(f"m{i}" for i in range(120))
        times = [t for t, _ in receiver.times]
        assert times[1] - times[0] >= 1.9  # Retry-After: 2
        assert times[2] - times[1] >= 0.9  # Retry-After: 1
    finally:
        receiver.stop()


class _Busy:
    """An exporter that answers 503 with ``Retry-After`` until told to accept."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self.accept = False
        self.attempts: list[float] = []
        self.written: list[str] = []

    def export(self, batch: Sequence[Any]) -> None:
        self.attempts.append(time.monotonic())
        if not self.accept:
            raise DeliveryError("HTTP 503", retryable=True, retry_after=self.retry_after)
        self.written.extend(r.message for r in batch)

    def retryable(self, exc: BaseException) -> bool:
        return getattr(exc, "retryable", True)

    def close(self) -> None:
        pass

    def sync(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


def test_the_background_replay_waits_for_retry_after(tmp_path: Path) -> None:
    exporter = _Busy(retry_after=1.5)
    options = PipelineOptions(
        spool_dir=str(tmp_path / "spool"),
        replay_interval=0.05,
        max_retries=0,
        flush_interval=0.01,
    )
    pipeline = Pipeline("busy", exporter, options)
    try:
        for i in range(10):
            pipeline.submit(Metadata(run_id="r", message=f"m{i}"))
        assert pipeline.flush(10.0)
        assert pipeline.stats.spooled == 10
        time.sleep(3.5)
        gaps = [b - a for a, b in zip(exporter.attempts, exporter.attempts[1:], strict=False)]
        assert gaps and min(gaps) >= 1.4, gaps  # not every replay_interval (0.05 s)
        exporter.accept = True
        deadline = time.monotonic() + 10
        while len(exporter.written) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(exporter.written) == sorted(f"m{i}" for i in range(10))
    finally:
        pipeline.close(5.0)
