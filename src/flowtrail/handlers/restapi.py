"""Log services over HTTP (seed 003): Datadog, Grafana Loki, any JSON endpoint, and
CloudWatch Logs (through botocore, `flowtrail.cloudwatch`).

A `RestAPIHandler` is a format (`flowtrail.formats.services`: a pure function from a
batch to requests) plus the shared delivery (`flowtrail.delivery`). Records go through
the handler's pipeline: the caller only appends to a queue; the worker sends batches,
retries what may pass (connection errors, 408, 429, 5xx, honouring ``Retry-After``)
within ``retry_deadline``, and spools the rest on disk for a later replay (by this
process, the next one that sends to the same destination, or ``flowtrail replay``). A
request that succeeded is never sent again; when a batch becomes several requests and a
later one fails, only its records are retried (`PartialExport`). A service's refusal (a
4xx) is reported once with its error body (secrets redacted); the pipeline isolates the
records it refuses and keeps them as ``.failed`` spool files.

Seed debugging forms: ``handler.log_buffer`` (records waiting, see `BaseHandler`),
``handler.session`` (the HTTP client, None once closed), ``handler.flush()`` (True once
everything handed in so far was delivered or spooled) and
``handler.format_payload(records)`` (the exact requests a batch becomes;
``_format_for_service`` is the seed's name).
"""

from __future__ import annotations

import builtins
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from flowtrail.cloudwatch import EXTRA_HINT, CloudWatchLogs, botocore_available, region_of
from flowtrail.delivery import Delivery, DeliveryError
from flowtrail.formats import services
from flowtrail.handlers.base import BaseHandler, HandlerConfig, PipelineConfig
from flowtrail.pipeline import PartialExport
from flowtrail.records import Metadata

#: Service types and the auth scheme each uses by default.
_DEFAULT_AUTH = {"generic": "bearer", "datadog": "none", "grafana": "bearer"}


class RestAPIConfig(PipelineConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of `RestAPIHandler` (defaults as seed 003's table)."""

    service_type: Literal["generic", "datadog", "grafana", "cloudwatch"] = "generic"
    #: The endpoint. Datadog: defaults to ``https://http-intake.logs.$DD_SITE/api/v2/logs``.
    api_url: str = ""
    #: Datadog: ``DD-API-KEY`` (``$DD_API_KEY`` if not given); others: see ``auth``.
    api_key: str | None = None
    buffer_size: Annotated[int, msgspec.Meta(gt=0)] | None = 50
    flush_interval: Annotated[float, msgspec.Meta(ge=0.001)] = 2.0
    #: Read timeout of a request, seconds.
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 3
    #: How long ``handler.close()`` waits for delivery before spooling what is left.
    close_timeout: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    #: Extra headers (override the format's).
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: ``bearer`` (api_key), ``basic`` (username/password), ``header`` (api_key in
    #: ``key_header``), ``none``; default by service: generic and Loki bearer.
    auth: Literal["bearer", "basic", "header", "none"] | None = None
    username: str | None = None
    password: str | None = None
    key_header: str = "X-API-Key"
    #: Generic: HTTP method and body (``json`` array or ``ndjson``).
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    body_format: Literal["json", "ndjson"] = "json"
    #: gzip request bodies (default: Datadog and Loki yes, generic no).
    gzip: bool | None = None
    verify_certs: bool = True
    ca_certs: str | None = None
    #: Datadog ``service`` / Loki ``service`` label.
    service: str | None = None
    #: Datadog ``ddsource``.
    source: str = "flowtrail"
    #: Loki: the fields other than the labels go in the line as ``json`` or ``logfmt``, or
    #: as structured ``metadata`` (Loki 3).
    loki_fields: Literal["json", "logfmt", "metadata"] = "json"
    #: Loki tenant (``X-Scope-OrgID``).
    org_id: str | None = None
    #: CloudWatch: region (default: from ``api_url`` or the AWS configuration), log
    #: group (default: the workflow name) and stream (default: the run id), profile.
    region: str | None = None
    log_group: str | None = None
    log_stream: str | None = None
    aws_profile: str | None = None


class RestAPIHandler(BaseHandler):
    """Send records to a log service over HTTP (``service_type`` datadog, grafana (Loki)
    or generic); see the module docstring."""

    type: ClassVar[str] = "restapi"
    Config: ClassVar[builtins.type[HandlerConfig]] = RestAPIConfig
    secret_keys: ClassVar[frozenset[str]] = frozenset({"api_key", "password"})
    accepted: ClassVar[dict[str, str]] = {
        "service_type": "one of 'generic', 'datadog', 'grafana', 'cloudwatch'",
        "region": "an AWS region name such as 'us-east-1'",
        "api_url": "an http:// or https:// URL",
        "headers": "a mapping of header names to strings",
        "auth": "one of 'bearer', 'basic', 'header', 'none'",
        "method": "one of 'POST', 'PUT', 'PATCH'",
        "body_format": "'json' or 'ndjson'",
        "loki_fields": "one of 'json', 'logfmt', 'metadata'",
        "connect_timeout": "a positive number of seconds",
        "close_timeout": "a number of seconds >= 0",
    }

    config: RestAPIConfig

    #: A backlog is sent in requests as large as the services take (the formats split
    #: them to each service's limits), not in ``buffer_size`` pieces.
    max_export_batch: ClassVar[int | None] = 10_000

    @classmethod
    def accepts_type(cls, name: str) -> bool:
        return str(name).lower() in ("rest", "rest_api", "restapi", "http")

    @classmethod
    def check_config(cls, config: Any) -> None:
        super().check_config(config)
        if config.service_type == "cloudwatch":
            if not botocore_available():
                raise cls.option_error("service_type", "cloudwatch", EXTRA_HINT)
            if not region_of(config.api_url, config.region, config.aws_profile):
                raise cls.option_error(
                    "region",
                    config.region,
                    "no AWS region: give region=, a logs.<region>.amazonaws.com api_url, "
                    "or set AWS_REGION",
                )
        url = config.api_url
        if not url and config.service_type not in ("datadog", "cloudwatch"):
            raise cls.option_error("api_url", url, "an endpoint URL is required")
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise cls.option_error("api_url", url, "not an http:// or https:// URL")
        for key, value in config.headers.items():
            if "\n" in key or "\n" in value or "\r" in key or "\r" in value:
                raise cls.option_error("headers", {key: value}, "a header holds a line break")

    # ------------------------------------------------------------------ naming
    def url(self) -> str:
        """The endpoint records are sent to (Datadog's from ``DD_SITE`` if not given)."""
        if self.config.api_url:
            return self.config.api_url
        if self.config.service_type == "cloudwatch":
            return f"https://logs.{self._region()}.amazonaws.com"
        site = os.environ.get("DD_SITE") or "datadoghq.com"
        return f"https://http-intake.logs.{site}/api/v2/logs"

    def _public_url(self) -> str:
        """The URL without credentials or query (for names and messages)."""
        parts = urlsplit(self.url())
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def _region(self) -> str:
        config = self.config
        return region_of(config.api_url, config.region, config.aws_profile) or ""

    def destination(self) -> tuple[str, ...]:
        config = self.config
        stream = config.org_id or config.log_group or ""
        return (self.type, config.service_type, self._public_url(), stream)

    def describe(self) -> str:
        return f"'restapi' ({self.config.service_type}) to {self._public_url()}"

    # ------------------------------------------------------------------ formats
    def _api_key(self) -> str | None:
        if self.config.api_key is not None:
            return self.config.api_key
        if self.config.service_type == "datadog":
            return os.environ.get("DD_API_KEY")
        return None

    def _secrets(self) -> tuple[str, ...]:
        config = self.config
        values = [self._api_key(), config.password]
        values += [v for k, v in config.headers.items() if self.is_secret(k)]
        parts = urlsplit(self.url())
        values.append(parts.password)
        return tuple(v for v in values if v)

    def format_payload(self, records: Any) -> list[Any]:
        """The exact requests a batch becomes (a record, a dict of record fields, or a
        sequence of them): `Request` values, or for CloudWatch `LogEventBatch` values
        (one ``PutLogEvents`` call each). Pure: nothing is sent."""
        if isinstance(records, (Metadata, Mapping)) or not isinstance(records, Sequence):
            records = [records]
        batch = [
            msgspec.convert(dict(r), Metadata, strict=False) if isinstance(r, Mapping) else r
            for r in records
        ]
        config = self.config
        kind = config.service_type
        if kind == "cloudwatch":
            return services.cloudwatch_batches(
                batch, log_group=config.log_group, log_stream=config.log_stream
            )
        gzip = config.gzip if config.gzip is not None else kind != "generic"
        auth = services.auth_headers(
            config.auth or _DEFAULT_AUTH.get(kind, "none"),
            api_key=self._api_key(),
            username=config.username,
            password=config.password,
            key_header=config.key_header,
        )
        if kind == "datadog":
            return services.datadog_requests(
                batch,
                url=self.url(),
                api_key=self._api_key(),
                service=config.service,
                source=config.source,
                gzip=gzip,
                headers=config.headers,
            )
        if kind == "grafana":
            return services.loki_requests(
                batch,
                url=self.url(),
                service=config.service or "flowtrail",
                fields_as=config.loki_fields,
                tenant=config.org_id,
                auth=auth,
                gzip=gzip,
                headers=config.headers,
            )
        return services.generic_requests(
            batch,
            url=self.url(),
            method=config.method,
            body_format=config.body_format,
            auth=auth,
            gzip=gzip,
            headers=config.headers,
        )

    #: Seed 003's name of `format_payload`.
    _format_for_service = format_payload

    # ------------------------------------------------------------------ worker side
    @property
    def delivery(self) -> Delivery:
        """This handler's HTTP delivery (its client is made on first send)."""
        delivery = self.__dict__.get("_delivery")
        if delivery is None:
            config = self.config
            delivery = self.__dict__["_delivery"] = Delivery(
                timeout=config.timeout,
                connect_timeout=config.connect_timeout,
                verify_certs=config.verify_certs,
                ca_certs=config.ca_certs,
                secrets=self._secrets(),
            )
        return delivery

    @property
    def cloudwatch(self) -> CloudWatchLogs:
        """This handler's CloudWatch Logs sender (its client is made on first send)."""
        sender = self.__dict__.get("_cloudwatch")
        if sender is None:
            config = self.config
            sender = self.__dict__["_cloudwatch"] = CloudWatchLogs(
                region=self._region(),
                endpoint_url=config.api_url or None,
                profile=config.aws_profile,
                timeout=config.timeout,
                connect_timeout=config.connect_timeout,
            )
        return sender

    def _sender(self) -> Any:
        if self.config.service_type == "cloudwatch":
            return self.cloudwatch
        return self.delivery

    def export(self, batch: Sequence[Any]) -> None:
        """Send the batch's requests in order. A retryable failure stops there (the
        rest is retried later); a refused request's records are reported as failed and
        the others still sent. Raises `PartialExport` when part was delivered."""
        requests = self.format_payload(list(batch))
        sender = self._sender()
        send = sender.put if isinstance(sender, CloudWatchLogs) else sender.send
        failed: list[Any] = []
        cause: DeliveryError | None = None
        for index, request in enumerate(requests):
            try:
                send(request)
            except DeliveryError as exc:
                cause = exc
                if exc.retryable:
                    for later in requests[index:]:
                        failed.extend(later.records)
                    break
                failed.extend(request.records)
        if cause is None:
            return
        if len(failed) == len(batch):
            raise cause
        raise PartialExport(failed, cause)

    def retryable(self, exc: BaseException) -> bool:
        """Connection errors, timeouts, 408, 429 and 5xx may pass; anything else (a 4xx
        refusal, a record that cannot be encoded) will not."""
        if isinstance(exc, DeliveryError):
            return exc.retryable
        return isinstance(exc, OSError)

    def close_exporter(self) -> None:
        for name in ("_delivery", "_cloudwatch"):
            sender = self.__dict__.get(name)
            if sender is not None:
                sender.close()

    def after_fork(self) -> None:
        for name in ("_delivery", "_cloudwatch"):
            sender = self.__dict__.get(name)
            if sender is not None:
                sender.after_fork()

    # ------------------------------------------------------------------ seed debugging forms
    @property
    def session(self) -> Any:
        """The HTTP client (an `httpx.Client`); None once the handler is closed."""
        if self.__dict__.get("_closed"):
            return None
        for pipeline in self._own_pipelines():
            exporter = pipeline.exporter
            if isinstance(exporter, RestAPIHandler):
                return exporter._sender().client
        return self._sender().client

    def close(self) -> None:
        """Deliver what was handed in within ``close_timeout`` seconds (what is left is
        in the spool, re-sent later), then release the handler."""
        try:
            deadline = time.monotonic() + self.config.close_timeout
            # Its pipelines (shared with traces using an equal handler) start again on
            # the next record.
            for pipeline in self._own_pipelines():
                pipeline.close(max(0.0, deadline - time.monotonic()))
            self.close_exporter()
            self.__dict__["_closed"] = True
        finally:
            logging.Handler.close(self)


__all__ = ["RestAPIConfig", "RestAPIHandler"]
