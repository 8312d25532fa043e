"""OpenTelemetry collectors and backends over OTLP/HTTP: records to ``/v1/logs``, finished
spans to ``/v1/traces`` (seed 004's ``otlp`` backend).

An `OTLPHandler` is a format (`flowtrail.formats.otlp`, pure) plus the shared delivery
(`flowtrail.delivery`), like `flowtrail.handlers.restapi.RestAPIHandler`: the caller only
appends to the pipeline's queue; the worker encodes a batch as one logs request and one
traces request and sends them. Retried are exactly what the OTLP specification names
retryable (connection errors, 429, 502, 503, 504, honouring ``Retry-After``) within
``retry_deadline``; what is left is spooled and re-sent later (``flowtrail replay``).
Any other answer (400, 401, 413...) is a refusal: the pipeline isolates the records the
collector refuses and keeps them as ``.failed`` spool files. A ``partial_success``
answer is delivered (the collector keeps the rest and says the rejected ones must not be
sent again): its counts are added to `OTLPHandler.rejected` and reported once.

Settings come from the handler's options, else the standard environment variables, with
the specification's precedence: an option, else the signal's variable
(``OTEL_EXPORTER_OTLP_LOGS_*`` / ``OTEL_EXPORTER_OTLP_TRACES_*``), else the general one
(``OTEL_EXPORTER_OTLP_*``), else the default. ``endpoint`` and
``OTEL_EXPORTER_OTLP_ENDPOINT`` are base URLs (``/v1/logs`` and ``/v1/traces`` are
appended); ``logs_endpoint``/``traces_endpoint`` and the per-signal variables are full
URLs used as they are. Timeouts in variables are milliseconds (the specification's
unit); the ``timeout`` option is seconds like every other handler's.
"""

from __future__ import annotations

import builtins
import gzip
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from flowtrail.config import ConfigError
from flowtrail.delivery import Delivery, DeliveryError, Request
from flowtrail.formats.otlp import (
    EXTRA_HINT,
    OTLPEncoder,
    load_proto,
    parse_key_values,
    rejected_count,
    resource_attributes,
    split,
)
from flowtrail.handlers.base import BaseHandler, HandlerConfig, PipelineConfig
from flowtrail.pipeline import PartialExport, Pipeline, report_once
from flowtrail.records import Metadata

#: The answers the OTLP/HTTP specification says may pass when sent again.
OTLP_RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_ENDPOINT = "http://localhost:4318"
SIGNAL_PATHS = {"logs": "v1/logs", "traces": "v1/traces"}
PROTOCOLS = ("http/protobuf", "http/json")
_CONTENT_TYPES = {"http/protobuf": "application/x-protobuf", "http/json": "application/json"}
USER_AGENT = "flowtrail-otlp/0.1"


class OTLPConfig(PipelineConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of `OTLPHandler`; None means: from the environment, else the default."""

    #: Base URL (``/v1/logs`` and ``/v1/traces`` appended); default
    #: ``$OTEL_EXPORTER_OTLP_ENDPOINT``, else ``http://localhost:4318``.
    endpoint: str | None = None
    #: Full URLs of each signal (win over ``endpoint``).
    logs_endpoint: str | None = None
    traces_endpoint: str | None = None
    #: Extra headers (win over the ``OTEL_EXPORTER_OTLP_*HEADERS`` ones). Their values
    #: are treated as secrets: never shown, never in the spool's manifest.
    headers: dict[str, str] | None = None
    protocol: str | None = None
    compression: str | None = None
    #: Seconds a request may take.
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    #: CA bundle that verifies the collector's certificate; client certificate and key
    #: for mutual TLS.
    certificate: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None
    verify_certs: bool = True
    #: ``service.name`` of the resource (else ``$OTEL_SERVICE_NAME``, else from
    #: ``$OTEL_RESOURCE_ATTRIBUTES``, else ``flowtrail``) and more resource attributes.
    service_name: str | None = None
    resource_attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Send records (logs) and spans (traces).
    logs: bool = True
    traces: bool = True
    #: Attribute names of the code location: ``new`` (``code.file.path``), ``old``
    #: (``code.filepath``) or ``both``; default ``both`` when
    #: ``$OTEL_SEMCONV_STABILITY_OPT_IN`` holds ``code/dup``, else ``new``.
    code_names: Literal["new", "old", "both"] | None = None
    batch_size: Annotated[int, msgspec.Meta(gt=0)] = 1000
    #: How long ``handler.close()`` waits for delivery before spooling what is left.
    close_timeout: Annotated[float, msgspec.Meta(ge=0)] = 5.0


@dataclass(frozen=True)
class SignalSettings:
    """Where and how one signal (``logs`` or ``traces``) is sent."""

    url: str
    headers: tuple[tuple[str, str], ...]
    protocol: str
    compression: str
    timeout: float
    certificate: str | None
    client_certificate: str | None
    client_key: str | None


def _env(environ: Mapping[str, str], signal: str, name: str) -> str | None:
    """The signal's variable, else the general one (None when neither is set)."""
    for key in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = environ.get(key)
        if value is not None and value.strip():
            return value.strip()
    return None


def signal_url(base: str, signal: str) -> str:
    """The URL of a signal under a base endpoint (``/v1/logs`` appended to its path)."""
    return f"{base.rstrip('/')}/{SIGNAL_PATHS[signal]}"


def signal_settings(
    config: OTLPConfig, signal: str, environ: Mapping[str, str] | None = None
) -> SignalSettings:
    """The settings of ``signal`` from the options and the environment, by the
    specification's precedence (see the module docstring). Raises `ConfigError` for a
    value that is not understood."""
    env = os.environ if environ is None else environ
    full = config.logs_endpoint if signal == "logs" else config.traces_endpoint
    if full:
        url = full
    elif config.endpoint:
        url = signal_url(config.endpoint, signal)
    elif env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip():
        url = env[f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"].strip()
    else:
        url = signal_url(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_ENDPOINT, signal
        )
    headers = parse_key_values(_env(env, signal, "HEADERS"))
    headers.update(config.headers or {})
    protocol = (config.protocol or _env(env, signal, "PROTOCOL") or "http/protobuf").lower()
    if protocol not in PROTOCOLS:
        hint = " (gRPC is not supported: use the collector's OTLP/HTTP port, 4318)"
        raise ConfigError(
            f"flowtrail config: handler 'otlp' protocol {protocol!r} is not supported; "
            f"use 'http/protobuf' or 'http/json'" + (hint if protocol == "grpc" else "")
        )
    compression = (config.compression or _env(env, signal, "COMPRESSION") or "none").lower()
    if compression not in ("gzip", "none"):
        raise ConfigError(
            f"flowtrail config: handler 'otlp' compression {compression!r} is not "
            "supported; use 'gzip' or 'none'"
        )
    if config.timeout is not None:
        timeout = config.timeout
    else:
        text = _env(env, signal, "TIMEOUT")
        try:
            timeout = float(text) / 1000.0 if text else 10.0
        except ValueError:
            raise ConfigError(
                f"flowtrail config: OTEL_EXPORTER_OTLP_TIMEOUT {text!r} is not a number of "
                "milliseconds"
            ) from None
        if not timeout > 0:
            timeout = 10.0
    return SignalSettings(
        url=url,
        headers=tuple(headers.items()),
        protocol=protocol,
        compression=compression,
        timeout=timeout,
        certificate=config.certificate or _env(env, signal, "CERTIFICATE"),
        client_certificate=config.client_certificate or _env(env, signal, "CLIENT_CERTIFICATE"),
        client_key=config.client_key or _env(env, signal, "CLIENT_KEY"),
    )


def _public(url: str) -> str:
    """A URL without credentials or query (for names and messages)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class PartialSuccess(Exception):
    """A collector accepted a request but rejected some of its items (OTLP
    ``partial_success``); they must not be sent again."""


class OTLPHandler(BaseHandler):
    """Send records and spans to an OpenTelemetry collector or backend over OTLP/HTTP;
    see the module docstring."""

    type: ClassVar[str] = "otlp"
    Config: ClassVar[builtins.type[HandlerConfig]] = OTLPConfig
    secret_keys: ClassVar[frozenset[str]] = frozenset({"headers"})
    accepted: ClassVar[dict[str, str]] = {
        "endpoint": "an http:// or https:// base URL",
        "logs_endpoint": "an http:// or https:// URL",
        "traces_endpoint": "an http:// or https:// URL",
        "protocol": "'http/protobuf' or 'http/json'",
        "compression": "'gzip' or 'none'",
        "timeout": "a positive number of seconds",
        "code_names": "one of 'new', 'old', 'both'",
        "connect_timeout": "a positive number of seconds",
        "close_timeout": "a number of seconds >= 0",
    }

    config: OTLPConfig

    @classmethod
    def accepts_type(cls, name: str) -> bool:
        return str(name).lower() in ("otlp", "opentelemetry", "otel")

    @classmethod
    def check_config(cls, config: Any) -> None:
        super().check_config(config)
        for key in ("endpoint", "logs_endpoint", "traces_endpoint"):
            url = getattr(config, key)
            if url is not None:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise cls.option_error(key, url, "not an http:// or https:// URL")
        for key, value in (config.headers or {}).items():
            if any(c in f"{key}{value}" for c in "\r\n"):
                raise cls.option_error("headers", None, "a header holds a line break")
        for signal in ("logs", "traces"):
            settings = signal_settings(config, signal)
            parts = urlsplit(settings.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"flowtrail config: handler 'otlp' {signal} endpoint "
                    f"{_public(settings.url)!r} (from the environment) is not an http:// or "
                    "https:// URL"
                )
            if settings.protocol == "http/protobuf" and getattr(config, signal):
                try:
                    load_proto()
                except ImportError:
                    raise cls.option_error("protocol", settings.protocol, EXTRA_HINT) from None

    # ------------------------------------------------------------------ naming
    def signal(self, signal: str) -> SignalSettings:
        """The settings of ``logs`` or ``traces`` (read from the environment once)."""
        cache = self.__dict__.setdefault("_signals", {})
        settings = cache.get(signal)
        if settings is None:
            settings = cache[signal] = signal_settings(self.config, signal)
        return settings

    def destination(self) -> tuple[str, ...]:
        return ("otlp", _public(self.signal("logs").url), _public(self.signal("traces").url))

    def describe(self) -> str:
        return f"'otlp' to {_public(self.signal('traces').url).rsplit('/v1/', 1)[0]}"

    def spool_manifest(self) -> bytes:
        """The spool's ``destination.json``: the options without ``headers`` (OTLP
        headers carry API keys under any name)."""
        options = msgspec.to_builtins(self.config)
        options.pop("headers", None)
        data = msgspec.json.decode(super().spool_manifest())
        data["options"] = {k: v for k, v in options.items() if k in data["options"]}
        return msgspec.json.encode(data)

    # ------------------------------------------------------------------ format
    @property
    def encoder(self) -> OTLPEncoder:
        """This handler's encoder (resource from the options and the environment)."""
        encoder = self.__dict__.get("_encoder")
        if encoder is None:
            config = self.config
            code = config.code_names
            if code is None:
                opt_in = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
                code = "both" if "code/dup" in opt_in.replace(" ", "").split(",") else "new"
            encoder = self.__dict__["_encoder"] = OTLPEncoder(
                resource_attributes(config.service_name, config.resource_attributes),
                code_names=code,
            )
        return encoder

    def format_payload(self, records: Any) -> list[Request]:
        """The exact requests a batch becomes (a record or span, a dict of record
        fields, or a sequence of them): a logs request for the records and a traces
        request for the finished spans. Pure: nothing is sent."""
        if isinstance(records, Mapping) or not isinstance(records, Sequence):
            records = [records]
        batch = [
            msgspec.convert(dict(r), Metadata, strict=False) if isinstance(r, Mapping) else r
            for r in records
        ]
        logs, spans = split(batch)
        encoder = self.encoder
        requests = []
        if logs and self.config.logs:
            settings = self.signal("logs")
            body = (
                encoder.logs_json(logs)
                if settings.protocol == "http/json"
                else encoder.logs_protobuf(logs)
            )
            requests.append(self._request(settings, body, logs))
        if spans and self.config.traces:
            settings = self.signal("traces")
            body = (
                encoder.traces_json(spans)
                if settings.protocol == "http/json"
                else encoder.traces_protobuf(spans)
            )
            requests.append(self._request(settings, body, spans))
        return requests

    @staticmethod
    def _request(settings: SignalSettings, body: bytes, items: Sequence[Any]) -> Request:
        headers = [
            ("Content-Type", _CONTENT_TYPES[settings.protocol]),
            ("User-Agent", USER_AGENT),
        ]
        if settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
            headers.append(("Content-Encoding", "gzip"))
        names = frozenset(key.lower() for key, _ in settings.headers)
        headers = [(k, v) for k, v in headers if k.lower() not in names]
        headers.extend(settings.headers)
        return Request("POST", settings.url, tuple(headers), body, tuple(items), names)

    def pipeline(self, strict: bool = False) -> Pipeline:
        """The process's pipeline for this handler, its exporter made ready to send
        (messages loaded, encoder and HTTP clients made) when the pipeline is first
        used: once per process and configuration, at ``get_trace`` rather than under
        the first batch while the workflow runs."""
        pipeline = super().pipeline(strict)
        exporter = pipeline.exporter
        if isinstance(exporter, OTLPHandler) and "_ready" not in exporter.__dict__:
            exporter.__dict__["_ready"] = True
            exporter.prepare()
        return pipeline

    def prepare(self) -> None:
        """Load the messages and make the encoder and the HTTP clients now. A failure
        is left for the first send to report (the caller never gets an error here)."""
        try:
            encoder = self.encoder
            for signal in ("logs", "traces"):
                if getattr(self.config, signal):
                    if self.signal(signal).protocol == "http/protobuf":
                        encoder.proto  # noqa: B018 - loads the messages
                    self.delivery(signal).client  # noqa: B018 - makes the client
        except Exception:
            pass

    # ------------------------------------------------------------------ worker side
    def _secrets(self) -> tuple[str, ...]:
        values: list[str | None] = [
            value for s in ("logs", "traces") for _, value in self.signal(s).headers
        ]
        values += [urlsplit(self.signal(s).url).password for s in ("logs", "traces")]
        return tuple(v for v in values if v)

    def delivery(self, signal: str) -> Delivery:
        """The HTTP delivery of a signal (shared when both are sent alike)."""
        settings = self.signal(signal)
        key = (
            settings.timeout,
            settings.certificate,
            settings.client_certificate,
            settings.client_key,
        )
        deliveries = self.__dict__.setdefault("_deliveries", {})
        delivery = deliveries.get(key)
        if delivery is None:
            client_cert = None
            if settings.client_certificate:
                client_cert = (settings.client_certificate, settings.client_key)
            delivery = deliveries[key] = Delivery(
                timeout=settings.timeout,
                connect_timeout=self.config.connect_timeout,
                verify_certs=self.config.verify_certs,
                ca_certs=settings.certificate,
                client_cert=client_cert,
                secrets=self._secrets(),
            )
        return delivery

    @property
    def rejected(self) -> dict[str, int]:
        """Items collectors rejected in ``partial_success`` answers, by signal."""
        return self.__dict__.setdefault("_rejected", {"logs": 0, "traces": 0})

    def export(self, batch: Sequence[Any]) -> None:
        """Send the batch's logs and traces requests. A retryable failure stops there
        (the rest is retried later); a refused request's records are reported as failed
        and the other request still sent. Raises `PartialExport` when part was
        delivered."""
        requests = self.format_payload(list(batch))
        failed: list[Any] = []
        cause: DeliveryError | None = None
        for index, request in enumerate(requests):
            signal = "logs" if isinstance(request.records[0], Metadata) else "traces"
            try:
                response = self.delivery(signal).send(request)
            except DeliveryError as exc:
                cause = _classified(exc)
                if cause.retryable:
                    for later in requests[index:]:
                        failed.extend(later.records)
                    break
                failed.extend(request.records)
                continue
            self._partial_success(signal, response.body)
        if cause is None:
            return
        sent = sum(len(r.records) for r in requests)
        if len(failed) >= sent:
            raise cause
        raise PartialExport(failed, cause)

    def _partial_success(self, signal: str, body: bytes) -> None:
        protocol = self.signal(signal).protocol
        try:
            count, message = rejected_count(body, protocol, signal, lambda: self.encoder.proto)
        except Exception:  # an answer that is not an export response: delivered all the same
            return
        if count <= 0 and not message:
            return
        with _rejected_lock:
            self.rejected[signal] += count
        what = "log records" if signal == "logs" else "spans"
        report_once(
            self.describe(),
            PartialSuccess(f"{count} {what} rejected: {message or 'no reason given'}"),
            count,
            "the collector accepted the rest (OTLP partial success) and asks that the "
            "rejected ones are not sent again; they are counted in the handler's 'rejected'",
            outcome="rejected",
        )

    def retryable(self, exc: BaseException) -> bool:
        """Connection errors, timeouts, 429, 502, 503 and 504 may pass (the OTLP
        specification's list); any other answer will not."""
        if isinstance(exc, DeliveryError):
            return _classified(exc).retryable
        return isinstance(exc, OSError)

    def close_exporter(self) -> None:
        for delivery in self.__dict__.get("_deliveries", {}).values():
            delivery.close()

    def after_fork(self) -> None:
        for delivery in self.__dict__.get("_deliveries", {}).values():
            delivery.after_fork()

    def close(self) -> None:
        """Deliver what was handed in within ``close_timeout`` seconds (what is left is
        in the spool, re-sent later), then release the handler."""
        try:
            deadline = time.monotonic() + self.config.close_timeout
            for pipeline in self._own_pipelines():
                pipeline.close(max(0.0, deadline - time.monotonic()))
            self.close_exporter()
        finally:
            logging.Handler.close(self)


_rejected_lock = threading.Lock()


def _classified(exc: DeliveryError) -> DeliveryError:
    """``exc`` with the OTLP specification's idea of retryable: a connection error or
    429/502/503/504 (others, 500 and 408 included, are not)."""
    retryable = exc.status is None or exc.status in OTLP_RETRYABLE_STATUSES
    if retryable == exc.retryable:
        return exc
    return DeliveryError(
        str(exc),
        retryable=retryable,
        status=exc.status,
        retry_after=exc.retry_after if retryable else None,
    )


__all__ = [
    "OTLPConfig",
    "OTLPHandler",
    "OTLP_RETRYABLE_STATUSES",
    "PartialSuccess",
    "SignalSettings",
    "signal_settings",
    "signal_url",
]
