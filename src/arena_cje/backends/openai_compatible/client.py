"""The request layer of the OpenAI-compatible backend: one pooled HTTP session, the client-side
rate limit, retries with backoff, and the classification of what the server answered.

:class:`HTTPClient` sends one JSON POST and returns the reply's JSON object, or raises one of the
errors of :mod:`.errors`: a retryable fault (timeout, dropped connection, truncated body,
``finish_reason: "error"``, HTTP 408/409/429/5xx) is retried up to ``max_retries`` times with full
jitter (``Retry-After`` honoured) and then re-raised; a rejection retrying cannot fix (HTTP 4xx)
is a :class:`~.errors.ConfigurationError` saying what to fix, except an item-specific one (the
prompt exceeds the context window), which only that item records. The API key lives only in the
``Authorization`` header; :meth:`HTTPClient.scrub` removes it from every message.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from arena_cje.backends.openai_compatible.access import _RateLimiter
from arena_cje.backends.openai_compatible.errors import (
    _CONTEXT_LENGTH,
    _NO_ECHO,
    _RETRYABLE,
    RETRYABLE_STATUSES,
    ConfigurationError,
    FinishReasonError,
    MalformedResponseError,
    RetryableHTTPError,
    TruncatedBodyError,
    _ItemRejected,
    retry_after_seconds,
)

logger = logging.getLogger(__name__)


class HTTPClient:
    """JSON POSTs to one API root with a pooled session, a rate limit and retries.

    Args:
        base_url: API root including the version (no trailing slash needed).
        api_key: The key, sent as ``Authorization: Bearer``; ``None`` for servers without one.
        key_hint: How to set the key, quoted by the HTTP 401 message.
        concurrency: Worker threads that share the session (sizes the connection pool).
        requests_per_minute: Client-side rate limit (``None``: unlimited).
        timeout: Seconds per HTTP request (connect and read).
        max_retries: Retries after the first attempt for retryable faults.
        backoff_initial: Exponential backoff multiplier in seconds (full jitter).
        backoff_max: Longest backoff wait in seconds (``Retry-After`` may ask for longer).
    """

    def __init__(self, base_url: str, api_key: str | None, key_hint: str, concurrency: int,
                 requests_per_minute: float | None, timeout: float, max_retries: int,
                 backoff_initial: float, backoff_max: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self._key = api_key
        self._key_hint = key_hint
        self._session = requests.Session()
        # One pooled connection per worker thread: connections are reused across requests.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, int(concurrency)))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Content-Type"] = "application/json"
        # Resolve proxy and CA settings from the environment once: with trust_env requests re-reads
        # the environment on every call (~1 ms CPU per request at high concurrency).
        self._session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        self._session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._session.trust_env = False
        if self._key:
            self._session.headers["Authorization"] = f"Bearer {self._key}"
        self._limiter = _RateLimiter(requests_per_minute)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def scrub(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``."""
        return text.replace(self._key, "***") if self._key else text

    def post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """POST with retries; returns ``(json, attempts)``.

        Raises:
            ConfigurationError: the server rejected the request for a reason retrying cannot fix.
            MalformedResponseError: a 200 whose JSON is not an object.
            RetryableHTTPError, TruncatedBodyError, FinishReasonError, requests.RequestException:
                the last retryable fault, after ``max_retries`` retries.
        """

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RetryableHTTPError) and exc.retry_after is not None:
                return min(exc.retry_after, 600.0)
            return jitter(state)

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            logger.warning(
                "%s attempt %d failed (%s); retrying in %.2fs",
                path, state.attempt_number, self.scrub(f"{type(exc).__name__}: {exc}"),
                state.next_action.sleep if state.next_action else 0.0,
            )

        jitter = wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max)
        retrying = Retrying(
            retry=retry_if_exception_type(_RETRYABLE),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait,
            before_sleep=log_retry,
            reraise=True,
        )
        attempts = 0
        for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                return self._post_once(path, body), attempts
        raise AssertionError("unreachable")  # pragma: no cover

    def _post_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._limiter.wait()
        url = f"{self.base_url}{path}"
        response = self._session.post(url, json=body, timeout=self.timeout)
        status = response.status_code
        if status in RETRYABLE_STATUSES or status >= 500:
            raise RetryableHTTPError(
                f"HTTP {status} from {path}: {self.scrub(response.text[:200])}",
                status,
                retry_after_seconds(response.headers),
            )
        if status >= 400:
            raise self._configuration_error(status, path, body.get("model", "?"), response.text)
        try:
            data = response.json()
        except ValueError:
            # A 200 whose body is not complete JSON was cut in transfer: a transient fault.
            raise TruncatedBodyError(
                f"incomplete response body from {path} (not JSON): {self.scrub(response.text[:120])!r}"
            ) from None
        if not isinstance(data, dict):
            raise MalformedResponseError(f"malformed response body from {path}: expected a JSON object")
        choices = data.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            if choices[0].get("finish_reason") == "error":
                raise FinishReasonError(f"{path} answered with finish_reason 'error' (no usable output)")
        return data

    def _configuration_error(self, status: int, path: str, model: str, text: str) -> Exception:
        try:
            message = json.loads(text).get("error", {})
            message = message.get("message", text) if isinstance(message, dict) else str(message)
        except (ValueError, AttributeError):
            message = text
        message = self.scrub(str(message)[:300])
        where = f"HTTP {status} from {self.base_url}{path} for model {model!r}: {message}"
        if status == 400 and _CONTEXT_LENGTH.search(message):
            # Item-specific (this prompt is too long): recorded for the item, not fatal.
            return _ItemRejected(where)
        if status == 400 and path == "/completions" and _NO_ECHO.search(message):
            return ConfigurationError(
                f"{where}. This server cannot teacher-force: its completions endpoint rejects echo=True "
                "(llama.cpp's server does), so the log-probs of a given response cannot be computed. "
                "To fix: use a server whose /completions supports echo with logprobs (vLLM, Fireworks, Together)."
            )
        fixes = {
            401: f"the API key is missing or invalid: {self._key_hint}",
            403: "the API key has no access to this model or endpoint: check the account's permissions",
            404: "model or endpoint not found: check backend.openai_compatible.base_url and the model id in policies/judge",
            400: "the server rejected the request parameters: check max_tokens, top_k_logprobs (providers "
            "cap it, often at 5), judge_response_format, and that the endpoint supports echo/logprobs",
        }
        fix = fixes.get(status, "the request was rejected; check the backend options")
        return ConfigurationError(f"{where}. To fix: {fix}.")
