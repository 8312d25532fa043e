"""flowtrail: trace workflow runs (every log line and span of a workflow, its jobs and
its stages) to the terminal, files, SQLite and log services, and read them back."""

from flowtrail.config import ConfigError, Settings
from flowtrail.fronts import (
    ConsoleTrace,
    ElasticsearchTrace,
    FileTrace,
    RestAPITrace,
    SQLiteTrace,
)
from flowtrail.handlers import (
    BaseHandler,
    ConsoleHandler,
    ElasticHandler,
    ElasticsearchHandler,
    FileHandler,
    MemoryHandler,
    RestAPIHandler,
    SQLiteHandler,
    make_handler,
)
from flowtrail.handlers.base import TraceNotFound
from flowtrail.handlers.otlp import OTLPHandler
from flowtrail.pipeline import flush_all
from flowtrail.records import LEVELS, Message, Metadata, RunSummary, Span, SpanEvent, TraceData
from flowtrail.spans import LiveSpan
from flowtrail.stdlib import FlowtrailLogHandler
from flowtrail.testing import capture_traces
from flowtrail.trace import Trace, active_trace, get_trace, shutdown

__version__ = "0.1.0"

__all__ = [
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
]
