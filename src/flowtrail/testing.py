"""Helpers for users' own tests: capture every record written while a block runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flowtrail.handlers.memory import MemoryHandler
from flowtrail.trace import _global_handlers


@contextmanager
def capture_traces() -> Iterator[MemoryHandler]:
    """Collect every record (and span) of every trace while the block runs::

        with capture_traces() as captured:
            run_my_workflow()
        assert "done" in captured.messages

    Records still go to their own handlers too.
    """
    handler = MemoryHandler()
    _global_handlers[0] = (*_global_handlers[0], handler)
    try:
        yield handler
    finally:
        _global_handlers[0] = tuple(h for h in _global_handlers[0] if h is not handler)
