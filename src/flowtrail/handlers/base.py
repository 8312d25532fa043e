"""What every handler shares: construction from keywords or a dict with validation, the
binding to settings, the pipeline it writes through, and the stdlib `logging.Handler` face
that makes ``logger.addHandler(FileHandler(run_id=..., ...))`` work (seeds 002/003)."""

from __future__ import annotations

import builtins
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec

from flowtrail.config import (
    ConfigError,
    Settings,
    describe_validation_error,
    is_secret_key,
    mask_secrets,
    resolve_settings,
    shown,
    unknown_key_error,
)

# Run ids are checked in context.py; these names stay importable from here.
from flowtrail.context import MAX_RUN_ID_BYTES as MAX_RUN_ID_BYTES
from flowtrail.context import check_run_id
from flowtrail.context import safe_run_id as safe_run_id
from flowtrail.logrecords import drop_echo, is_ignored_logger, metadata_from_log_record, writing
from flowtrail.pipeline import Pipeline, PipelineOptions, all_pipelines, get_pipeline
from flowtrail.records import Metadata, Span, TraceData

if TYPE_CHECKING:
    from datetime import datetime

    from flowtrail.handlers.query import RecordCounts
    from flowtrail.metrics import Metrics
    from flowtrail.records import RunSummary


def _slug(name: str) -> str:
    """The last part of a path or URL, as characters safe in a folder name."""
    tail = name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._]+", "_", tail).strip("._")[:40]


def _holds_secret(value: Any) -> bool:
    """Whether a string (in a list) shows a secret `mask_secrets` would hide."""
    if isinstance(value, list):
        return any(_holds_secret(item) for item in value)
    return isinstance(value, str) and mask_secrets(value) != value


class HandlerConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options every handler accepts."""

    type: str = ""


class PipelineConfig(HandlerConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of handlers that write through a background pipeline."""

    batch_size: Annotated[int, msgspec.Meta(gt=0)] = 1000
    #: Seed name of ``batch_size``.
    buffer_size: Annotated[int, msgspec.Meta(gt=0)] | None = None
    max_batch_bytes: Annotated[int, msgspec.Meta(gt=0)] = 16 * 1024 * 1024
    #: Seconds between writes of a partly filled batch (at least a millisecond).
    flush_interval: Annotated[float, msgspec.Meta(ge=0.001)] = 0.5
    queue_size: Annotated[int, msgspec.Meta(gt=0)] = 100_000
    #: Bytes of (large) messages the queue may hold before ``overflow`` applies.
    queue_bytes: Annotated[int, msgspec.Meta(gt=0)] = 64 * 1024 * 1024
    #: When the queue is full: ``help`` (local stores' default: the caller writes a batch
    #: itself), ``spill`` (remote stores' default: to the spool), ``drop`` (counted) or
    #: ``block``.
    overflow: Literal["help", "spill", "drop", "block"] | None = None
    spool_dir: str | None = None
    #: The most bytes this destination's spool folder may hold (dead letters included;
    #: None: unbounded). Records past it are counted and reported as lost.
    spool_max_bytes: Annotated[int, msgspec.Meta(gt=0)] | None = 1024**3
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 5
    retry_deadline: Annotated[float, msgspec.Meta(ge=0)] = 30.0


#: Options added after the spool was keyed by destination: not part of legacy folder names.
_NEWER_OPTIONS = ("spool_max_bytes",)

_PIPELINE_ACCEPTED = {
    "batch_size": "a positive integer",
    "buffer_size": "a positive integer",
    "max_batch_bytes": "a positive integer",
    "flush_interval": "a finite number of seconds >= 0.001",
    "queue_size": "a positive integer",
    "queue_bytes": "a positive number of bytes",
    "overflow": "one of 'help', 'spill', 'drop' (counted), 'block'",
    "spool_dir": "a directory path",
    "spool_max_bytes": "a positive number of bytes, or null for no limit",
    "max_retries": "an integer >= 0",
    "retry_deadline": "a finite number of seconds >= 0",
    "timeout": "a finite number of seconds >= 0",
}


class BaseHandler(logging.Handler):
    """A place records go. Constructible with keywords (``FileHandler(type="file",
    path=...)``) or from a dict (`make_handler`). Also a `logging.Handler`: given
    ``run_id=`` it can be added to a stdlib logger directly."""

    #: The ``type`` value naming this handler in configuration.
    type: ClassVar[str] = ""
    #: Its options.
    Config: ClassVar[builtins.type[HandlerConfig]] = HandlerConfig
    #: Written on the caller's thread (console, memory) rather than through a pipeline.
    synchronous: ClassVar[bool] = False
    #: Writes to this machine's disk (file, SQLite): a full queue may make the caller
    #: write a batch itself rather than spill.
    local: ClassVar[bool] = False
    #: Keys of the config that are secrets: never shown in repr or errors.
    secret_keys: ClassVar[frozenset[str]] = frozenset()
    accepted: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        *,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        extras: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        # Everything is checked before logging.Handler.__init__, which registers the
        # handler for logging.shutdown: a refused handler must leave nothing behind.
        self.config = self.build_config(options)
        self.run_id = check_run_id(run_id) if run_id is not None else None
        self.parent_run_id = check_run_id(parent_run_id) if parent_run_id is not None else None
        self.extras = dict(extras or {})
        self._direct_pipeline: Pipeline | None = None
        self._direct_settings: Settings | None = None
        logging.Handler.__init__(self)

    # ------------------------------------------------------------------ configuration
    @classmethod
    def build_config(cls, options: Mapping[str, Any]) -> Any:
        """Validate options into this handler's `Config`, or raise `ConfigError`."""
        data = dict(options)
        given_type = data.pop("type", None)
        if given_type not in (None, cls.type) and not cls.accepts_type(given_type):
            raise ConfigError(
                f"flowtrail config: {cls.__name__} got type={given_type!r}; "
                f"its type is {cls.type!r}"
            )
        known = cls.Config.__struct_fields__
        for key in data:
            if key not in known:
                raise unknown_key_error(key, f"the {cls.type!r} handler options", list(known))
        try:
            config = msgspec.convert({"type": cls.type, **data}, cls.Config, strict=False)
        except msgspec.ValidationError as exc:
            bad_key, reason = describe_validation_error(exc, data, cls.accepted_texts())
            value = data.get(bad_key) if bad_key is not None else None
            raise cls.option_error(bad_key, value, reason) from None
        cls.check_config(config)
        return config

    @classmethod
    def accepted_texts(cls) -> dict[str, str]:
        """What each option accepts, for error messages."""
        return {**_PIPELINE_ACCEPTED, **cls.accepted}

    @classmethod
    def option_error(cls, key: str | None, value: Any, reason: str) -> ConfigError:
        """The error for a wrong option: its key, its value (secrets masked), why, and
        what is accepted."""
        value_text = "***" if cls.is_secret(key) else shown(value)
        accepted = cls.accepted_texts().get(key or "")
        if accepted and accepted not in reason:
            reason = f"{reason}; expected {accepted}"
        return ConfigError(
            f"flowtrail config: handler {cls.type!r} option {key!r} = {value_text} is not "
            f"valid: {reason}"
        )

    @classmethod
    def is_secret(cls, key: str | None) -> bool:
        """Whether option ``key`` holds a secret (never shown)."""
        return key in cls.secret_keys or is_secret_key(key)

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse values the types let through: every number must be finite. Handlers
        with more rules extend this (and raise `option_error`)."""
        for key in config.__struct_fields__:
            value = getattr(config, key)
            if isinstance(value, float) and not math.isfinite(value):
                raise cls.option_error(key, value, "must be a finite number")

    @classmethod
    def accepts_type(cls, name: str) -> bool:
        """Whether ``name`` is an alias of this handler's type."""
        return False

    @classmethod
    def from_config(cls, config: Any) -> BaseHandler:
        """A new handler with an already validated config."""
        handler = cls.__new__(cls)
        handler.config = config
        handler.run_id = None
        handler.parent_run_id = None
        handler.extras = {}
        handler._direct_pipeline = None
        handler._direct_settings = None
        logging.Handler.__init__(handler)
        return handler

    def bound(self, settings: Settings) -> BaseHandler:
        """This handler with every option that defaults to a setting filled in. Override
        `resolve` to fill them."""
        resolved = self.resolve(settings)
        if resolved == self.config:
            return self
        return type(self).from_config(resolved)

    def resolve(self, settings: Settings) -> Any:
        """This handler's config with settings applied (defaults: spool under log_dir)."""
        config = self.config
        if isinstance(config, PipelineConfig):
            # Paths are fixed when the handler is bound: a pipeline keeps writing where
            # its get_trace pointed, whatever the working directory becomes later.
            spool = (
                config.spool_dir if config.spool_dir is not None else f"{settings.log_dir}/spool"
            )
            config = msgspec.structs.replace(config, spool_dir=os.path.abspath(spool))
        path = getattr(config, "path", None)
        if isinstance(path, str) and path != ":memory:" and not os.path.isabs(path):
            config = msgspec.structs.replace(config, path=os.path.abspath(path))
        return config

    def pipeline_key(self) -> tuple[str, bytes]:
        """Records of handlers with equal keys share one pipeline per process."""
        return (type(self).__qualname__, msgspec.json.encode(self.config))

    def pipeline(self, strict: bool = False) -> Pipeline:
        """The process's pipeline for this (bound) handler's config."""
        config = self.config
        assert isinstance(config, PipelineConfig)

        spool_root = config.spool_dir or "./logs/spool"

        def make() -> tuple[str, Any, PipelineOptions]:
            exporter = type(self).from_config(config)
            options = PipelineOptions(
                batch_size=config.buffer_size or config.batch_size,
                max_batch_bytes=config.max_batch_bytes,
                flush_interval=config.flush_interval,
                queue_size=config.queue_size,
                queue_bytes=config.queue_bytes,
                overflow=config.overflow or ("help" if self.local else "spill"),
                caller_runs=self.local,
                spool_dir=f"{spool_root}/{self.spool_name()}",
                max_retries=config.max_retries,
                retry_deadline=config.retry_deadline,
                legacy_spool_dirs=(f"{spool_root}/{self.legacy_spool_name()}",),
                spool_manifest=self.spool_manifest(),
                spool_max_bytes=config.spool_max_bytes,
                max_export_batch=self.max_export_batch,
            )
            return self.describe(), exporter, options

        return get_pipeline(self.pipeline_key(), make, strict=strict)

    #: The most records one export takes from a backlog (None: the pipeline's default).
    max_export_batch: ClassVar[int | None] = None

    def destination(self) -> tuple[str, ...]:
        """Where records go: the type, then what names the place (a path or URL, a
        table or index). Records spooled for a destination are replayed to it whatever
        other option changes. No secrets: it names a folder. Handlers override it; this
        default is the whole config (any change of option is another destination)."""
        import hashlib

        return (self.type, hashlib.sha256(msgspec.json.encode(self.config)).hexdigest()[:12])

    def spool_name(self) -> str:
        """The spool folder of this handler's destination: readable (the type and the
        last part of each name), made unique by a digest of the whole destination."""
        import hashlib

        kind, *names = self.destination()
        digest = hashlib.sha256(
            "\0".join((kind, *names)).encode("utf-8", "surrogatepass")
        ).hexdigest()[:12]
        label = "-".join(filter(None, (_slug(name) for name in names)))[:60]
        return f"{kind}-{label}-{digest}" if label else f"{kind}-{digest}"

    def spool_manifest(self) -> bytes:
        """The spool folder's ``destination.json``: the type and the options without
        secrets (secret keys at any depth, and values that hold a secret such as a URL's
        password, are left out), from which ``flowtrail replay`` rebuilds this handler."""

        def public(value: Any) -> Any:
            if isinstance(value, dict):
                return {
                    key: public(item)
                    for key, item in value.items()
                    if not self.is_secret(key) and not _holds_secret(item)
                }
            return value

        options = public(msgspec.to_builtins(self.config))
        return msgspec.json.encode({"type": self.type, "options": options})

    def legacy_spool_name(self) -> str:
        """The spool folder name of versions that keyed the spool by every option; its
        files are moved to `spool_name`'s folder and replayed."""
        import hashlib

        options = msgspec.to_builtins(self.config)
        for name in _NEWER_OPTIONS:
            options.pop(name, None)
        digest = hashlib.sha256(msgspec.json.encode(options)).hexdigest()[:12]
        return f"{self.type}-{digest}"

    def describe(self) -> str:
        """A short name for messages, without secrets."""
        return f"{self.type!r}"

    def __repr__(self) -> str:
        fields = []
        for name in self.config.__struct_fields__:
            value = getattr(self.config, name)
            if name == "type":
                continue
            if self.is_secret(name) and value is not None:
                fields.append(f"{name}='***'")
            else:
                fields.append(f"{name}={shown(value)}")
        return f"{type(self).__name__}({', '.join(fields)})"

    # ------------------------------------------------------------------ writing
    def write(self, record: Any) -> None:
        """Write one record or finished span now (synchronous handlers only)."""
        raise NotImplementedError

    def span_started(self, span: Any) -> None:
        """A span opened (synchronous handlers; the console prints a start line)."""

    def export(self, batch: Sequence[Any]) -> None:
        """Write a batch (pipeline handlers, called on the worker)."""
        raise NotImplementedError

    def retryable(self, exc: BaseException) -> bool:
        """Whether a failed batch may succeed later."""
        return True

    def sync(self) -> None:
        """Make what was exported durable (called when a flush reaches the worker)."""

    def after_fork(self) -> None:
        """Forget files and connections inherited from the parent."""

    def close_exporter(self) -> None:
        """Release files and connections (worker side)."""

    # ------------------------------------------------------------------ stdlib face
    def emit(self, record: logging.LogRecord) -> None:  # noqa: D401 - logging API
        """Take a stdlib log record (direct-handler form)."""
        if is_ignored_logger(record.name) or drop_echo(record):
            return
        writing.active = True
        try:
            settings = self._direct_settings
            if settings is None:
                settings = self._direct_settings = resolve_settings(extras=self.extras)
            meta = metadata_from_log_record(
                record,
                settings,
                run_id=self.run_id,
                parent_run_id=self.parent_run_id,
                extras=self.extras,
            )
            self.handle_metadata(meta, settings)
        except RecursionError:  # pragma: no cover
            raise
        except Exception:
            self.handleError(record)
        finally:
            writing.active = False

    def handle_metadata(self, meta: Metadata, settings: Settings) -> None:
        """Route one record to this handler (used by the stdlib bridge)."""
        if self.synchronous:
            self.bound(settings).write(meta)
            return
        pipeline = self._direct_pipeline
        if pipeline is None:
            pipeline = self._direct_pipeline = self.bound(settings).pipeline(settings.strict)
        pipeline.submit(meta)

    # Extends `logging.Handler.flush` (which returns None) with a deadline and a result:
    # part of this handler's public interface, and harmless to logging, which ignores it.
    def flush(self, timeout: float | None = 30.0) -> bool:  # type: ignore[override]
        """Wait until records handed to this handler's pipelines (its own, and those of
        traces using an equal handler) are written. Starts no pipeline: a handler that
        never wrote has nothing to wait for."""
        pipelines = self._own_pipelines()
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = True
        for pipeline in pipelines:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ok = pipeline.flush(left) and ok
        return ok

    def _own_pipelines(self) -> list[Pipeline]:
        """The pipelines records handed to this handler go through: its own (stdlib
        form), else those of traces using an equal handler. Starts none."""
        if self.synchronous or "config" not in self.__dict__:
            return []
        if self._direct_pipeline is not None:
            return [self._direct_pipeline]
        settings = self._direct_settings or resolve_settings(extras=self.extras)
        config = self.bound(settings).config
        return [
            pipeline
            for pipeline in all_pipelines()
            if type(pipeline.exporter) is type(self) and pipeline.exporter.config == config
        ]

    @property
    def log_buffer(self) -> list[Metadata | Any]:
        """What waits in this handler's queue to be written (seeds 002/003 "Check buffer
        status": ``len(handler.log_buffer)``): a snapshot list of the pending records and
        spans, oldest first. Changing the list changes nothing; a handler written on the
        caller's thread (console, memory) never has anything waiting."""
        return [item for pipeline in self._own_pipelines() for item in pipeline.queued()]

    def close(self) -> None:
        """Flush this handler's pipeline, then release it as a stdlib handler (stdlib
        calls this at shutdown too)."""
        try:
            pipeline = self.__dict__.get("_direct_pipeline")
            if pipeline is not None:
                pipeline.flush(30.0)
        finally:
            logging.Handler.close(self)


class TraceNotFound(LookupError):
    """`find_trace_with_id` of a run id the store holds nothing of (no record, no span,
    no child run). ``run_id`` and ``store`` say which run and where it was looked for."""

    def __init__(self, run_id: str, store: str) -> None:
        super().__init__(
            f"no run {run_id!r} in store {store} (no records, spans or child runs with that run id)"
        )
        self.run_id = run_id
        self.store = store


class StoreReader:
    """The reading side of storing handlers (file, SQLite)."""

    def found(self, run_id: str, data: TraceData, force_raise: bool) -> TraceData:
        """``data`` read for ``run_id``, or `TraceNotFound` when it is empty and
        ``force_raise``."""
        if force_raise and not (data.meta or data.spans or data.stdout or data.stderr):
            describe = getattr(self, "describe", None)
            raise TraceNotFound(run_id, describe() if describe else type(self).__name__)
        return data

    def find_traces(self) -> Iterator[TraceData]:
        """Every run in the store, newest first."""
        raise NotImplementedError

    def find_trace_with_id(
        self,
        run_id: str,
        force_raise: bool = True,
        *,
        include_children: bool = True,
        text: bool = True,
    ) -> TraceData:
        """One run's records and spans, with those of its child runs (runs whose
        ``parent_run_id`` is ``run_id``: a workflow is found by its parent id) unless
        ``include_children=False``. A run id the store holds nothing of raises
        `TraceNotFound` (a `LookupError`), or with ``force_raise=False`` gives an empty
        `TraceData`. ``text=False`` skips rebuilding the stdout/stderr text where it is
        derived."""
        raise NotImplementedError

    def iter_records(
        self,
        run_id: str,
        *,
        include_children: bool = False,
        level: str | None = None,
        fields: Iterable[str] | None = None,
    ) -> Iterator[Metadata]:
        """One run's records (and its child runs' with ``include_children``), at or above
        ``level``, in the order they were written, read a batch at a time so that a run of
        any size is read in bounded memory; with ``fields`` the stores may read only
        those fields (the others keep their defaults). Stores override this; the
        default reads the whole run."""
        from flowtrail.handlers.query import at_or_above

        data = self.find_trace_with_id(run_id, include_children=include_children, text=False)
        yield from at_or_above(data.meta, level)

    def run_spans(
        self,
        run_id: str,
        *,
        include_children: bool = False,
        all_events: bool = True,
        fields: Iterable[str] | None = None,
    ) -> list[Span]:
        """One run's spans (and its child runs'), oldest first, without their ``log``
        events (the records themselves are read with `iter_records`); with
        ``all_events=False`` only failed spans keep their events; with ``fields`` the
        stores may read only those fields (the others keep their defaults)."""
        from flowtrail.handlers.query import without_log_events

        data = self.find_trace_with_id(run_id, include_children=include_children, text=False)
        spans = [without_log_events(span) for span in data.spans]
        if all_events:
            return spans
        return [
            s if s.status == "error" or not s.events else msgspec.structs.replace(s, events=[])
            for s in spans
        ]

    def record_counts(self, run_id: str, *, include_children: bool = False) -> RecordCounts:
        """How many records the run has, how many errors, and its first, last and first
        error record, without holding the records."""
        from flowtrail.handlers.query import RecordCounts

        counts = RecordCounts()
        for record in self.iter_records(run_id, include_children=include_children):
            counts.add(record)
        return counts

    def search(
        self,
        text: str | None = None,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        level: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int | None = 1000,
        user: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[Metadata]:
        """Records matching every given filter, oldest first (``text`` in the message or
        the exception, without case; ``user``: the ``user_id``; ``tags``: records that
        have every one of them)."""
        raise NotImplementedError

    def runs(self, *, workflow: str | None = None, limit: int | None = None) -> list[RunSummary]:
        """One summary per run, newest first."""
        raise NotImplementedError

    def run_ids(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        """The ids of the runs whose id starts with ``prefix`` (all with ``""``), sorted,
        at most ``limit``. Cheap: it does not read the runs' records. See
        `flowtrail.runids.resolve_run_id` to turn a prefix typed by a person into an id."""
        found = sorted(s.run_id for s in self.runs() if s.run_id.startswith(prefix))
        return found[:limit] if limit is not None else found

    def spans(
        self,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        trace_id: str | None = None,
        limit: int | None = None,
    ) -> list[Any]:
        """Finished spans, oldest first, filtered by run, workflow or trace."""
        raise NotImplementedError

    def span_metrics(
        self,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[Metrics, frozenset[str]] | None:
        """Statistics of the finished spans of one run (``run_id``), or else of the runs of
        ``workflow``, that started between ``since`` and ``until`` (`flowtrail.metrics`),
        and the ids of the runs they come from; None when there is no such span. This
        reads the spans; a store that can aggregate where they are does that instead."""
        from flowtrail.handlers.query import time_in_range
        from flowtrail.metrics import aggregate

        spans = self.spans(run_id=run_id, workflow=workflow if run_id is None else None)
        spans = [s for s in spans if time_in_range(s.start_time, since, until)]
        if not spans:
            return None
        return aggregate(spans), frozenset(s.run_id for s in spans)
