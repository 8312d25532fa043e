"""The memory handler: keeps records in a list, for tests and notebooks."""

from __future__ import annotations

import builtins
import threading
from collections import deque
from typing import Annotated, Any, ClassVar

import msgspec

from flowtrail.config import Settings
from flowtrail.handlers.base import BaseHandler, HandlerConfig
from flowtrail.records import Metadata, TraceData


class MemoryConfig(HandlerConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of `MemoryHandler`."""

    #: Keep at most this many records (oldest dropped); None keeps all.
    capacity: Annotated[int, msgspec.Meta(ge=0)] | None = None


class MemoryHandler(BaseHandler):
    """Keep every record (and span) in memory, in order, on the caller's thread.

    ``handler.records`` lists the `Metadata`; ``handler.messages`` their texts;
    `find_trace_with_id` returns them as `TraceData`.
    """

    type: ClassVar[str] = "memory"
    Config: ClassVar[builtins.type[HandlerConfig]] = MemoryConfig
    synchronous: ClassVar[bool] = True

    config: MemoryConfig

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._items: deque[Any] = deque(maxlen=self.config.capacity)
        self._lock = threading.Lock()

    def bound(self, settings: Settings) -> BaseHandler:
        return self  # the records must land in this very object

    def write(self, record: Any) -> None:
        self._items.append(record)

    @property
    def records(self) -> list[Metadata]:
        """The log records, oldest first."""
        return [item for item in list(self._items) if isinstance(item, Metadata)]

    @property
    def spans(self) -> list[Any]:
        """The finished spans, in the order they ended."""
        return [item for item in list(self._items) if not isinstance(item, Metadata)]

    @property
    def messages(self) -> list[str]:
        """The messages of the records, oldest first."""
        return [record.message for record in self.records]

    def clear(self) -> None:
        """Forget everything."""
        self._items.clear()

    def find_traces(self) -> list[TraceData]:
        """One `TraceData` per run id seen, in first-seen order."""
        order: list[str] = []
        for record in self.records:
            if record.run_id not in order:
                order.append(record.run_id)
        return [self.find_trace_with_id(run_id) for run_id in order]

    def find_trace_with_id(self, run_id: str) -> TraceData:
        """The records (and spans) of one run."""
        meta = [record for record in self.records if record.run_id == run_id]
        spans = [span for span in self.spans if getattr(span, "run_id", None) == run_id]
        return TraceData(
            stdout="".join(f"{r.message}\n" for r in meta if not r.error_flag),
            stderr="".join(f"{r.message}\n" for r in meta if r.error_flag),
            meta=meta,
            spans=spans,
        )
