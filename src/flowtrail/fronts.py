"""The seeds' front classes (migration guides of seeds 002/003): ``FileTrace``,
``SQLiteTrace`` and ``ConsoleTrace`` taking a store URL, each a `Trace` with the matching
handler (and the console), and ``RestAPITrace`` sending to a log service. Their arguments
are keywords, as in the seeds::

    trace = FileTrace(url="file://./logs", run_id="workflow-123", extras={})
    trace = SQLiteTrace(url="sqlite://./logs/traces.db", run_id="workflow-123")
    trace = ConsoleTrace(run_id="workflow-123", extras={})
    trace = RestAPITrace(url="https://api.example.com/logs", run_id="workflow-123",
                         extras={"service_type": "generic", "api_key": "..."})

``file://DIR`` (or ``file:DIR``, or a plain path) puts run folders under ``DIR``;
``sqlite://PATH`` follows SQLAlchemy for three slashes (``sqlite:///rel.db`` is relative,
``sqlite:////abs.db`` absolute) and ``?table=NAME`` names the table. The same URL given
to ``flowtrail show --store`` reads the runs back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import ParseResult, parse_qs

from flowtrail.config import ConfigError, mask_text, resolve_settings
from flowtrail.handlers import BaseHandler, ConsoleHandler, FileHandler, SQLiteHandler
from flowtrail.handlers.elastic import ElasticHandler, options_from_url
from flowtrail.records import TraceData
from flowtrail.trace import Trace

_T = TypeVar("_T")


class _store_method(Generic[_T]):
    """A method usable on the class (``FileTrace.find_traces(path=...)``, as in the
    seeds) and on an instance (then it reads the instance's own store)."""

    def __init__(self, function: Callable[..., _T]) -> None:
        self.function = function
        self.__doc__ = function.__doc__

    def __get__(self, instance: Any, owner: type) -> Callable[..., _T]:
        def bound(*args: Any, **kwargs: Any) -> _T:
            return self.function(owner, instance, *args, **kwargs)

        bound.__doc__ = self.__doc__
        bound.__name__ = self.function.__name__
        return bound


def _url_text(url: str | os.PathLike[str] | ParseResult) -> str:
    if isinstance(url, ParseResult):
        # Not geturl(): it drops the "//" of schemes urllib does not know (sqlite).
        query = f"?{url.query}" if url.query else ""
        return f"{url.scheme}://{url.netloc}{url.path}{query}"
    return os.fspath(url)


class _StoreTrace(Trace):
    """A `Trace` writing to the console and to one store given by URL."""

    #: URL schemes this front accepts.
    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        url: str | os.PathLike[str] | ParseResult | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        extras: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        #: The storing handler (``trace.store.log_buffer``, ``trace.store.search(...)``).
        self.store = self.store_for(url, extras, settings)
        super().__init__(
            run_id,
            parent_run_id,
            handlers=[ConsoleHandler(), self.store],
            extras=extras,
            **settings,
        )

    @classmethod
    def store_for(
        cls,
        url: str | os.PathLike[str] | ParseResult | None,
        extras: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Any:
        """The storing handler of ``url`` (None: the default store of this kind)."""
        raise NotImplementedError

    @classmethod
    def _rest(cls, url: str | os.PathLike[str] | ParseResult) -> str:
        """``url`` without its scheme; a plain path as it is."""
        text = _url_text(url)
        scheme, sep, rest = text.partition(":")
        if not sep or len(scheme) < 2 or "/" in scheme or "\\" in scheme:
            return text  # a path (a Windows drive letter is not a scheme)
        if scheme.lower() not in cls.schemes:
            expected = " or ".join(f"{s}://" for s in cls.schemes)
            raise ConfigError(
                f"flowtrail: {cls.__name__} got url {mask_text(text)!r}; it takes {expected} "
                "URLs or a path"
            )
        return rest[2:] if rest.startswith("//") else rest

    @_store_method
    def find_traces(
        cls, instance: _StoreTrace | None, path: Any = None, extras: Mapping[str, Any] | None = None
    ) -> Iterator[TraceData]:
        """Every run in the store (``path``: a URL or path; default: this trace's
        store, else the default store of this kind), newest first."""
        return cls._reader(instance, path, extras).find_traces()

    @_store_method
    def find_trace_with_id(
        cls,
        instance: _StoreTrace | None,
        run_id: str,
        force_raise: bool = True,
        *,
        path: Any = None,
        extras: Mapping[str, Any] | None = None,
        include_children: bool = True,
    ) -> TraceData:
        """One run with its child runs (see `StoreReader.find_trace_with_id`): raises
        `TraceNotFound` for a run the store does not hold, or with ``force_raise=False``
        returns an empty `TraceData`."""
        return cls._reader(instance, path, extras).find_trace_with_id(
            run_id, force_raise, include_children=include_children
        )

    @classmethod
    def _reader(
        cls, instance: _StoreTrace | None, path: Any, extras: Mapping[str, Any] | None
    ) -> Any:
        if path is None and instance is not None:
            return instance.store
        return cls.store_for(path, extras)


class FileTrace(_StoreTrace):
    """Console + the file store: ``FileTrace(url="file://./logs", run_id=...)`` writes
    ``./logs/run_id=<run id>/stdout.txt``, ``stderr.txt``, ``metadata.txt``."""

    schemes = ("file",)

    @classmethod
    def store_for(
        cls,
        url: str | os.PathLike[str] | ParseResult | None,
        extras: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> FileHandler:
        if url is None:
            return FileHandler()
        return FileHandler(path=cls._rest(url) or "./logs/traces")


class SQLiteTrace(_StoreTrace):
    """Console + the SQLite store: ``SQLiteTrace(url="sqlite://./logs/traces.db",
    run_id=...)``; ``?table=NAME`` names the table (default ``traces``)."""

    schemes = ("sqlite",)

    @classmethod
    def store_for(
        cls,
        url: str | os.PathLike[str] | ParseResult | None,
        extras: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> SQLiteHandler:
        if url is None:
            log_dir = resolve_settings(settings, extras).log_dir
            return SQLiteHandler(path=f"{log_dir}/flowtrail.db")
        rest = cls._rest(url)
        path, _, query = rest.partition("?")
        # SQLAlchemy's rule: sqlite:///rel.db is relative, sqlite:////abs.db absolute.
        if (
            path.startswith("//")
            or path.startswith("/")
            and _url_text(url).lower().startswith("sqlite:///")
        ):
            path = path[1:]
        options: dict[str, Any] = {"path": path or "./logs/flowtrail.db"}
        table = parse_qs(query).get("table")
        if table:
            options["table_name"] = table[-1]
        return SQLiteHandler(**options)


class ConsoleTrace(Trace):
    """The console only: ``ConsoleTrace(run_id="workflow-123", extras={})``. ``url``
    is accepted for the seeds' signature and must be None or ``console://``."""

    def __init__(
        self,
        *,
        url: str | ParseResult | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        extras: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if url is not None and not _url_text(url).lower().startswith("console:"):
            raise ConfigError(
                f"flowtrail: ConsoleTrace got url {mask_text(_url_text(url))!r}; it writes "
                "to the console only (use FileTrace or SQLiteTrace to store records)"
            )
        handlers: list[BaseHandler] = [ConsoleHandler()]
        super().__init__(run_id, parent_run_id, handlers=handlers, extras=extras, **settings)


class RestAPITrace(Trace):
    """A `Trace` sending to a log service (seed 003): its handler is a `RestAPIHandler`
    set up from ``extras`` (``service_type``, ``api_key``, ... as with ``trace_type``
    ``"restapi"``); ``url`` is the endpoint unless ``extras`` give ``api_url``."""

    def __init__(
        self,
        *,
        url: str | ParseResult | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        extras: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        options = dict(extras or {})
        options["trace_type"] = "restapi"
        if url is not None and not options.get("api_url"):
            options["api_url"] = _url_text(url)
        super().__init__(run_id, parent_run_id, extras=options, **settings)


#: ``extras`` keys of seed 002 and the handler options they set.
_ES_EXTRAS = {"es_hosts": "hosts", "index_name": "index"}


class ElasticsearchTrace(_StoreTrace):
    """Console + Elasticsearch or OpenSearch (seed 002): ``ElasticsearchTrace(url=
    "http://localhost:9200", run_id=..., extras={"index_name": ..., "username": ...})``.
    ``url`` is a host (``http(s)://host:9200``), or a store URL
    (``elasticsearch+https://user:pass@host1:9200,host2:9200/index``); ``extras`` may give
    every `ElasticHandler` option by its name or its seed name (``es_hosts``,
    ``index_name``). ``find_traces(extras=...)`` and ``find_trace_with_id(run_id=...,
    extras=...)`` read the runs back (on the class or an instance), and
    ``afind_traces`` / ``afind_trace_with_id`` do it without blocking an event loop."""

    schemes = ("http", "https", "elasticsearch", "opensearch", "es")

    @classmethod
    def store_for(
        cls,
        url: str | os.PathLike[str] | ParseResult | None,
        extras: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> ElasticHandler:
        options: dict[str, Any] = {}
        if url is not None:
            options.update(options_from_url(_url_text(url)))
        known = ElasticHandler.Config.__struct_fields__
        for key, value in (extras or {}).items():
            key = _ES_EXTRAS.get(key, key)
            if key in known and key != "type":
                options[key] = value
        return ElasticHandler(**options)

    @_store_method
    async def afind_traces(
        cls,
        instance: _StoreTrace | None,
        path: Any = None,
        extras: Mapping[str, Any] | None = None,
    ) -> list[TraceData]:
        """`find_traces` in a worker thread: the list of every run."""
        import asyncio

        reader = cls._reader(instance, path, extras)
        return await asyncio.to_thread(lambda: list(reader.find_traces()))

    @_store_method
    async def afind_trace_with_id(
        cls,
        instance: _StoreTrace | None,
        run_id: str,
        force_raise: bool = True,
        *,
        path: Any = None,
        extras: Mapping[str, Any] | None = None,
        include_children: bool = True,
    ) -> TraceData:
        """`find_trace_with_id` in a worker thread."""
        import asyncio

        reader = cls._reader(instance, path, extras)
        return await asyncio.to_thread(
            reader.find_trace_with_id, run_id, force_raise, include_children=include_children
        )


__all__ = ["ConsoleTrace", "ElasticsearchTrace", "FileTrace", "RestAPITrace", "SQLiteTrace"]
