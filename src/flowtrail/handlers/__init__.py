"""Handlers: where records go. `make_handler` builds one from a dict with ``type``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import msgspec

from flowtrail.config import ConfigError, shown
from flowtrail.handlers.base import BaseHandler, check_run_id
from flowtrail.handlers.console import ConsoleHandler
from flowtrail.handlers.elastic import ElasticHandler, ElasticsearchHandler
from flowtrail.handlers.file import FileHandler
from flowtrail.handlers.memory import MemoryHandler
from flowtrail.handlers.restapi import RestAPIHandler
from flowtrail.handlers.sqlite import SQLiteHandler

#: ``type`` names and the handler classes (``module:Class`` for lazily imported ones).
HANDLER_TYPES: dict[str, Any] = {
    "console": ConsoleHandler,
    "file": FileHandler,
    "sqlite": SQLiteHandler,
    "memory": MemoryHandler,
    "restapi": RestAPIHandler,
    "elastic": ElasticHandler,
    "otlp": "flowtrail.handlers.otlp:OTLPHandler",
}


def handler_class(name: str) -> type[BaseHandler]:
    """The handler class of a ``type`` name, or `ConfigError` listing the types."""
    target = HANDLER_TYPES.get(str(name).lower())
    if target is None:
        raise ConfigError(
            f"flowtrail config: handler type {name!r} is not known; "
            f"use one of: {', '.join(sorted(HANDLER_TYPES))}"
        )
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
    return target


def make_handler(spec: BaseHandler | Mapping[str, Any]) -> BaseHandler:
    """A handler from a handler object (returned as is) or a dict with ``type``."""
    if isinstance(spec, BaseHandler):
        return spec
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"flowtrail config: a handler must be a handler object or a dict with 'type', "
            f"got {type(spec).__name__}"
        )
    if "type" not in spec:
        raise ConfigError(
            f"flowtrail config: handler {shown(dict(spec))} has no 'type'; "
            f"use one of: {', '.join(sorted(HANDLER_TYPES))}"
        )
    try:
        key = msgspec.json.encode(spec, order="deterministic")
    except (TypeError, msgspec.EncodeError):
        key = None
    if key is not None and (cached := _from_dicts.get(key)) is not None:
        return cached
    options = dict(spec)
    cls = handler_class(options.pop("type"))
    handler = cls(**options)
    if key is not None and cls.type != "memory":
        if len(_from_dicts) > 256:
            _from_dicts.clear()
        _from_dicts[key] = handler
    return handler


#: Handlers made from dicts, by their JSON: configs are immutable, so equal dicts can
#: share one handler object.
_from_dicts: dict[bytes, BaseHandler] = {}


__all__ = [
    "BaseHandler",
    "ConsoleHandler",
    "ElasticHandler",
    "ElasticsearchHandler",
    "FileHandler",
    "HANDLER_TYPES",
    "MemoryHandler",
    "RestAPIHandler",
    "SQLiteHandler",
    "check_run_id",
    "handler_class",
    "make_handler",
]
