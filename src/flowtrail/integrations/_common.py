"""What every engine integration shares: importing the engine lazily (an error that names
the extra to install), finding the trace a run of the engine belongs to, the stdlib logging
bridge, and a record of patched methods that `Patches.undo` puts back."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, cast

from flowtrail.config import mask_secrets
from flowtrail.context import current_run, new_run_id
from flowtrail.spans import LiveSpan
from flowtrail.stdlib import FlowtrailLogHandler
from flowtrail.trace import Trace, active_trace, get_trace

#: Longest ``*.config`` attribute text kept on a span (parameters can be large).
CONFIG_LIMIT = 2000


class MissingEngine(ImportError):
    """The engine an integration traces is not installed."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise `MissingEngine` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingEngine(
            f"flowtrail.integrations.{extra} needs the {module!r} package, which is not "
            f"installed ({exc}); install it with: pip install 'flowtrail[{extra}]'"
        ) from exc


def open_span() -> LiveSpan | None:
    """The span open in the current context, if any."""
    context = current_run.get()
    return context.live if context is not None else None


def trace_of(live: LiveSpan) -> Trace:
    """The trace ``live`` belongs to."""
    return cast(Trace, live.trace)


def current_trace() -> Trace | None:
    """The trace of the code running now: the trace of the open span, else of the
    enclosing ``with get_trace(...)`` block. Code inside a traced node or task logs
    with it: ``current_trace().info("...")``."""
    live = open_span()
    if live is not None:
        return trace_of(live)
    return active_trace()


class TraceSource:
    """Where the spans of an engine's run go. Inside an open span or a ``with
    get_trace()`` block, that trace (the run nests in it); else the trace given to
    ``instrument(trace=...)``; else a new trace per run made with the options given to
    ``instrument`` (its run id from the engine, or a new one with the engine's prefix)."""

    def __init__(self, prefix: str, trace: Trace | None, options: Mapping[str, Any]) -> None:
        self.prefix = prefix
        self.trace = trace
        self.options = dict(options)

    def enclosing(self) -> Trace | None:
        """The trace a run started now nests in, if any."""
        return current_trace() or self.trace

    def new(
        self,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        *,
        workflow_name: str | None = None,
        **context: Any,
    ) -> Trace:
        """A trace for one run of the engine (``context``: ``traceparent``/``baggage``
        of the run it continues)."""
        options = dict(self.options)
        extras = dict(options.pop("extras", None) or {})
        if workflow_name is not None:
            extras.setdefault("workflow_name", workflow_name)
        return get_trace(
            run_id or new_run_id(self.prefix), parent_run_id, extras=extras, **options, **context
        )

    def for_run(self, workflow_name: str | None = None) -> Trace:
        """The enclosing trace, else a new one."""
        return self.enclosing() or self.new(workflow_name=workflow_name)


def config_text(values: Mapping[str, Any]) -> str:
    """A JSON text of a node's or task's configuration, secrets masked, size bounded."""
    text = json.dumps(mask_secrets(dict(values)), default=repr, sort_keys=True)
    if len(text) > CONFIG_LIMIT:
        text = text[: CONFIG_LIMIT - 1] + "…"
    return text


class LogBridge:
    """A `FlowtrailLogHandler` on one stdlib logger (default: the root), so that stdlib
    records written inside a traced node or task go to its trace, with its span.

    `want` only notes the logger; `ensure` (called when a run starts) adds the handler,
    once: a handler on the root logger before the program's ``logging.basicConfig()``
    would make that call do nothing."""

    def __init__(self, factory: Callable[[], FlowtrailLogHandler] = FlowtrailLogHandler) -> None:
        self.factory = factory
        self.handler: FlowtrailLogHandler | None = None
        self.logger: logging.Logger | None = None
        self.wanted: str | logging.Logger | None | bool = False  # False: not wanted

    def want(self, logger: str | logging.Logger | None = None) -> None:
        """Bridge ``logger`` (a name or a logger; None: the root logger) from the next
        run on."""
        self.wanted = logger

    def ensure(self) -> None:
        """Add the handler if it is wanted and not there yet."""
        wanted = self.wanted
        if wanted is False or self.handler is not None:
            return
        self.wanted = False
        if isinstance(wanted, logging.Logger):
            target = wanted
        else:
            target = logging.getLogger(wanted if isinstance(wanted, str) else None)
        if any(isinstance(h, FlowtrailLogHandler) for h in target.handlers):
            return  # the user bridged it already: records would be written twice
        self.handler = self.factory()
        self.logger = target
        target.addHandler(self.handler)

    def remove(self) -> None:
        """Take the bridge away again."""
        if self.handler is not None and self.logger is not None:
            self.logger.removeHandler(self.handler)
        self.handler = self.logger = None
        self.wanted = False


class Patches:
    """Methods replaced on an engine's classes, and the originals to put back. Classes,
    never instances: engines copy their instances (PocketFlow copies each node per run)."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def __bool__(self) -> bool:
        return bool(self._saved)

    def replace(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Set ``owner.name`` to ``make(original)`` where ``owner`` (a class, or a module
        for a name it imported) itself defines ``name``."""
        original = vars(owner).get(name)
        if original is None:
            return
        replacement = make(original)
        try:
            replacement.__flowtrail_original__ = original
        except (AttributeError, TypeError):  # a built-in callable
            pass
        self._saved.append((owner, name, original))
        setattr(owner, name, replacement)

    def replaced(self, owner: Any, name: str) -> bool:
        """Whether ``owner.name`` is one of ours."""
        return any(o is owner and n == name for o, n, _ in self._saved)

    def undo(self) -> None:
        """Put every original back, newest first."""
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)
