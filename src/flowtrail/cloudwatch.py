"""CloudWatch Logs delivery: ``PutLogEvents`` through botocore, signed with AWS
Signature V4 from the standard credential chain (environment, shared config and
profiles, container and instance roles). Never an ``Authorization`` header made from an
API key.

botocore is optional (``pip install 'flowtrail[aws]'``) and imported on first use. Like
`flowtrail.delivery.Delivery`, `CloudWatchLogs.put` makes one attempt (botocore's own
retries are off: the pipeline retries with backoff and spools) and raises
`flowtrail.delivery.DeliveryError` whose ``retryable`` says whether it may pass:
throttling, service unavailable, 5xx, connection errors and missing credentials may;
other refusals will not. Log groups and streams are created on first use (one that
already exists is fine) and again if they were deleted.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

from flowtrail.config import mask_text
from flowtrail.delivery import DeliveryError, ProcessClient
from flowtrail.formats.services import LogEventBatch

#: What to install when botocore is missing.
EXTRA_HINT = "CloudWatch Logs needs botocore: pip install 'flowtrail[aws]'"
_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalFailure",
        "InternalServerError",
        "RequestLimitExceeded",
    }
)
_REGION_IN_URL = re.compile(r"logs[.-](?:fips\.)?([a-z0-9-]+)\.amazonaws\.com")


def botocore_available() -> bool:
    """Whether botocore can be imported."""
    return importlib.util.find_spec("botocore") is not None


def region_of(endpoint_url: str | None, region: str | None, profile: str | None) -> str | None:
    """The region: given, else in a ``logs.<region>.amazonaws.com`` URL, else from the
    AWS configuration chain (``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile)."""
    if region:
        return region
    if endpoint_url and (found := _REGION_IN_URL.search(endpoint_url)):
        return found.group(1)
    env = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if env:
        return env
    import botocore.session

    try:
        return botocore.session.Session(profile=profile).get_config_variable("region")
    except Exception:
        return None


class CloudWatchLogs(ProcessClient):
    """Sends `LogEventBatch` values; see the module docstring."""

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None = None,
        profile: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url or None
        self.profile = profile
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._ready: set[tuple[str, str]] = set()
        super().__init__()

    def __repr__(self) -> str:
        return f"CloudWatchLogs(region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    def _forget(self) -> None:
        self._ready = set()  # groups and streams made through another client

    def _make_client(self) -> Any:
        try:
            import botocore.config
            import botocore.session
        except ImportError:
            raise DeliveryError(EXTRA_HINT, retryable=False) from None
        session = botocore.session.Session(profile=self.profile)
        config = botocore.config.Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.timeout,
            retries={"total_max_attempts": 1},
            user_agent_extra="flowtrail/0.1",
        )
        return session.create_client(
            "logs", region_name=self.region, endpoint_url=self.endpoint_url, config=config
        )

    def put(self, batch: LogEventBatch) -> None:
        """Send one batch once; raise `DeliveryError` if it was not taken."""
        try:
            self._put(batch)
        except DeliveryError:
            raise
        except Exception as exc:
            raise classify(exc) from None

    def _put(self, batch: LogEventBatch) -> None:
        client = self.client
        key = (batch.group, batch.stream)
        if key not in self._ready:
            self._create(client, batch.group, batch.stream)
        try:
            answer = client.put_log_events(
                logGroupName=batch.group, logStreamName=batch.stream, logEvents=list(batch.events)
            )
        except Exception as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise
            # Deleted since: create again and send once more.
            self._create(client, batch.group, batch.stream)
            answer = client.put_log_events(
                logGroupName=batch.group, logStreamName=batch.stream, logEvents=list(batch.events)
            )
        rejected = answer.get("rejectedLogEventsInfo") or {}
        if rejected:
            raise DeliveryError(
                f"CloudWatch Logs rejected events of {batch.group}/{batch.stream}: {rejected}",
                retryable=False,
            )

    def _create(self, client: Any, group: str, stream: str) -> None:
        for call, arguments in (
            (client.create_log_group, {"logGroupName": group}),
            (client.create_log_stream, {"logGroupName": group, "logStreamName": stream}),
        ):
            try:
                call(**arguments)
            except Exception as exc:
                if _code(exc) != "ResourceAlreadyExistsException":
                    raise
        self._ready.add((group, stream))


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def classify(exc: BaseException) -> DeliveryError:
    """A botocore failure as a `DeliveryError` (retryable or not, message masked)."""
    from botocore import exceptions as boto

    text = mask_text(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, boto.ClientError):
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        retryable = code in _RETRYABLE_CODES or (isinstance(status, int) and status >= 500)
        return DeliveryError(f"CloudWatch Logs: {text}", retryable=retryable, status=status)
    passing = (
        boto.EndpointConnectionError,
        boto.ConnectionError,
        boto.HTTPClientError,
        boto.NoCredentialsError,
        boto.PartialCredentialsError,
        boto.CredentialRetrievalError,
        OSError,
    )
    retryable = isinstance(exc, passing)
    return DeliveryError(f"CloudWatch Logs: {text}", retryable=retryable)


__all__ = ["EXTRA_HINT", "CloudWatchLogs", "botocore_available", "classify", "region_of"]
