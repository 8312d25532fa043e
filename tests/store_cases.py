"""Records, messages and search cases shared by the file and SQLite store tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flowtrail import Metadata

UTC = timezone.utc
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))


def _stamp(minutes: float, tz: timezone = UTC) -> str:
    return (T0 + timedelta(minutes=minutes)).astimezone(tz).isoformat(timespec="microseconds")


def _record(run_id: str, level: str, message: str, minutes: float, **fields) -> Metadata:
    tz = fields.pop("tz", UTC)
    return Metadata(
        run_id=run_id,
        level=level,
        message=message,
        error_flag=level in ("error", "exception"),
        mode="stderr" if level in ("error", "exception") else "stdout",
        datetime=_stamp(minutes, tz),
        created_at=_stamp(minutes, tz),
        process=1234,
        thread=5678,
        filename="job.py",
        lineno=int(minutes) + 1,
        **fields,
    )


def dataset() -> dict[str, list[Metadata]]:
    """Three runs; ``beta`` is a child of ``alpha``; ``gamma`` is stamped in +02:00."""
    return {
        "alpha": [
            _record("alpha", "info", "[WORKFLOW]: Start alpha", 0, workflow_name="etl"),
            _record("alpha", "debug", "loading rows", 1, workflow_name="etl"),
            _record(
                "alpha",
                "warning",
                "Retrying upload",
                2,
                workflow_name="etl",
                user_id="ana",
                tags=["team:data", "retry"],
            ),
            _record(
                "alpha",
                "error",
                "Upload FAILED",
                3,
                workflow_name="etl",
                user_id="ana",
                tags=["team:data"],
            ),
        ],
        "beta": [
            _record(
                "beta",
                "info",
                "render report",
                10,
                workflow_name="report",
                parent_run_id="alpha",
                user_id="bo",
                tags=["team:data"],
            ),
            _record(
                "beta",
                "exception",
                "boom",
                11,
                workflow_name="report",
                parent_run_id="alpha",
                exception_type="ZeroDivisionError",
                exception_message="division by zero",
                stack_trace="Traceback ...",
            ),
        ],
        "gamma": [
            _record("gamma", "info", "100% done", 20, workflow_name="etl", tz=PLUS_TWO),
            _record("gamma", "info", "1000 done", 21, workflow_name="etl", tz=PLUS_TWO),
            _record("gamma", "info", "a_b", 22, workflow_name="etl", tz=PLUS_TWO),
            _record("gamma", "info", "axb", 23, workflow_name="etl", tz=PLUS_TWO),
            _record("gamma", "info", "Échec total", 24, workflow_name="etl", tz=PLUS_TWO),
        ],
    }


ALL = [
    "[WORKFLOW]: Start alpha",
    "loading rows",
    "Retrying upload",
    "Upload FAILED",
    "render report",
    "boom",
    "100% done",
    "1000 done",
    "a_b",
    "axb",
    "Échec total",
]


def search_cases() -> list[tuple[dict, list[str]]]:
    """(search keyword arguments, expected messages oldest first), built afresh for each
    caller: ``test_search_filters`` pops ``text`` from its kwargs, so the two test modules
    must not share the dictionaries."""
    return [
        ({}, ALL),
        ({"text": "upload"}, ["Retrying upload", "Upload FAILED"]),
        ({"text": "UPLOAD"}, ["Retrying upload", "Upload FAILED"]),
        ({"text": "division"}, ["boom"]),
        ({"text": "100%"}, ["100% done"]),
        ({"text": "a_b"}, ["a_b"]),
        ({"text": "ÉCHEC"}, ["Échec total"]),
        ({"text": "échec"}, ["Échec total"]),
        ({"text": "no such text"}, []),
        ({"run_id": "beta"}, ["render report", "boom"]),
        ({"run_id": "nobody"}, []),
        ({"workflow": "etl"}, [m for m in ALL if m not in ("render report", "boom")]),
        ({"workflow": "report"}, ["render report", "boom"]),
        ({"workflow": "nothing"}, []),
        ({"level": "debug"}, ALL),
        ({"level": "warning"}, ["Retrying upload", "Upload FAILED", "boom"]),
        ({"level": "ERROR"}, ["Upload FAILED", "boom"]),
        ({"level": "exception"}, ["boom"]),
        ({"since": _stamp(10)}, ALL[4:]),
        ({"until": _stamp(3)}, ALL[:4]),
        ({"since": _stamp(2), "until": _stamp(11)}, ALL[2:6]),
        # The same instants written in other forms: an aware datetime, a naive string (UTC),
        # a 'Z' suffix and another offset.
        ({"since": T0 + timedelta(minutes=20)}, ALL[6:]),
        ({"since": "2026-01-01T12:21:00"}, ALL[7:]),
        ({"until": "2026-01-01T12:00:00Z"}, ALL[:1]),
        ({"since": _stamp(22, PLUS_TWO), "until": _stamp(23, UTC)}, ["a_b", "axb"]),
        ({"text": "done", "workflow": "etl", "level": "info", "since": _stamp(21)}, ["1000 done"]),
        (
            {"text": "o", "run_id": "alpha", "level": "warning"},
            ["Retrying upload", "Upload FAILED"],
        ),
        ({"user": "ana"}, ["Retrying upload", "Upload FAILED"]),
        ({"user": "nobody"}, []),
        ({"tags": ["team:data"]}, ["Retrying upload", "Upload FAILED", "render report"]),
        ({"tags": ["team:data", "retry"]}, ["Retrying upload"]),
        ({"tags": ["team:data"], "user": "bo", "text": "REPORT"}, ["render report"]),
        ({"tags": ["team:data"], "limit": 2}, ["Retrying upload", "Upload FAILED"]),
        ({"limit": 2}, ALL[:2]),
        ({"workflow": "etl", "limit": 5}, ALL[:4] + ALL[6:7]),
        ({"limit": None}, ALL),
    ]
