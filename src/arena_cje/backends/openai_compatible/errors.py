"""Errors of the OpenAI-compatible backend and which of them a retry can fix.

Faults. Timeouts, connection errors (including dropped connections and bodies cut off in
transfer), a 200 whose body is not complete JSON, ``finish_reason: "error"``, HTTP 408, 409, 429
(``retry-after-ms`` or ``Retry-After`` honoured) and 5xx are retried with exponential backoff and
full jitter (tenacity); what still fails after the retries is recorded as failed (retried on the
next run), never stored as a good response. HTTP 400/401/403/404 are not retried: they raise
:class:`ConfigurationError` saying what to fix, after the requests already in flight finish and
are recorded. A well-formed JSON reply of the wrong shape is a recorded failure. The API key is
only ever placed in the ``Authorization`` header and scrubbed from every message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import requests


class ConfigurationError(RuntimeError):
    """A request the server rejects for a reason retrying cannot fix (HTTP 400/401/403/404)."""


#: HTTP statuses worth retrying: request timeout, conflict (Fireworks' docs and SDK retry both),
#: rate limit; every 5xx is retried too.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


class BudgetExceededError(RuntimeError):
    """The next request could push the recorded spend over ``budget_usd``."""


class MalformedResponseError(RuntimeError):
    """The server answered 200 with JSON of an unexpected shape (retrying will not change it)."""


class TruncatedBodyError(RuntimeError):
    """The server answered 200 with a body that is not complete JSON (cut in transfer): retried."""


class FinishReasonError(RuntimeError):
    """The server answered 200 with ``finish_reason: "error"``: no usable output, retried."""


class RetryableHTTPError(RuntimeError):
    """HTTP 408, 409, 429 or 5xx; ``retry_after`` holds the server's requested wait in seconds."""

    def __init__(self, message: str, status: int, retry_after: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


_RETRYABLE = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    RetryableHTTPError,
    TruncatedBodyError,
    FinishReasonError,
)
_NO_ECHO = re.compile(r"no echo|echo is not supported|does not support echo|unsupported.{0,20}echo", re.I)

_CONTEXT_LENGTH = re.compile(r"context length|context window|maximum context|too long|exceeds? the max", re.I)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds, fractional accepted; dates ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a 408/409/429/5xx asks for: ``retry-after-ms`` (milliseconds, what OpenAI's and
    Fireworks' SDKs read first), else ``Retry-After`` (seconds); ``None`` when neither is usable."""
    millis = parse_retry_after(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    return parse_retry_after(headers.get("Retry-After"))


class _Stopped(RuntimeError):
    """An item not started because a fatal error stopped the batch."""


class _ItemRejected(RuntimeError):
    """HTTP 400 that concerns only this item (e.g. prompt longer than the context window)."""
