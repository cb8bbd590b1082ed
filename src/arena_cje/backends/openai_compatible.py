"""Backend for OpenAI-compatible HTTP APIs (Fireworks, vLLM, Together, llama.cpp server, ...).

* Generation: ``POST {base_url}/chat/completions`` with the policy's system prompt, temperature,
  ``top_p=1``, ``max_tokens``, ``seed`` and per-token log-probs.
* Teacher forcing: ``POST {base_url}/completions`` with ``echo=True``, ``max_tokens=0`` and
  ``logprobs=k`` on the conversation written with the model family's chat template
  (:mod:`arena_cje.backends.templates`); the response's tokens are found by their character
  offsets and their log-probs summed, end-of-turn token included. When no token starts exactly
  where the response starts (the last prompt character and the first response characters were
  merged into one token) the two-call difference log P(prefix+response) - log P(prefix) is used.
* Judging: ``POST {base_url}/chat/completions`` with the rubric as system message, T=0, the score
  parsed from JSON with a tolerant fallback.

Temperature. Servers return echo log-probs at T=1 whatever temperature is sent (vLLM does). A
policy at temperature T samples from softmax(z/T), so its log-prob of token i is

    log p_T(i) = l_i / T - log sum_j exp(l_j / T),        l_j = log p_1(j)  (T=1 log-probs).

Only the top-k l_j (plus the scored token's) are returned. Let K be those tokens,
S = sum_{j in K} exp(l_j/T), R = 1 - sum_{j in K} exp(l_j) the T=1 mass of the n = V - |K|
unseen tokens, each at most c = min of the top-k probabilities. For beta = 1/T the unseen tokens
contribute U = sum_tail p_j^beta, which lies between the "concentrated" value R c^(beta-1) (as
many tokens as possible at c) and the "spread" value R^beta n^(1-beta) (n equal tokens); which of
the two is smaller depends on whether beta > 1. Hence

    log Z in [log(S + U_lo), log(S + U_hi)]

and we report the midpoint with half-width (log(S+U_hi) - log(S+U_lo)) / 2 per token;
``TeacherForced.tail_mass_bound`` is the sum of the half-widths over the response's tokens, a
guaranteed bound on |estimate - exact| given exact top-k log-probs and the vocabulary size. See
docs/api_backend.md for typical sizes.

Faults. Timeouts, connection errors (including dropped connections), HTTP 429 (``Retry-After``
honoured) and 5xx are retried with exponential backoff and full jitter (tenacity). HTTP
400/401/403/404 are not retried: they raise :class:`ConfigurationError` saying what to fix, after
the requests already in flight finish and are recorded. A malformed body is a recorded failure.
The API key is only ever placed in the ``Authorization`` header and scrubbed from every message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from tqdm.auto import tqdm

from arena_cje.backends.judge_parsing import parse_judge_score
from arena_cje.backends.base import Generation, JudgeSpec, Judgement, PolicySpec, TeacherForced
from arena_cje.backends.store import DONE, FAILED, RecordKey, RequestStore, make_key, sha256
from arena_cje.backends.templates import ChatTemplate, get_template

logger = logging.getLogger(__name__)

DEFAULT_STORE_PATH = "data/02_intermediate/api_requests.sqlite"


class ConfigurationError(RuntimeError):
    """A request the server rejects for a reason retrying cannot fix (HTTP 400/401/403/404)."""


class BudgetExceededError(RuntimeError):
    """The next request could push the recorded spend over ``budget_usd``."""


class MalformedResponseError(RuntimeError):
    """The server answered 200 with a body that is not the expected JSON."""


class RetryableHTTPError(RuntimeError):
    """HTTP 429 or 5xx; ``retry_after`` holds the server's ``Retry-After`` in seconds if given."""

    def __init__(self, message: str, status: int, retry_after: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


_RETRYABLE = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    RetryableHTTPError,
)

_CONTEXT_LENGTH = re.compile(r"context length|context window|maximum context|too long|exceeds? the max", re.I)


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def resolve_api_key(
    api_key: str | None,
    api_key_env: str = "FIREWORKS_API_KEY",
    credentials_path: str | Path = "conf/local/credentials.yml",
    credentials_key: str = "fireworks",
) -> str | None:
    """Find the API key: explicit value, then the environment variable, then the credentials file.

    The credentials file is Kedro's ``conf/local/credentials.yml`` holding
    ``<credentials_key>: {api_key: ...}``. Returns ``None`` when no key is configured (fine for
    local servers without authentication).
    """
    if api_key:
        return str(api_key)
    if api_key_env and os.environ.get(api_key_env):
        return os.environ[api_key_env]
    path = Path(credentials_path)
    if path.is_file():
        creds = yaml.safe_load(path.read_text()) or {}
        entry = creds.get(credentials_key) if isinstance(creds, dict) else None
        if isinstance(entry, dict) and entry.get("api_key"):
            return str(entry["api_key"])
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds, fractional accepted; dates ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def rescale_logprob(
    logprob: float,
    token: str,
    top: Mapping[str, float] | None,
    temperature: float,
    vocab_size: int,
) -> tuple[float, float]:
    """Temperature-scaled log-prob of one token from T=1 top-k log-probs, with an error bound.

    Implements log p_T(i) = l_i/T - log Z_T with log Z_T bracketed as in the module docstring:
    U_conc = R c^(beta-1), U_spread = R^beta n^(1-beta), U_lo = min, U_hi = max,
    estimate = l_i/T - (log(S+U_lo) + log(S+U_hi))/2, half-width = (log(S+U_hi) - log(S+U_lo))/2.

    Args:
        logprob: l_i, the token's log-prob at T=1.
        token: The token's text (to merge it into the top-k set).
        top: Top-k tokens -> T=1 log-probs at this position.
        temperature: Policy temperature T > 0.
        vocab_size: V, the model's vocabulary size (bounds the number of unseen tokens).

    Returns:
        ``(estimate, half_width)``; ``(logprob, 0.0)`` when T == 1.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 to score log-probs (T=0 is greedy: log-probs are 0 or -inf)")
    if temperature == 1.0:
        return logprob, 0.0
    beta = 1.0 / temperature
    top = dict(top or {})
    cap = math.exp(min(top.values())) if top else 1.0  # every unseen token is below the k-th best
    known = {**top, token: logprob}
    seen_mass = sum(math.exp(v) for v in known.values())
    tail = max(0.0, 1.0 - seen_mass)
    n_tail = max(1, int(vocab_size) - len(known))
    s_known = sum(math.exp(beta * v) for v in known.values())
    if tail > 0.0:
        concentrated = tail * cap ** (beta - 1.0)
        spread = tail**beta * n_tail ** (1.0 - beta)
        u_lo, u_hi = min(concentrated, spread), max(concentrated, spread)
    else:
        u_lo = u_hi = 0.0
    log_lo, log_hi = math.log(s_known + u_lo), math.log(s_known + u_hi)
    return beta * logprob - 0.5 * (log_lo + log_hi), 0.5 * (log_hi - log_lo)


# --------------------------------------------------------------------------------------------
# Rate limit and budget
# --------------------------------------------------------------------------------------------


class _RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart across all threads."""

    def __init__(self, requests_per_minute: float | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class _Budget:
    """Spend so far plus in-flight reservations must stay within the cap."""

    def __init__(self, cap_usd: float | None, spent_usd: float) -> None:
        self.cap = cap_usd
        self.spent = spent_usd
        self.reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, estimate: float) -> None:
        with self._lock:
            if self.cap is not None and self.spent + self.reserved + estimate > self.cap:
                raise BudgetExceededError(
                    f"budget cap reached: spent ${self.spent:.4f} + in flight ${self.reserved:.4f} + next request "
                    f"up to ${estimate:.4f} would exceed backend.options.budget_usd = ${self.cap:.2f}; raise the cap "
                    "to continue (completed requests are kept and will not be repeated)"
                )
            self.reserved += estimate

    def settle(self, estimate: float, actual: float) -> None:
        with self._lock:
            self.reserved -= estimate
            self.spent += actual


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


@dataclass
class _Call:
    """The outcome of one logical item (possibly several HTTP calls)."""

    result: Any
    status: str = DONE
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class CheckReport:
    """Verdict of :meth:`OpenAICompatibleBackend.self_check` for one policy."""

    policy: str
    model: str
    verdict: str  # PASS | FAIL | ERROR
    details: list[str] = field(default_factory=list)
    max_abs_diff_per_token: float | None = None


class OpenAICompatibleBackend:
    """OpenAI-compatible HTTP backend with concurrency, retries, a durable record and a budget.

    All keyword arguments come from ``backend.options`` in the parameters.

    Args:
        base_url: API root including the version, e.g. ``https://api.fireworks.ai/inference/v1``.
        api_key: Key given directly (discouraged: prefer the env var or credentials file).
        api_key_env: Environment variable holding the key.
        credentials_path: Kedro credentials file read when the env var is unset.
        credentials_key: Entry in that file (``<key>: {api_key: ...}``).
        chat_template: Template name or mapping (see :func:`templates.get_template`).
        with_bos: Write the template's BOS marker into teacher-forcing text (most servers add it).
        concurrency: Worker threads (= simultaneous requests).
        requests_per_minute: Client-side rate limit (``None``: unlimited).
        timeout: Seconds per HTTP request (connect and read).
        max_retries: Retries after the first attempt for retryable faults.
        backoff_initial: Exponential backoff multiplier in seconds (full jitter).
        backoff_max: Longest backoff wait in seconds (``Retry-After`` may ask for longer).
        top_k_logprobs: Alternatives requested per position (temperature rescaling; providers cap it).
        vocab_size: Model vocabulary size, used by the rescaling error bound.
        echo_applies_temperature: Set when the provider returns echo log-probs at the sent
            temperature; then no rescaling is done.
        store_path: SQLite file of the durable record (``None``/"" disables it).
        prices: ``{model: {prompt: usd_per_1k, completion: usd_per_1k}}``; key ``default`` applies
            to unlisted models.
        budget_usd: Spend cap over everything in the store (``None``: no cap).
        judge_rescore_fraction: Share of judged items scored a second time (judge noise).
        judge_rescore_seed: Seed of that random subset.
        judge_json_mode: Send ``response_format={"type": "json_object"}`` to the judge.
        check_tolerance: Allowed mean |difference| per token (nats) in :meth:`self_check`.
        progress: Show tqdm progress bars.
        seed: Ignored. It is the simulated backend's option in ``conf/base``; parameters merge
            softly, so it reaches every backend's options. Sampling seeds are per item.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        api_key_env: str = "FIREWORKS_API_KEY",
        credentials_path: str = "conf/local/credentials.yml",
        credentials_key: str = "fireworks",
        chat_template: str | Mapping[str, Any] = "llama3",
        with_bos: bool = False,
        concurrency: int = 8,
        requests_per_minute: float | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        top_k_logprobs: int = 5,
        vocab_size: int = 202048,
        echo_applies_temperature: bool = False,
        store_path: str | None = DEFAULT_STORE_PATH,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        budget_usd: float | None = None,
        judge_rescore_fraction: float = 0.0,
        judge_rescore_seed: int = 0,
        judge_json_mode: bool = False,
        check_tolerance: float = 0.02,
        progress: bool = True,
        seed: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("backend.options.concurrency must be >= 1")
        if not 0.0 <= judge_rescore_fraction <= 1.0:
            raise ValueError("backend.options.judge_rescore_fraction must be in [0, 1]")
        self.base_url = base_url.rstrip("/")
        self.template: ChatTemplate = get_template(chat_template)
        self.with_bos = bool(with_bos)
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.top_k = int(top_k_logprobs)
        self.vocab_size = int(vocab_size)
        self.echo_applies_temperature = bool(echo_applies_temperature)
        self.prices = {k: dict(v) for k, v in (prices or {}).items()}
        self.judge_rescore_fraction = float(judge_rescore_fraction)
        self.judge_rescore_seed = int(judge_rescore_seed)
        self.judge_json_mode = bool(judge_json_mode)
        self.check_tolerance = float(check_tolerance)
        self.progress = bool(progress)
        self._key = resolve_api_key(api_key, api_key_env, credentials_path, credentials_key)
        self._key_hint = (
            f"set the {api_key_env} environment variable or `{credentials_key}: {{api_key: ...}}` in {credentials_path}"
        )
        self._session = requests.Session()
        # One pooled connection per worker thread: connections are reused across requests.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, self.concurrency))
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
        self.store = RequestStore(store_path) if store_path else None
        self._budget = _Budget(budget_usd, self.store.total_cost() if self.store else 0.0)
        if budget_usd is not None and not self.prices:
            raise ValueError("backend.options.budget_usd needs backend.options.prices to count the cost")

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleBackend(base_url={self.base_url!r}, template={self.template.name!r})"

    def close(self) -> None:
        """Close the HTTP session and the store."""
        self._session.close()
        if self.store is not None:
            self.store.close()

    # ---------------------------------------------------------------- HTTP

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _post_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._limiter.wait()
        url = f"{self.base_url}{path}"
        response = self._session.post(url, json=body, timeout=self.timeout)
        status = response.status_code
        if status == 429 or status >= 500:
            raise RetryableHTTPError(
                f"HTTP {status} from {path}: {self._scrub(response.text[:200])}",
                status,
                parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 400:
            raise self._configuration_error(status, path, body.get("model", "?"), response.text)
        try:
            data = response.json()
        except ValueError:
            raise MalformedResponseError(
                f"malformed response body from {path} (not JSON): {self._scrub(response.text[:120])!r}"
            ) from None
        if not isinstance(data, dict):
            raise MalformedResponseError(f"malformed response body from {path}: expected a JSON object")
        return data

    def _configuration_error(self, status: int, path: str, model: str, text: str) -> Exception:
        try:
            message = json.loads(text).get("error", {})
            message = message.get("message", text) if isinstance(message, dict) else str(message)
        except (ValueError, AttributeError):
            message = text
        message = self._scrub(str(message)[:300])
        where = f"HTTP {status} from {self.base_url}{path} for model {model!r}: {message}"
        if status == 400 and _CONTEXT_LENGTH.search(message):
            # Item-specific (this prompt is too long): recorded for the item, not fatal.
            return _ItemRejected(where)
        fixes = {
            401: f"the API key is missing or invalid: {self._key_hint}",
            403: "the API key has no access to this model or endpoint: check the account's permissions",
            404: "model or endpoint not found: check backend.options.base_url and the model id in policies/judge",
            400: "the server rejected the request parameters: check max_tokens, top_k_logprobs (providers "
            "cap it, often at 5), and that the endpoint supports echo/logprobs",
        }
        fix = fixes.get(status, "the request was rejected; check the backend options")
        return ConfigurationError(f"{where}. To fix: {fix}.")

    def _post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """POST with retries; returns ``(json, attempts)``."""

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RetryableHTTPError) and exc.retry_after is not None:
                return min(exc.retry_after, 600.0)
            return jitter(state)

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            logger.warning(
                "%s attempt %d failed (%s); retrying in %.2fs",
                path, state.attempt_number, self._scrub(f"{type(exc).__name__}: {exc}"),
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

    def _price(self, model: str) -> tuple[float, float]:
        price = self.prices.get(model, self.prices.get("default"))
        if price is None:
            if self._budget.cap is not None:
                raise ConfigurationError(f"no price for model {model!r} in backend.options.prices (needed by budget_usd)")
            return 0.0, 0.0
        return float(price.get("prompt", 0.0)), float(price.get("completion", 0.0))

    def _cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        p, c = self._price(model)
        return prompt_tokens / 1000.0 * p + completion_tokens / 1000.0 * c

    def _estimate(self, model: str, n_chars: int, max_completion: int, n_calls: int = 1) -> float:
        # Upper estimate: ~1 token per 2 characters is above every BPE tokenizer's average for text.
        return n_calls * self._cost(model, n_chars // 2 + 16, max_completion)

    # ---------------------------------------------------------------- batch engine

    def _run(
        self,
        stage: str,
        label: str,
        keys: list[RecordKey],
        tasks: list[Callable[[], _Call]],
        estimates: list[tuple[str, float]],
        failure: Callable[[str], Any],
        use_store: bool = True,
    ) -> list[Any]:
        """Run tasks concurrently; record each as it finishes; return results in input order."""
        n = len(tasks)
        results: list[Any] = [None] * n
        store = self.store if use_store else None
        if store is not None:
            done = store.get_done(keys)
            for i, key in enumerate(keys):
                if key in done:
                    results[i] = done[key]
        todo = [i for i in range(n) if results[i] is None]
        fatal: BaseException | None = None

        stop = threading.Event()

        def work(i: int) -> Any:
            if stop.is_set():
                raise _Stopped()
            _, estimate = estimates[i]
            try:
                self._budget.reserve(estimate)
            except BudgetExceededError:
                stop.set()
                raise
            actual = 0.0
            try:
                try:
                    call = tasks[i]()
                except _ItemRejected as exc:
                    call = _Call(failure(str(exc)), status=DONE)
                except MalformedResponseError as exc:
                    call = _Call(failure(str(exc)), status=FAILED)
                except _RETRYABLE as exc:
                    message = self._scrub(f"gave up after {self.max_retries + 1} attempts: {type(exc).__name__}: {exc}")
                    call = _Call(failure(message), status=FAILED)
                except ConfigurationError:
                    stop.set()  # workers take no new item; in-flight ones finish and are recorded
                    raise
                actual = call.cost_usd
                if store is not None:
                    store.put(
                        keys[i], label, call.result, status=call.status, error=getattr(call.result, "error", None),
                        prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens,
                        cost_usd=call.cost_usd,
                    )
                return call.result
            finally:
                self._budget.settle(estimate, actual)

        with tqdm(
            total=n, initial=n - len(todo), desc=f"{stage} {label}", unit="req", disable=not self.progress,
            dynamic_ncols=True,
        ) as bar, ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="api") as pool:
            futures = {pool.submit(work, i): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                if future.cancelled():
                    continue
                try:
                    results[i] = future.result()
                except _Stopped:
                    continue
                except (ConfigurationError, BudgetExceededError) as exc:
                    if fatal is None:
                        fatal = exc
                        for other in futures:
                            other.cancel()  # queued items stop; in-flight ones finish and are recorded
                except Exception as exc:  # noqa: BLE001 - one item's bug never loses the others
                    results[i] = failure(self._scrub(f"{type(exc).__name__}: {exc}"))
                bar.update(1)
        if fatal is not None:
            raise fatal
        return results

    # ---------------------------------------------------------------- specs (what keys hash)

    def _policy_spec(self, policy: PolicySpec, stage: str) -> dict[str, Any]:
        spec = asdict(policy)
        spec.pop("name")
        spec["base_url"] = self.base_url
        if stage == "teacher_force":
            spec.update(
                template=asdict(self.template), with_bos=self.with_bos, top_k=self.top_k, vocab_size=self.vocab_size,
                echo_applies_temperature=self.echo_applies_temperature,
            )
        return spec

    def _judge_spec(self, judge: JudgeSpec) -> dict[str, Any]:
        return {**asdict(judge), "base_url": self.base_url, "json_mode": self.judge_json_mode}

    # ---------------------------------------------------------------- generation

    def _messages(self, system_prompt: str, user: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return [*messages, {"role": "user", "content": user}]

    def _generate_call(self, prompt: str, policy: PolicySpec, seed: int) -> _Call:
        body = {
            "model": policy.model,
            "messages": self._messages(policy.system_prompt, prompt),
            "temperature": policy.temperature,
            "top_p": policy.top_p,
            "max_tokens": policy.max_tokens,
            "seed": int(seed),
            "logprobs": True,
            "top_logprobs": self.top_k,
        }
        data, attempts = self._post("/chat/completions", body)
        pt, ct = _usage(data)
        cost = self._cost(policy.model, pt, ct)
        usage = {"prompt_tokens": float(pt), "completion_tokens": float(ct), "cost_usd": cost, "attempts": float(attempts)}
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("message.content is not a string")
        except (KeyError, IndexError, TypeError) as exc:
            error = f"malformed chat completion: {type(exc).__name__}: {exc}"
            return _Call(Generation(text="", error=error, usage=usage), FAILED, pt, ct, cost)
        token_logprobs = None
        content = (choice.get("logprobs") or {}).get("content")
        if isinstance(content, list):
            values = [item.get("logprob") for item in content if isinstance(item, dict)]
            if len(values) == len(content) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                token_logprobs = [float(v) for v in values]
        if choice.get("finish_reason") == "length":
            usage["truncated"] = 1.0
        # Generation.logprob stays None: the chat API omits the end-of-turn token and returns T=1
        # log-probs; the policy's log-prob comes from teacher forcing.
        result = Generation(text=text, logprob=None, token_logprobs=token_logprobs, n_tokens=None, usage=usage)
        return _Call(result, DONE, pt, ct, cost)

    def generate(self, prompt: str, policy: PolicySpec, seed: int) -> Generation:
        """Sample one response (recorded in the store)."""
        return self.generate_batch([prompt], policy, [seed])[0]

    def generate_batch(self, prompts: list[str], policy: PolicySpec, seeds: list[int]) -> list[Generation]:
        """Sample one response per (prompt, seed), concurrently; results in input order."""
        return self._generate_batch(prompts, policy, seeds, use_store=True)

    def _generate_batch(self, prompts: list[str], policy: PolicySpec, seeds: list[int], use_store: bool) -> list[Generation]:
        if len(prompts) != len(seeds):
            raise ValueError("prompts and seeds differ in length")
        spec = self._policy_spec(policy, "generate")
        keys = [make_key("generate", spec, p, str(int(s))) for p, s in zip(prompts, seeds)]
        tasks = [(lambda p=p, s=s: self._generate_call(p, policy, s)) for p, s in zip(prompts, seeds)]
        estimates = [
            (policy.model, self._estimate(policy.model, len(p) + len(policy.system_prompt), policy.max_tokens))
            for p in prompts
        ]
        return self._run("generate", policy.name, keys, tasks, estimates,
                         lambda e: Generation(text="", error=e), use_store=use_store)

    # ---------------------------------------------------------------- teacher forcing

    def _echo(self, text: str, policy: PolicySpec) -> tuple[dict[str, Any], int, int, int]:
        """One echo call; returns (logprobs block, prompt_tokens, completion_tokens, attempts)."""
        body = {
            "model": policy.model,
            "prompt": text,
            "echo": True,
            "max_tokens": 0,
            "logprobs": max(1, self.top_k),
            "temperature": policy.temperature,
            "top_p": 1.0,
        }
        data, attempts = self._post("/completions", body)
        pt, ct = _usage(data)
        try:
            block = data["choices"][0]["logprobs"]
            tokens, values = block["tokens"], block["token_logprobs"]
            if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
                raise TypeError("tokens/token_logprobs missing or of different lengths")
        except (KeyError, IndexError, TypeError) as exc:
            raise MalformedResponseError(f"malformed echo completion: {type(exc).__name__}: {exc}") from None
        return block, pt, ct, attempts

    def _scored(self, block: Mapping[str, Any], start: int, temperature: float) -> tuple[float, float, list[float]]:
        """Sum of (rescaled) log-probs of tokens ``start..end``; returns (sum, bound, raw per-token)."""
        tokens, values = block["tokens"], block["token_logprobs"]
        tops = block.get("top_logprobs") or [None] * len(tokens)
        rescale = temperature != 1.0 and not self.echo_applies_temperature
        total, bound, raw = 0.0, 0.0, []
        for i in range(start, len(tokens)):
            value = values[i]
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"token {i} ({tokens[i]!r}) has no finite log-prob: {value!r}")
            raw.append(float(value))
            if rescale:
                estimate, half = rescale_logprob(float(value), tokens[i], tops[i] if i < len(tops) else None,
                                                 temperature, self.vocab_size)
                total, bound = total + estimate, bound + half
            else:
                total += float(value)
        return total, bound, raw

    def _teacher_force_call(self, prompt: str, response: str, policy: PolicySpec) -> _Call:
        full, start, _ = self.template.render(prompt, response, policy.system_prompt, with_bos=self.with_bos)
        block, pt, ct, attempts = self._echo(full, policy)
        usage: dict[str, float] = {"attempts": float(attempts)}
        offsets = block.get("text_offset")
        tokens = block["tokens"]
        first = None
        if isinstance(offsets, list) and len(offsets) == len(tokens):
            first = next((i for i, off in enumerate(offsets) if off == start), None)
            if first is not None and first < 1:
                first = None  # the first token of a text has no log-prob
        try:
            if first is not None:
                logprob, bound, _ = self._scored(block, first, policy.temperature)
                n_tokens = len(tokens) - first
                usage["two_call"] = 0.0
            else:
                # The boundary falls inside a token: difference of the two texts' totals, skipping
                # the shared leading tokens (identical contexts give identical log-probs).
                prefix_block, pt2, ct2, attempts2 = self._echo(full[:start], policy)
                pt, ct = pt + pt2, ct + ct2
                usage.update(two_call=1.0, attempts=float(attempts + attempts2))
                common = _common_prefix(block, prefix_block)
                total_full, bound_full, _ = self._scored(block, max(1, common), policy.temperature)
                total_prefix, bound_prefix, _ = self._scored(prefix_block, max(1, common), policy.temperature)
                logprob, bound = total_full - total_prefix, bound_full + bound_prefix
                n_tokens = len(tokens) - max(1, common)
        except ValueError as exc:
            cost = self._cost(policy.model, pt, ct)
            usage.update(prompt_tokens=float(pt), completion_tokens=float(ct), cost_usd=cost)
            return _Call(TeacherForced(None, error=f"teacher forcing failed: {exc}", usage=usage), DONE, pt, ct, cost)
        cost = self._cost(policy.model, pt, ct)
        usage.update(prompt_tokens=float(pt), completion_tokens=float(ct), cost_usd=cost)
        if not math.isfinite(logprob) or logprob > 0.0:
            error = f"refused teacher-forced log-prob {logprob!r}: must be finite and <= 0"
            return _Call(TeacherForced(None, n_tokens=n_tokens, error=error, usage=usage), DONE, pt, ct, cost)
        return _Call(TeacherForced(logprob, n_tokens=n_tokens, tail_mass_bound=bound, usage=usage), DONE, pt, ct, cost)

    def teacher_force(self, prompt: str, response: str, policy: PolicySpec) -> TeacherForced:
        """log P_policy(response | prompt), end of turn included (recorded in the store)."""
        return self.teacher_force_batch([prompt], [response], policy)[0]

    def teacher_force_batch(self, prompts: list[str], responses: list[str], policy: PolicySpec) -> list[TeacherForced]:
        """Teacher-force many pairs concurrently; results in input order."""
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        spec = self._policy_spec(policy, "teacher_force")
        keys = [make_key("teacher_force", spec, p, sha256(r)) for p, r in zip(prompts, responses)]
        tasks = [(lambda p=p, r=r: self._teacher_force_call(p, r, policy)) for p, r in zip(prompts, responses)]
        estimates = [
            (policy.model, self._estimate(policy.model, len(p) + len(r) + len(policy.system_prompt) + 200, 0, n_calls=2))
            for p, r in zip(prompts, responses)
        ]
        return self._run("teacher_force", policy.name, keys, tasks, estimates,
                         lambda e: TeacherForced(None, error=e))

    # ---------------------------------------------------------------- judging

    def _judge_call(self, prompt: str, response: str, judge: JudgeSpec) -> _Call:
        user = f"[User prompt]\n{prompt}\n\n[AI assistant's response]\n{response}"
        body: dict[str, Any] = {
            "model": judge.model,
            "messages": self._messages(judge.rubric, user),
            "temperature": judge.temperature,
            "top_p": 1.0,
            "max_tokens": judge.max_tokens,
        }
        if self.judge_json_mode:
            body["response_format"] = {"type": "json_object"}
        data, attempts = self._post("/chat/completions", body)
        pt, ct = _usage(data)
        cost = self._cost(judge.model, pt, ct)
        usage = {"prompt_tokens": float(pt), "completion_tokens": float(ct), "cost_usd": cost, "attempts": float(attempts)}
        try:
            raw = data["choices"][0]["message"]["content"]
            if raw is None:
                raw = ""  # e.g. a refusal carried elsewhere: no score
            if not isinstance(raw, str):
                raise TypeError("message.content is not a string")
        except (KeyError, IndexError, TypeError) as exc:
            error = f"malformed chat completion: {type(exc).__name__}: {exc}"
            return _Call(Judgement(None, error=error, usage=usage), FAILED, pt, ct, cost)
        score, error = parse_judge_score(raw, judge.scale)
        return _Call(Judgement(score, raw=raw, error=error, usage=usage), DONE, pt, ct, cost)

    def _rescored(self, prompt: str, response: str) -> bool:
        """Deterministic, order-free choice of the judge re-score subset."""
        if self.judge_rescore_fraction <= 0.0:
            return False
        digest = sha256(f"{self.judge_rescore_seed}\x00{prompt}\x00{response}")
        return int(digest[:12], 16) / 16**12 < self.judge_rescore_fraction

    def judge(self, prompt: str, response: str, judge: JudgeSpec) -> Judgement:
        """Judge one pair (recorded in the store)."""
        return self.judge_batch([prompt], [response], judge)[0]

    def judge_batch(self, prompts: list[str], responses: list[str], judge: JudgeSpec) -> list[Judgement]:
        """Judge many pairs concurrently; results in input order.

        For the ``judge_rescore_fraction`` subset the same request is sent once more and its score
        is put in ``usage["rescore_score"]`` (NaN when that second judgement failed): the spread
        between the two measures the judge's own noise.
        """
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        spec = self._judge_spec(judge)

        def run(indices: list[int], replicate: str, label: str) -> list[Judgement]:
            keys = [make_key("judge", spec, prompts[i], sha256(responses[i]) + replicate) for i in indices]
            tasks = [(lambda i=i: self._judge_call(prompts[i], responses[i], judge)) for i in indices]
            estimates = [
                (judge.model, self._estimate(judge.model, len(prompts[i]) + len(responses[i]) + len(judge.rubric) + 50,
                                             judge.max_tokens))
                for i in indices
            ]
            return self._run("judge", label, keys, tasks, estimates, lambda e: Judgement(None, error=e))

        results = run(list(range(len(prompts))), "", "judge")
        subset = [i for i in range(len(prompts)) if self._rescored(prompts[i], responses[i])]
        if subset:
            again = run(subset, "#rescore1", "judge_rescore")
            for i, second in zip(subset, again):
                results[i].usage["rescore_score"] = second.score if second.score is not None else math.nan
        return results

    # ---------------------------------------------------------------- self-check

    def self_check(self, policy: PolicySpec, prompts: Sequence[str], seed: int = 0) -> CheckReport:
        """Check access to ``policy.model`` and that teacher forcing reproduces generation log-probs.

        For each prompt a response is generated (not recorded), then teacher-forced at T=1 without
        rescaling; the sum of the response tokens' log-probs (end of turn excluded, since the chat
        API does not return it) must match the sum of the generation's token log-probs within
        ``check_tolerance`` nats per token on average. A mismatch usually means a wrong
        ``chat_template``, a BOS setting (``with_bos``) or a provider that returns processed
        log-probs.
        """
        report = CheckReport(policy.name, policy.model, "PASS")
        try:
            gens = self._generate_batch(list(prompts), policy, [seed + i for i in range(len(prompts))], use_store=False)
        except (ConfigurationError, BudgetExceededError) as exc:
            return CheckReport(policy.name, policy.model, "ERROR", [str(exc)])
        worst = 0.0
        t1 = PolicySpec(**{**asdict(policy), "temperature": 1.0})
        for prompt, gen in zip(prompts, gens):
            if gen.error:
                return CheckReport(policy.name, policy.model, "ERROR", [f"generation failed: {gen.error}"])
            if gen.token_logprobs is None:
                report.verdict = "FAIL"
                report.details.append("the chat endpoint returned no token log-probs")
                continue
            full, start, _ = self.template.render(prompt, gen.text, policy.system_prompt, with_bos=self.with_bos)
            try:
                block, *_ = self._echo(full, t1)
            except ConfigurationError as exc:
                return CheckReport(policy.name, policy.model, "ERROR", [str(exc)])
            except (MalformedResponseError, *_RETRYABLE) as exc:
                return CheckReport(policy.name, policy.model, "ERROR", [self._scrub(f"echo failed: {exc}")])
            offsets = block.get("text_offset") or []
            first = next((i for i, off in enumerate(offsets) if off == start), None)
            if first is None or first < 1:
                report.verdict = "FAIL"
                report.details.append("response start not found at a token boundary in the echo (template mismatch?)")
                continue
            _, _, raw = self._scored(block, first, 1.0)
            forced = sum(raw[:-1])  # drop the end-of-turn token
            generated = sum(gen.token_logprobs)
            n = max(1, len(gen.token_logprobs))
            diff = abs(forced - generated) / n
            worst = max(worst, diff)
            ok = diff <= self.check_tolerance
            report.details.append(
                f"{'ok ' if ok else 'BAD'} tokens gen={len(gen.token_logprobs)} forced={len(raw) - 1} "
                f"sum gen={generated:.3f} forced={forced:.3f} |diff|/token={diff:.4f}"
            )
            if not ok:
                report.verdict = "FAIL"
        report.max_abs_diff_per_token = worst
        if policy.temperature != 1.0 and report.verdict != "ERROR" and gens and not gens[-1].error:
            self._check_echo_temperature(policy, t1, prompts[-1], gens[-1].text, report)
        return report

    def _check_echo_temperature(self, policy: PolicySpec, t1: PolicySpec, prompt: str, text: str, report: CheckReport) -> None:
        """Does the provider apply the sent temperature to echo log-probs? Must match the option."""
        full, _, _ = self.template.render(prompt, text, policy.system_prompt, with_bos=self.with_bos)
        try:
            at_t = self._echo(full, policy)[0]["token_logprobs"][1:]
            at_1 = self._echo(full, t1)[0]["token_logprobs"][1:]
        except (ConfigurationError, MalformedResponseError, *_RETRYABLE) as exc:
            report.verdict = "ERROR"
            report.details.append(self._scrub(f"echo at T={policy.temperature} failed: {exc}"))
            return
        applied = any(abs(a - b) > 1e-6 for a, b in zip(at_t, at_1) if a is not None and b is not None)
        report.details.append(f"echo log-probs {'change' if applied else 'do not change'} with temperature "
                              f"(echo_applies_temperature={self.echo_applies_temperature})")
        if applied != self.echo_applies_temperature:
            report.verdict = "FAIL"
            report.details.append(f"set backend.options.echo_applies_temperature: {str(applied).lower()}")


class _Stopped(RuntimeError):
    """An item not started because a fatal error stopped the batch."""


class _ItemRejected(RuntimeError):
    """HTTP 400 that concerns only this item (e.g. prompt longer than the context window)."""


def _usage(data: Mapping[str, Any]) -> tuple[int, int]:
    usage = data.get("usage") or {}
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError, AttributeError):
        return 0, 0


def _common_prefix(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    """Number of leading tokens two echo blocks share (same token text and offset)."""
    ta, tb = a["tokens"], b["tokens"]
    oa, ob = a.get("text_offset") or [None] * len(ta), b.get("text_offset") or [None] * len(tb)
    n = 0
    # The last token of the shorter text may continue differently in the longer one: never share it.
    while n < min(len(ta), len(tb)) - 1 and ta[n] == tb[n] and oa[n] == ob[n]:
        n += 1
    return n
