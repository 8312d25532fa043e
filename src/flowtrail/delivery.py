"""The HTTP delivery layer shared by remote handlers (REST services, and next
Elasticsearch and OTLP).

A remote handler is a format (a pure function from a batch to `Request` values) plus one
`Delivery`. `Delivery.send` makes one attempt and classifies its outcome; it never
retries and never sleeps: the pipeline's worker retries with backoff, jitter and the
service's ``Retry-After`` (`DeliveryError.retry_after`), within its deadline, then spools.
So a request that succeeded is never sent again by this layer (no duplicates), and the
caller never waits on the network.

Outcomes of `send`:

- a 2xx answer: the `Response`;
- connection errors, timeouts, 408, 429 and 5xx: `DeliveryError` with
  ``retryable=True`` (and ``retry_after`` seconds from the answer's ``Retry-After``);
- any other answer (a 4xx, or a redirect the client did not follow): `DeliveryError` with
  ``retryable=False``, carrying the service's error body with secrets redacted.

The client (`httpx.Client`: pooled keep-alive connections, TLS verified by default,
proxies from the standard environment variables) is made on first use and made again in
a forked child, which must never share the parent's sockets.
"""

from __future__ import annotations

import email.utils
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flowtrail.config import is_secret_key, mask_text
from flowtrail.otelbridge import detach, suppress_instrumentation

#: HTTP statuses that may succeed if the same request is sent again later.
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_modules = sys.modules
#: How much of a service's error body an error message carries.
_BODY_LIMIT = 500


@dataclass(frozen=True)
class Request:
    """One HTTP request a batch becomes: pure data, built by a format function.
    ``records`` are the batch's records it carries (not part of its equality or repr),
    so a partly delivered batch knows which records to send again."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    records: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    #: Names (lowercase) of more headers whose values are secrets, whatever their name
    #: (OTLP headers carry API keys under any name).
    secret_headers: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), if set."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def __repr__(self) -> str:
        shown = tuple(
            (key, "***" if _secret_header(key) or key.lower() in self.secret_headers else value)
            for key, value in self.headers
        )
        return (
            f"Request({self.method} {mask_text(self.url)}, headers={shown}, "
            f"{len(self.body)} bytes, {len(self.records)} record(s))"
        )


@dataclass(frozen=True)
class Response:
    """A service's answer to a `Request`."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


class DeliveryError(Exception):
    """A request not delivered. ``retryable`` says whether sending it again later may
    succeed; ``retry_after`` is the delay the service asked for (seconds), if any;
    ``status`` the HTTP status (None for a connection error). The message never holds a
    secret."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


def _secret_header(name: str) -> bool:
    return is_secret_key(name) or name.lower() in ("dd-api-key", "x-scope-orgid-token")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay seconds or an HTTP date);
    None if absent or not understood."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every given secret (and every secret-looking ``name=value``)
    replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return mask_text(text)


class ProcessClient:
    """A network client made on first use, made anew in a forked child (never used across
    fork), and closed without touching a parent's sockets. Subclasses make it
    (`_make_client`) and may forget more after fork (`_forget`)."""

    def __init__(self) -> None:
        self._client: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.closed = False

    def _make_client(self) -> Any:
        raise NotImplementedError

    def _forget(self) -> None:
        """What else a new client starts without (called with the lock held)."""

    @property
    def client(self) -> Any:
        """The client, made on first use (and again in a forked child)."""
        client = self._client
        if client is None or self._pid != os.getpid():
            with self._lock:
                client = self._client
                if client is None or self._pid != os.getpid():
                    client = self._client = self._make_client()
                    self._pid = os.getpid()
                    self._forget()
                    self.closed = False
        return client

    @property
    def session(self) -> Any:
        """The client if one is open (None before first use or once closed)."""
        return None if self.closed or self._pid != os.getpid() else self._client

    def close(self) -> None:
        """Close the client's connections (a later use opens new ones)."""
        client, self._client = self._client, None
        self.closed = True
        if client is not None and self._pid == os.getpid():
            try:
                client.close()
            except Exception:
                pass

    def after_fork(self) -> None:
        """Forget the parent's client without closing its sockets."""
        self._client = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._forget()


class Delivery(ProcessClient):
    """Sends `Request` values over one pooled HTTP client; see the module docstring."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        verify_certs: bool = True,
        ca_certs: str | None = None,
        secrets: Iterable[str] = (),
        max_connections: int = 4,
        client_cert: tuple[str, str | None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout) if timeout else connect_timeout
        self.verify_certs = verify_certs
        self.ca_certs = ca_certs
        #: Certificate file and key file (None: in the certificate file) for mutual TLS.
        self.client_cert = client_cert
        self.max_connections = max_connections
        self._secrets = tuple(s for s in secrets if s)
        super().__init__()

    def __repr__(self) -> str:
        return (
            f"Delivery(timeout={self.timeout}, verify_certs={self.verify_certs}, "
            f"ca_certs={self.ca_certs!r})"
        )

    def _make_client(self) -> Any:
        """The `httpx.Client`."""
        import httpx

        verify: Any = self.verify_certs
        if self.verify_certs and (self.ca_certs or self.client_cert):
            import ssl

            verify = ssl.create_default_context(cafile=self.ca_certs)
            if self.client_cert:
                verify.load_cert_chain(*self.client_cert)
        return httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
            verify=verify,
            trust_env=True,  # HTTP(S)_PROXY, NO_PROXY, SSL_CERT_FILE
            limits=httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
            follow_redirects=False,
        )

    def send(self, request: Request) -> Response:
        """Send ``request`` once and classify the outcome (see the module docstring)."""
        import httpx

        quiet = suppress_instrumentation() if _modules.get("opentelemetry.trace") else None
        try:
            answer = self.client.request(
                request.method, request.url, headers=list(request.headers), content=request.body
            )
        except httpx.HTTPError as exc:
            # Connection refused or reset, timeouts, protocol errors: the service may
            # take it later. (A reset after the body was read may have delivered it:
            # delivery is at least once.)
            raise DeliveryError(
                f"{type(exc).__name__} sending to {self._where(request)}: "
                f"{redact(str(exc), self._secrets)}",
                retryable=True,
            ) from None
        finally:
            if quiet is not None:
                detach(quiet)
        status = answer.status_code
        headers = tuple(answer.headers.items())
        if 200 <= status < 300:
            return Response(status, headers, answer.content)
        body = answer.content[:_BODY_LIMIT].decode("utf-8", "replace")
        text = redact(body, self._secrets).strip()
        retryable = status in RETRYABLE_STATUSES
        raise DeliveryError(
            f"HTTP {status} from {self._where(request)}" + (f": {text}" if text else ""),
            retryable=retryable,
            status=status,
            retry_after=parse_retry_after(answer.headers.get("retry-after")) if retryable else None,
        )

    def _where(self, request: Request) -> str:
        return redact(request.url.split("?", 1)[0], self._secrets)


__all__ = [
    "RETRYABLE_STATUSES",
    "Delivery",
    "DeliveryError",
    "Request",
    "Response",
    "parse_retry_after",
    "redact",
]
