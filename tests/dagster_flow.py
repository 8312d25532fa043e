"""The Dagster job of tests/test_integrations_dagster.py: three ops (extract, a transform
that fails on its first attempt and is retried, a load that fails) and two assets.
Imported by the test and, for the multiprocess executor, by every step process Dagster
starts; flowtrail writes to $DAGSTER_FLOW_DIR/traces.db."""

import logging
import os
from pathlib import Path

import dagster as dg

from flowtrail.integrations import dagster as traced

# No `from __future__ import annotations`: Dagster reads the context annotations.
FOLDER = Path(os.environ["DAGSTER_FLOW_DIR"])
traced.instrument(handlers=[{"type": "sqlite", "path": str(FOLDER / "traces.db")}])
std_log = logging.getLogger("etl.dagster")


@dg.op
def extract(context: dg.OpExecutionContext) -> list[int]:
    context.log.info("extracting 3 rows")
    std_log.warning("extract uses the stdlib logger")
    return [1, 2, 3]


@dg.op(retry_policy=dg.RetryPolicy(max_retries=2))
def transform(context: dg.OpExecutionContext, rows: list[int]) -> list[int]:
    marker = FOLDER / f"transform-tried-{context.run_id}"
    context.log.info(f"transform attempt {context.retry_number + 1}")
    if not marker.exists():
        marker.write_text("1")
        raise ConnectionError("warehouse busy")
    return [row * 2 for row in rows]


@dg.op
def load(context: dg.OpExecutionContext, rows: list[int]) -> None:
    context.log.info(f"loading {len(rows)} rows")
    raise PermissionError("table is read-only")


@dg.job
def etl() -> None:
    load(transform(extract()))


@dg.job(executor_def=dg.multiprocess_executor)
def etl_processes() -> None:
    load(transform(extract()))


@dg.asset
def raw_orders(context: dg.AssetExecutionContext) -> list[int]:
    context.log.info("reading orders")
    return [5, 6]


@dg.asset
def order_totals(context: dg.AssetExecutionContext, raw_orders: list[int]) -> int:
    context.log.info("summing orders")
    return sum(raw_orders)
