"""The public surface: `flowtrail.__all__` and the typing marker."""

from __future__ import annotations

import importlib
import importlib.resources

import flowtrail

INTENDED = {
    "LEVELS",
    "BaseHandler",
    "ConfigError",
    "ConsoleHandler",
    "ConsoleTrace",
    "ElasticHandler",
    "ElasticsearchHandler",
    "ElasticsearchTrace",
    "FileHandler",
    "FileTrace",
    "FlowtrailLogHandler",
    "LiveSpan",
    "MemoryHandler",
    "Message",
    "Metadata",
    "OTLPHandler",
    "RestAPIHandler",
    "RestAPITrace",
    "RunSummary",
    "SQLiteHandler",
    "SQLiteTrace",
    "Settings",
    "Span",
    "SpanEvent",
    "Trace",
    "TraceData",
    "TraceNotFound",
    "active_trace",
    "capture_traces",
    "flush_all",
    "get_trace",
    "make_handler",
    "shutdown",
}


def test_all_is_the_intended_set() -> None:
    assert set(flowtrail.__all__) == INTENDED
    assert len(flowtrail.__all__) == len(set(flowtrail.__all__)), "duplicates in __all__"


def test_every_exported_name_is_importable() -> None:
    module = importlib.import_module("flowtrail")
    for name in flowtrail.__all__:
        assert getattr(module, name, None) is not None, name
    namespace: dict[str, object] = {}
    exec("from flowtrail import *", namespace)
    assert set(namespace) >= INTENDED


def test_exported_names_are_the_real_objects() -> None:
    from flowtrail.config import ConfigError
    from flowtrail.handlers.file import FileHandler
    from flowtrail.handlers.sqlite import SQLiteHandler
    from flowtrail.records import Metadata
    from flowtrail.trace import Trace, get_trace

    assert flowtrail.ConfigError is ConfigError
    assert issubclass(flowtrail.ConfigError, ValueError)
    assert flowtrail.FileHandler is FileHandler
    assert flowtrail.SQLiteHandler is SQLiteHandler
    assert flowtrail.Metadata is Metadata
    assert flowtrail.Trace is Trace
    assert flowtrail.get_trace is get_trace
    from flowtrail.fronts import ConsoleTrace, FileTrace, SQLiteTrace
    from flowtrail.handlers.base import TraceNotFound

    assert flowtrail.FileTrace is FileTrace and issubclass(FileTrace, Trace)
    assert flowtrail.SQLiteTrace is SQLiteTrace and issubclass(SQLiteTrace, Trace)
    assert flowtrail.ConsoleTrace is ConsoleTrace and issubclass(ConsoleTrace, Trace)
    assert flowtrail.TraceNotFound is TraceNotFound and issubclass(TraceNotFound, LookupError)


def test_version_is_a_string() -> None:
    assert isinstance(flowtrail.__version__, str)
    assert flowtrail.__version__.count(".") >= 1


def test_py_typed_marker_is_in_the_package() -> None:
    marker = importlib.resources.files("flowtrail") / "py.typed"
    assert marker.is_file()
