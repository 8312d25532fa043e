"""A small built-in workflow for ``flowtrail demo``: four jobs of a few stages, one stage
that fails once and is retried, one that is slow, traced to the configured (by default
console + SQLite) handlers; then a second run of it whose last stage fails for good."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from flowtrail.context import new_run_id
from flowtrail.trace import Trace, get_trace


class TransientError(RuntimeError):
    """A failure that goes away when the stage is tried again."""


def _stage(
    run_id: str,
    base: Mapping[str, Any],
    job: str,
    stage: str,
    work: Callable[[Trace, int], None],
    *,
    retries: int = 0,
    handlers: Any = None,
) -> None:
    # A trace per stage, as a workflow engine would make one: cheap, and its spans nest
    # under the job span open in the context.
    trace = get_trace(run_id, handlers=handlers, extras={**base, "job_name": job})
    for attempt in range(1, retries + 2):
        try:
            with trace.span("stage", name=stage, attempt=attempt) as span:
                trace.info(f"[STAGE]: start {stage} (attempt {attempt})")
                work(trace, attempt)
                span.set_attribute("result", "ok")
            return
        except TransientError:
            trace.warning(f"[STAGE]: {stage} failed on attempt {attempt}; retrying")
    raise RuntimeError(f"stage {stage} failed after {retries + 1} attempts")


def _connect(trace: Trace, attempt: int) -> None:
    trace.debug("opening connection to the source bucket")
    time.sleep(0.02)


def _download(trace: Trace, attempt: int) -> None:
    for part in range(3):
        trace.info(f"downloaded part {part + 1}/3 ({random.randint(900, 1100)} rows)")
        time.sleep(0.01)


def _validate(trace: Trace, attempt: int) -> None:
    trace.info("checking schema of 3,012 rows")
    time.sleep(0.015)
    if attempt == 1:
        raise TransientError("schema registry timed out after 5.0 s")
    trace.info("schema ok")


def _clean(trace: Trace, attempt: int) -> None:
    trace.warning("dropped 12 rows with a null customer id")
    time.sleep(0.01)


def _train(trace: Trace, attempt: int) -> None:
    for epoch in range(1, 4):
        time.sleep(0.08)
        trace.info(f"epoch {epoch}: loss={1.0 / (epoch + 1):.3f}")


def _write(trace: Trace, attempt: int) -> None:
    trace.info("wrote 3,000 rows to warehouse.sales")


def _write_denied(trace: Trace, attempt: int) -> None:
    trace.info("writing 3,000 rows to warehouse.sales")
    raise PermissionError("warehouse.sales is read-only for role demo-etl")


def run_demo(*, handlers: Any = None, run_id: str | None = None, fail: bool = False) -> str:
    """Run the demo workflow; return its run id. With ``fail``, its ``load`` job's stage
    fails for good (the exception is recorded and the run ends in error, not raised)."""
    run_id = run_id or new_run_id("demo")
    base = {"workflow_name": "demo-etl", "environment": "demo", "tags": ["demo", "etl"]}
    workflow = get_trace(run_id, handlers=handlers, extras=base)
    plan = [
        ("extract", [("connect", _connect, 0), ("download", _download, 0)]),
        ("transform", [("validate", _validate, 2), ("clean", _clean, 0)]),
        ("train", [("fit-model", _train, 0)]),
        ("load", [("write", _write_denied if fail else _write, 0)]),
    ]
    try:
        with workflow.span("workflow", name="demo-etl", owner="data-team"):
            workflow.info("[WORKFLOW]: start demo-etl")
            for job, stages in plan:
                with workflow.span("job", name=job, stages=len(stages)):
                    workflow.info(f"[JOB]: start {job}")
                    for stage, work, retries in stages:
                        _stage(run_id, base, job, stage, work, retries=retries, handlers=handlers)
            workflow.info("[WORKFLOW]: demo-etl finished")
    except PermissionError:
        if not fail:
            raise
    workflow.flush()
    return run_id


def demo_store(handlers: Any = None) -> Any:
    """The store the demo writes to with ``handlers`` (default: the configured ones): the
    first handler that can be read back, or None."""
    from flowtrail.handlers.base import StoreReader

    chosen = handlers if handlers is not None else get_trace(new_run_id("demo")).handlers
    return next((h for h in chosen if isinstance(h, StoreReader)), None)
