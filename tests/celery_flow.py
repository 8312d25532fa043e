"""The Celery app of tests/test_integrations_celery.py, imported by the test and by the
worker process it starts: a filesystem broker and result store in $CELERY_FLOW_DIR, and
flowtrail writing to $CELERY_FLOW_DIR/traces.db."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from celery import Celery
from celery.utils.log import get_task_logger

from flowtrail.integrations import celery as traced

FOLDER = Path(os.environ["CELERY_FLOW_DIR"])
QUEUE = FOLDER / "queue"
for folder in (QUEUE, FOLDER / "processed", FOLDER / "results"):
    folder.mkdir(parents=True, exist_ok=True)

app = Celery("celery_flow")
app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": str(QUEUE),
        "data_folder_out": str(QUEUE),
        "processed_folder": str(FOLDER / "processed"),
        "store_processed": False,
        "polling_interval": 0.05,
    },
    result_backend=f"file://{FOLDER / 'results'}",
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
traced.instrument(handlers=[{"type": "sqlite", "path": str(FOLDER / "traces.db")}])

task_log = get_task_logger(__name__)
std_log = logging.getLogger("etl.celery")


@app.task
def pipeline(n: int) -> list[str]:
    """Sends one task that recovers after a retry and one that fails."""
    task_log.info("pipeline of %d rows", n)
    return [flaky.delay(n).id, broken.delay().id]


@app.task(bind=True, max_retries=3)
def flaky(self, n: int) -> int:  # type: ignore[no-untyped-def]
    std_log.warning("flaky attempt %d", self.request.retries + 1)
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("broker busy"), countdown=0)
    return n * 2


@app.task
def broken() -> None:
    task_log.info("about to fail")
    raise ValueError("bad row 7")
