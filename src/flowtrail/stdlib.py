"""The bridge from the `logging` module: stdlib records become flowtrail records.

`FlowtrailLogHandler` sends every stdlib record to the handlers of the trace active in
the current context (``with get_trace(...)``, or a span), or to its own handlers. Each
flowtrail handler is also a `logging.Handler` for the seeds' direct form.
"""

from __future__ import annotations

import logging
from typing import Any

from flowtrail.context import current_run, current_trace
from flowtrail.logrecords import (
    IGNORED_LOGGERS,
    drop_echo,
    is_ignored_logger,
    level_name,
    metadata_from_log_record,
    record_level,
    writing,
)


class FlowtrailLogHandler(logging.Handler):
    """A stdlib handler that forwards records to flowtrail.

    With no arguments, records go to the handlers of the trace active in the current
    context (inside ``with get_trace(...)`` or a span); outside any trace they go to the
    trace given as ``trace=`` or are ignored. ``logging.getLogger().addHandler(
    FlowtrailLogHandler())`` is all it takes.
    """

    def __init__(self, trace: Any = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.trace = trace

    def emit(self, record: logging.LogRecord) -> None:
        if is_ignored_logger(record.name) or drop_echo(record):
            return
        writing.active = True
        try:
            trace = current_trace.get()
            if trace is None:
                context = current_run.get()
                live = context.live if context is not None else None
                trace = live.trace if live is not None else self.trace
            if trace is not None:
                trace._log_record(record)
        except Exception:
            self.handleError(record)
        finally:
            writing.active = False


__all__ = [
    "IGNORED_LOGGERS",
    "FlowtrailLogHandler",
    "is_ignored_logger",
    "level_name",
    "metadata_from_log_record",
    "record_level",
]
