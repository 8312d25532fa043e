"""``flowtrail spool`` and ``flowtrail replay``: records spooled by a real process while
the store could not be written are listed per destination, then re-sent exactly once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, run_python
from flowtrail.handlers import SQLiteHandler
from test_restapi import SECRET, Receiver


def _cli(
    *args: str, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWTRAIL_", "DD_"))}
    env.update(extra_env or {})
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "flowtrail", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _listing(spool: Path, cwd: Path) -> list[dict[str, str]]:
    """``flowtrail spool``'s piped output as rows."""
    result = _cli("spool", "--spool-dir", str(spool), cwd=cwd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if lines == [f"nothing waits in {spool}"]:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def _spool_records(code_handler: str, count: int, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        from flowtrail import FileHandler, SQLiteHandler, get_trace
        trace = get_trace("spooled", handlers=[{code_handler}], exit_timeout=2,
                          log_dir={str(tmp_path / "logs")!r})
        for i in range({count}):
            trace.info(f"m{{i}}")
        """
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr


def _sqlite_messages(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT message FROM traces WHERE message LIKE 'm%'").fetchall()
    return [row[0] for row in rows]


def test_spool_lists_and_replay_delivers_a_locked_sqlite_store_once(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    spool = tmp_path / "logs" / "spool"
    SQLiteHandler(path=str(db))._connect().close()
    holder = sqlite3.connect(str(db), isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        handler = f"SQLiteHandler(path={str(db)!r}, busy_timeout_ms=100, retry_deadline=0.5)"
        _spool_records(handler, 1_200, tmp_path)
        rows = _listing(spool, tmp_path)
        assert len(rows) == 1
        assert rows[0]["type"] == "sqlite"
        assert rows[0]["records"] == "1200"
        assert int(rows[0]["bytes"]) > 1_200 * 50
        assert rows[0]["failed"] == "0"
        assert rows[0]["oldest"].startswith("20")
        folder = spool / rows[0]["destination"]
        manifest = json.loads((folder / "destination.json").read_text())
        assert manifest["type"] == "sqlite" and manifest["options"]["path"] == str(db)
        # Still locked: nothing can be sent, nothing is lost, exit code 1.
        blocked = _cli("replay", "--spool-dir", str(spool), cwd=tmp_path)
        assert blocked.returncode == 1, blocked.stderr
        assert "0 records re-sent, 1200 still waiting" in blocked.stdout
        assert _listing(spool, tmp_path)[0]["records"] == "1200"
    finally:
        holder.rollback()
        holder.close()
    assert _sqlite_messages(db) == []
    done = _cli("replay", rows[0]["destination"][:12], "--spool-dir", str(spool), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1200 records re-sent, 0 still waiting, 0 set aside" in done.stdout
    messages = _sqlite_messages(db)
    assert sorted(messages) == sorted(f"m{i}" for i in range(1_200))
    assert _listing(spool, tmp_path) == []
    again = _cli("replay", "--spool-dir", str(spool), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("nothing waits")
    assert len(_sqlite_messages(db)) == 1_200


def _file_store_messages(store: Path) -> list[str]:
    messages = []
    for path in store.glob("run_id=*/metadata.txt"):
        for line in path.read_text().splitlines():
            message = json.loads(line)["message"]
            if message.startswith("m"):
                messages.append(message)
    return messages


def test_replay_dead_letters_after_the_file_store_path_was_fixed(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the store's folder should be\n")
    store = blocker / "store"
    spool = tmp_path / "logs" / "spool"
    _spool_records(f"FileHandler(path={str(store)!r}, retry_deadline=0.5)", 300, tmp_path)
    rows = _listing(spool, tmp_path)
    assert [(r["type"], r["records"]) for r in rows] == [("file", "300")]
    folder = spool / rows[0]["destination"]
    # Set the files aside, as a replay does with records the store refuses for good.
    waiting = sorted(folder.glob("*.jsonl"))
    assert waiting
    for path in waiting:
        path.rename(path.with_name(path.name + ".failed"))
    rows = _listing(spool, tmp_path)
    assert rows[0]["records"] == "0"
    assert (rows[0]["failed"], rows[0]["failed_recs"]) == (str(len(waiting)), "300")
    blocker.unlink()  # the path is fixed
    plain = _cli("replay", "--spool-dir", str(spool), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "300 records set aside" in plain.stdout
    assert not store.exists()  # dead letters are not re-sent without --dead-letters
    revived = _cli("replay", "--dead-letters", "--spool-dir", str(spool), cwd=tmp_path)
    assert revived.returncode == 0, revived.stderr
    assert "300 records re-sent, 0 still waiting, 0 set aside" in revived.stdout
    assert sorted(_file_store_messages(store)) == sorted(f"m{i}" for i in range(300))
    assert _listing(spool, tmp_path) == []


def test_spool_with_nothing_waiting(tmp_path: Path) -> None:
    spool = tmp_path / "none"
    result = _cli("spool", "--spool-dir", str(spool), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"nothing waits in {spool}\n"


@pytest.mark.parametrize("key_from", ["environment", "config file"])
def test_replay_rebuilds_a_restapi_handler_without_its_key_in_the_spool(
    tmp_path: Path, key_from: str
) -> None:
    """The key comes from DD_API_KEY (the handler is rebuilt from destination.json), or
    from the configured handler whose spool folder it is."""
    receiver = Receiver("datadog")
    receiver.stop()  # the service is down: the records spool
    spool = tmp_path / "logs" / "spool"
    try:
        handler = (
            f'make_handler({{"type": "restapi", "service_type": "datadog", '
            f'"api_url": {receiver.url!r}, "api_key": {SECRET!r}, "retry_deadline": 0.5}})'
        )
        code = textwrap.dedent(
            f"""
            from flowtrail import get_trace, make_handler
            trace = get_trace("remote", handlers=[{handler}], exit_timeout=2,
                              log_dir={str(spool.parent)!r})
            for i in range(400):
                trace.info(f"m{{i}}")
            """
        )
        result = run_python(code, tmp_path)
        assert result.returncode == 0, result.stderr
        rows = _listing(spool, tmp_path)
        assert [(r["type"], r["records"]) for r in rows] == [("restapi", "400")]
        for path in spool.rglob("*"):
            if path.is_file():
                assert SECRET not in path.read_text(), path
        receiver.start()
        extra_env = {"DD_API_KEY": SECRET}
        if key_from == "config file":
            extra_env = {}
            (tmp_path / "flowtrail.toml").write_text(
                f'log_dir = "{spool.parent}"\n\n[[trace_handlers]]\ntype = "restapi"\n'
                f'service_type = "datadog"\napi_url = "{receiver.url}"\n'
                f'api_key = "{SECRET}"\nretry_deadline = 0.5\n'
            )
        done = _cli("replay", cwd=tmp_path, extra_env=extra_env)
        assert done.returncode == 0, done.stderr
        assert "400 records re-sent, 0 still waiting" in done.stdout
        assert receiver.errors == []  # the format checks, DD-API-KEY among them
        assert {headers["dd-api-key"] for _, headers, _ in receiver.requests} == {SECRET}
        assert sorted(receiver.messages()) == sorted(f"m{i}" for i in range(400))
        assert _listing(spool, tmp_path) == []
    finally:
        receiver.stop()
