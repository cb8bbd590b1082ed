"""The OpenAI-compatible backend: generation, teacher forcing and judging over HTTP.

* Generation: ``POST {base_url}/chat/completions`` with the policy's system prompt, temperature,
  ``top_p=1``, ``max_tokens``, ``seed`` and per-token log-probs. ``finish_reason: "length"`` marks
  a reply cut at ``max_tokens`` (``usage["truncated"]``).
* Teacher forcing: ``POST {base_url}/completions`` with ``echo=True``, ``max_tokens=0`` and
  ``logprobs=k`` on the conversation written with the model family's chat template
  (:mod:`arena_cje.backends.templates`), the end-of-turn marker appended only when the reply ended
  (``ended``; a reply cut at ``max_tokens`` never produced it). The response's tokens are located
  in the echo by their text (:mod:`.echo`) and rescaled to the policy's temperature with an error
  bound (:mod:`.temperature`). llama.cpp's server rejects ``echo`` ("Only no echo is supported"):
  that is a :class:`~arena_cje.backends.openai_compatible.errors.ConfigurationError` saying it
  cannot teacher-force.
* Judging: ``POST {base_url}/chat/completions`` with the rubric as system message, T=0, the score
  parsed from JSON with a tolerant fallback; with ``judge_response_format: json_schema`` the
  server's structured output (vLLM, Fireworks) forces ``{"score": <0..1>, ...}``.

Faults and retries: :mod:`.errors`. API key, rate limit and budget cap: :mod:`.access`.

Cost. Token counts come from the reply's ``usage``; a provider that omits it is charged the
tokenizer-free pre-request estimate (``usage["usage_estimated"] = 1``), so the budget cap still
holds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from tqdm.auto import tqdm

from arena_cje.backends.judge_parsing import parse_judge_score
from arena_cje.backends.base import EchoRepeat, Generation, JudgeSpec, Judgement, PolicySpec, TeacherForced
from arena_cje.backends.store import DONE, FAILED, RecordKey, RequestStore, make_key, sha256
from arena_cje.backends.templates import ChatTemplate, get_template
from arena_cje.backends.openai_compatible.access import _Budget, _RateLimiter, resolve_api_key
from arena_cje.backends.openai_compatible.echo import _common_prefix, _Echo, _parse_echo, locate_span
from arena_cje.backends.openai_compatible.errors import (
    _CONTEXT_LENGTH,
    _NO_ECHO,
    _RETRYABLE,
    RETRYABLE_STATUSES,
    BudgetExceededError,
    ConfigurationError,
    FinishReasonError,
    MalformedResponseError,
    RetryableHTTPError,
    TruncatedBodyError,
    _ItemRejected,
    _Stopped,
    retry_after_seconds,
)
from arena_cje.backends.openai_compatible.temperature import _finite, _top_complete, _within_position_slope, rescale_logprob

logger = logging.getLogger(__name__)

DEFAULT_STORE_PATH = "data/02_intermediate/api_requests.sqlite"


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
    """Verdict of :meth:`OpenAICompatibleBackend.self_check` for one policy.

    Attributes:
        policy: Policy name.
        model: Model id.
        verdict: ``PASS`` | ``FAIL`` | ``ERROR``.
        details: Lines to print, one finding each.
        max_abs_diff_per_token: Worst mean |generation - teacher forcing| per token (nats).
        chat_includes_eot: Whether the chat endpoint's log-probs include the end-of-turn entry,
            as detected from the data (``None``: no reply ended, so unknown).
        echo_noise_mean: Mean |difference| per token (nats) between repeated identical T=1 echo
            calls: the server's own noise, which inflates the variance of the weights.
        echo_noise_max: Largest such |difference| per token (nats).
        echo_temperature_slope: Fitted slope of the echo log-probs at the policy's T on those at
            T=1 (within positions): 1/T when the server applies the temperature, 1 when not.
    """

    policy: str
    model: str
    verdict: str  # PASS | FAIL | ERROR
    details: list[str] = field(default_factory=list)
    max_abs_diff_per_token: float | None = None
    chat_includes_eot: bool | None = None
    echo_noise_mean: float | None = None
    echo_noise_max: float | None = None
    echo_temperature_slope: float | None = None


#: JSON schema of the judge's reply for servers with structured output.
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    },
    "required": ["score"],
}
_JUDGE_FORMATS = ("json_schema", "json_object", "none")


class OpenAICompatibleBackend:
    """OpenAI-compatible HTTP backend with concurrency, retries, a durable record and a budget.

    All keyword arguments come from ``backend.openai_compatible`` in the parameters (the API key from
    Kedro's credentials).

    Args:
        base_url: API root including the version, e.g. ``https://api.fireworks.ai/inference/v1``.
        api_key: The key (from Kedro's credentials; never write it into parameters).
        api_key_env: Environment variable holding the key when ``api_key`` is not given.
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
        judge_json_mode: Shorthand for ``judge_response_format: json_schema``.
        judge_response_format: ``json_schema`` (the server's structured output forces
            ``{"score": <number in [0, 1]>, "reason": ...}``; vLLM and Fireworks support it),
            ``json_object`` (any JSON) or ``none``; default ``json_schema`` when
            ``judge_json_mode`` is set, else ``none``.
        check_tolerance: Allowed mean |difference| per token (nats) in :meth:`self_check`.
        check_echo_repeats: Identical T=1 echo calls in :meth:`self_check` to measure echo noise.
        echo_token_ids: The server can key echo log-probs by token id (vLLM's
            ``return_tokens_as_token_ids``). Then, for a row whose top-k lost entries to tokens of
            the same text (pieces of multi-byte characters), a second echo keyed by id gives the
            exact rescaling; without it such positions get a wider (still valid) bound.
        progress: Show tqdm progress bars.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        api_key_env: str | None = "FIREWORKS_API_KEY",
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
        judge_response_format: str | None = None,
        check_tolerance: float = 0.02,
        check_echo_repeats: int = 3,
        echo_token_ids: bool = False,
        progress: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("backend.openai_compatible.concurrency must be >= 1")
        if not 0.0 <= judge_rescore_fraction <= 1.0:
            raise ValueError("backend.openai_compatible.judge_rescore_fraction must be in [0, 1]")
        if judge_response_format is None:
            judge_response_format = "json_schema" if judge_json_mode else "none"
        if judge_response_format not in _JUDGE_FORMATS:
            raise ValueError(
                f"backend.openai_compatible.judge_response_format: {judge_response_format!r} is not one of {list(_JUDGE_FORMATS)}"
            )
        if check_echo_repeats < 2:
            raise ValueError("backend.openai_compatible.check_echo_repeats must be >= 2 (noise is a difference of repeats)")
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
        self.judge_response_format = judge_response_format
        self.check_tolerance = float(check_tolerance)
        self.check_echo_repeats = int(check_echo_repeats)
        self.echo_token_ids = bool(echo_token_ids)
        self.progress = bool(progress)
        self._key = resolve_api_key(api_key, api_key_env)
        self._key_hint = (
            f"set the {api_key_env} environment variable or the api_key in conf/local/credentials.yml"
            if api_key_env else "set the api_key in conf/local/credentials.yml"
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
        self._warned_usage = False
        if budget_usd is not None and not self.prices:
            raise ValueError("backend.openai_compatible.budget_usd needs backend.openai_compatible.prices to count the cost")

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
        if status in RETRYABLE_STATUSES or status >= 500:
            raise RetryableHTTPError(
                f"HTTP {status} from {path}: {self._scrub(response.text[:200])}",
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
                f"incomplete response body from {path} (not JSON): {self._scrub(response.text[:120])!r}"
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
        message = self._scrub(str(message)[:300])
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
                raise ConfigurationError(f"no price for model {model!r} in backend.openai_compatible.prices (needed by budget_usd)")
            return 0.0, 0.0
        return float(price.get("prompt", 0.0)), float(price.get("completion", 0.0))

    def _cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        p, c = self._price(model)
        return prompt_tokens / 1000.0 * p + completion_tokens / 1000.0 * c

    @staticmethod
    def _estimate_tokens(n_chars: int) -> int:
        # Upper estimate: ~1 token per 2 characters is above every BPE tokenizer's average for text.
        return n_chars // 2 + 16

    def _estimate(self, model: str, n_chars: int, max_completion: int, n_calls: int = 1) -> float:
        return n_calls * self._cost(model, self._estimate_tokens(n_chars), max_completion)

    def _account(self, model: str, data: Mapping[str, Any], n_chars: int, max_completion: int,
                 usage: dict[str, float]) -> tuple[int, int, float]:
        """Tokens and cost of one reply; the pre-request estimate when the reply has no ``usage``.

        Adds ``prompt_tokens``, ``completion_tokens``, ``cost_usd`` (and ``usage_estimated`` when
        estimated) to ``usage``; returns ``(prompt_tokens, completion_tokens, cost)``.
        """
        counted = _usage(data)
        if counted is None:
            pt, ct = self._estimate_tokens(n_chars), int(max_completion)
            usage["usage_estimated"] = 1.0
            if not self._warned_usage:
                self._warned_usage = True
                logger.warning("the server's replies carry no token usage: cost is counted from the "
                               "pre-request estimate (about 1 token per 2 characters + max_tokens)")
        else:
            pt, ct = counted
        cost = self._cost(model, pt, ct)
        usage.update(prompt_tokens=usage.get("prompt_tokens", 0.0) + pt,
                     completion_tokens=usage.get("completion_tokens", 0.0) + ct,
                     cost_usd=usage.get("cost_usd", 0.0) + cost)
        return pt, ct, cost

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
                    call = _Call(failure(self._scrub(str(exc))), status=FAILED)
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
            if self.echo_token_ids:  # changes the rescaled values of rows with lossy top-k maps
                spec["echo_token_ids"] = True
        return spec

    def _judge_spec(self, judge: JudgeSpec) -> dict[str, Any]:
        spec: dict[str, Any] = {**asdict(judge), "base_url": self.base_url}
        if self.judge_response_format == "none":
            spec["json_mode"] = False  # the key earlier records were made under: they stay valid
        else:
            spec["response_format"] = self.judge_response_format
        return spec

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
        usage: dict[str, float] = {"attempts": float(attempts)}
        pt, ct, cost = self._account(policy.model, data, len(prompt) + len(policy.system_prompt), policy.max_tokens, usage)
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
                if content and content[-1].get("token") == self.template.end_of_turn:
                    # vLLM returns the end-of-turn entry too; kept apart so token_logprobs are the text's.
                    usage["eot_logprob"] = token_logprobs.pop()
        usage["truncated"] = 1.0 if choice.get("finish_reason") == "length" else 0.0
        # Generation.logprob stays None: the chat API may omit the end-of-turn token and returns T=1
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

    def _echo(self, text: str, policy: PolicySpec, usage: dict[str, float]) -> tuple[_Echo, int, int, float]:
        """One echo call of ``text``; returns the verified echo, tokens counted and cost.

        Raises:
            MalformedResponseError: the reply holds no echoed log-probs, or they do not spell ``text``.
        """
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
        usage["attempts"] = usage.get("attempts", 0.0) + attempts
        pt, ct, cost = self._account(policy.model, data, len(text), 0, usage)
        return _parse_echo(data, text), pt, ct, cost

    def _scored(self, echo: _Echo, start: int, temperature: float) -> tuple[float, float, list[float]]:
        """Sum of (rescaled) log-probs of tokens ``start..end``; returns (sum, bound, raw per-token)."""
        tokens, values, tops = echo.tokens, echo.values, echo.tops
        rescale = temperature != 1.0 and not self.echo_applies_temperature
        total, bound, raw = 0.0, 0.0, []
        if start >= len(tokens):
            raise ValueError("nothing to score: the span holds no token")
        for i in range(start, len(tokens)):
            value = values[i]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"token {i} ({tokens[i]!r}) has no finite log-prob: {value!r}")
            raw.append(float(value))
            if rescale:
                top = tops[i] if i < len(tops) and isinstance(tops[i], Mapping) else None
                name = echo.raw[i] if echo.raw else tokens[i]
                estimate, half = rescale_logprob(float(value), name, top, temperature, self.vocab_size,
                                                 complete=_top_complete(top, self.top_k))
                total, bound = total + estimate, bound + half
            else:
                total += float(value)
        return total, bound, raw

    def _forced(self, prompt: str, response: str, policy: PolicySpec, ended: bool,
                usage: dict[str, float]) -> tuple[float, float, int, list[float], int, int, float]:
        """Teacher-force one reply: ``(logprob, bound, n_tokens, raw per-token, pt, ct, cost)``.

        Raises:
            ValueError: nothing to score or a token without a finite log-prob.
            MalformedResponseError: the echo is missing or does not spell the text sent.
        """
        full, start, _ = self.template.render(prompt, response, policy.system_prompt, self.with_bos, ended)
        if start == len(full):
            raise ValueError("nothing to score: empty response cut at max_tokens (no end of turn)")
        echo, pt, ct, cost = self._echo(full, policy, usage)
        first = locate_span(echo.tokens, full, start, echo.first)
        if first is not None:
            usage["two_call"] = 0.0
            if self._needs_id_echo(echo, first, policy.temperature):
                echo, pt2, ct2, cost2 = self._id_echo(full, policy, usage, echo)
                pt, ct, cost = pt + pt2, ct + ct2, cost + cost2
            logprob, bound, raw = self._scored(echo, first, policy.temperature)
            return logprob, bound, len(echo.tokens) - first, raw, pt, ct, cost
        # The boundary falls inside a token: difference of the two texts' totals over the tokens
        # after their common prefix (identical contexts give identical log-probs).
        usage["two_call"] = 1.0
        head, pt2, ct2, cost2 = self._echo(full[:start], policy, usage)
        # The first token of a text has no log-prob; after a server-added BOS it has one.
        common = max(echo.first, 1, _common_prefix(echo, head))
        total_full, bound_full, raw = self._scored(echo, common, policy.temperature)
        total_head, bound_head, _ = (0.0, 0.0, []) if common >= len(head.tokens) else self._scored(head, common, policy.temperature)
        return (total_full - total_head, bound_full + bound_head, len(echo.tokens) - common, raw,
                pt + pt2, ct + ct2, cost + cost2)

    def _needs_id_echo(self, echo: _Echo, first: int, temperature: float) -> bool:
        """Is a second echo keyed by token ids worth sending (``echo_token_ids`` and lossy top-k)?"""
        if not self.echo_token_ids or temperature == 1.0 or self.echo_applies_temperature:
            return False
        return any(not _top_complete(top if isinstance(top, Mapping) else None, self.top_k) for top in echo.tops[first:])

    def _id_echo(self, text: str, policy: PolicySpec, usage: dict[str, float], text_echo: _Echo) -> tuple[_Echo, int, int, float]:
        """The same echo with tokens and top-k keyed by token id (vLLM's ``return_tokens_as_token_ids``).

        Positions come from the text echo (already verified to spell the text); the id echo must
        have as many tokens and the same log-probs, otherwise it is not the same tokenisation.

        Raises:
            MalformedResponseError: the id echo does not line up with the text echo.
        """
        body = {"model": policy.model, "prompt": text, "echo": True, "max_tokens": 0, "logprobs": max(1, self.top_k),
                "temperature": policy.temperature, "top_p": 1.0, "return_tokens_as_token_ids": True}
        data, attempts = self._post("/completions", body)
        usage["attempts"] = usage.get("attempts", 0.0) + attempts
        usage["id_echo"] = 1.0
        pt, ct, cost = self._account(policy.model, data, len(text), 0, usage)
        try:
            block = data["choices"][0]["logprobs"]
            ids, values, tops = block["tokens"], block["token_logprobs"], block["top_logprobs"]
        except (KeyError, IndexError, TypeError) as exc:
            raise MalformedResponseError(f"echo with token ids: no logprobs block ({type(exc).__name__})") from None
        same = len(ids) == len(text_echo.tokens) and all(
            (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-6)
            for a, b in zip(values, text_echo.values)
        )
        if not same:
            raise MalformedResponseError("echo with token ids does not line up with the text echo (different tokenisation)")
        return _Echo(text_echo.tokens, list(values), list(tops), text_echo.first, list(ids)), pt, ct, cost

    def _teacher_force_call(self, prompt: str, response: str, policy: PolicySpec, ended: bool) -> _Call:
        usage: dict[str, float] = {"ended": float(ended)}
        try:
            logprob, bound, n_tokens, _, pt, ct, cost = self._forced(prompt, response, policy, ended, usage)
        except MalformedResponseError as exc:
            error = f"teacher forcing failed: {self._scrub(str(exc))}"
            pt, ct, cost = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), usage.get("cost_usd", 0.0)
            return _Call(TeacherForced(None, error=error, usage=usage), FAILED, pt, ct, cost)
        except ValueError as exc:
            pt, ct, cost = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), usage.get("cost_usd", 0.0)
            return _Call(TeacherForced(None, error=f"teacher forcing failed: {exc}", usage=usage), DONE, pt, ct, cost)
        if not math.isfinite(logprob) or logprob > 0.0:
            error = f"refused teacher-forced log-prob {logprob!r}: must be finite and <= 0"
            return _Call(TeacherForced(None, n_tokens=n_tokens, error=error, usage=usage), DONE, pt, ct, cost)
        return _Call(TeacherForced(logprob, n_tokens=n_tokens, tail_mass_bound=bound, usage=usage), DONE, pt, ct, cost)

    def teacher_force(self, prompt: str, response: str, policy: PolicySpec, ended: bool = True) -> TeacherForced:
        """log P_policy(response | prompt), end of turn included when ``ended`` (recorded in the store)."""
        return self.teacher_force_batch([prompt], [response], policy, [ended])[0]

    def teacher_force_batch(self, prompts: list[str], responses: list[str], policy: PolicySpec,
                            ended: Sequence[bool] | None = None) -> list[TeacherForced]:
        """Teacher-force many pairs concurrently; results in input order.

        Args:
            prompts: User prompts.
            responses: Replies to score.
            policy: The scoring policy.
            ended: Per reply, whether it ended with the end-of-turn token (``False``: cut at
                ``max_tokens``; no end of turn is scored). ``None``: every reply ended.
        """
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        flags = [True] * len(prompts) if ended is None else [bool(e) for e in ended]
        if len(flags) != len(prompts):
            raise ValueError("ended and prompts differ in length")
        spec = self._policy_spec(policy, "teacher_force")
        # The key names the case: a value computed with the end of turn is never reused without it.
        keys = [make_key("teacher_force", spec, p, f"{sha256(r)}#ended={int(e)}")
                for p, r, e in zip(prompts, responses, flags)]
        tasks = [(lambda p=p, r=r, e=e: self._teacher_force_call(p, r, policy, e))
                 for p, r, e in zip(prompts, responses, flags)]
        estimates = [
            (policy.model, self._estimate(policy.model, len(p) + len(r) + len(policy.system_prompt) + 200, 0, n_calls=2))
            for p, r in zip(prompts, responses)
        ]
        return self._run("teacher_force", policy.name, keys, tasks, estimates,
                         lambda e: TeacherForced(None, error=e))

    # ---------------------------------------------------------------- echo noise

    def _echo_repeat_call(self, prompt: str, response: str, policy: PolicySpec, ended: bool) -> _Call:
        usage: dict[str, float] = {}
        full, start, _ = self.template.render(prompt, response, policy.system_prompt, self.with_bos, ended)
        try:
            echo, pt, ct, cost = self._echo(full, policy, usage)
        except MalformedResponseError as exc:
            return _Call(EchoRepeat(None, error=self._scrub(str(exc)), usage=usage), FAILED)
        first = locate_span(echo.tokens, full, start, echo.first)
        values = [float(v) for v in echo.values[first if first is not None else max(1, echo.first):] if _finite(v)]
        return _Call(EchoRepeat(values, usage=usage), DONE, pt, ct, cost)

    def echo_noise(self, prompts: Sequence[str], responses: Sequence[str], policy: PolicySpec,
                   ended: Sequence[bool] | None = None, repeats: int | None = None) -> dict[str, Any]:
        """Spread of identical T=1 echo requests over the responses' tokens (nats per token).

        Each response is echoed ``repeats`` times (default ``check_echo_repeats``) at T=1; the
        requests are recorded like every other call, so a rerun sends none of them again.

        Returns:
            ``echo_noise_rows``, ``echo_repeats``, ``echo_noise_mean`` (mean |difference| between
            consecutive repeats over all tokens) and ``echo_noise_max`` (nats per token); the two
            values are ``None`` when no repeat pair could be compared.
        """
        repeats = int(repeats or self.check_echo_repeats)
        ended = [True] * len(prompts) if ended is None else [bool(e) for e in ended]
        t1 = PolicySpec(**{**asdict(policy), "temperature": 1.0})
        spec = self._policy_spec(t1, "teacher_force")
        items = [(i, r) for i in range(len(prompts)) for r in range(repeats)]
        keys = [make_key("echo_repeat", spec, prompts[i], f"{sha256(responses[i])}#ended={int(ended[i])}#rep{r}")
                for i, r in items]
        tasks = [(lambda i=i: self._echo_repeat_call(prompts[i], responses[i], t1, ended[i])) for i, _ in items]
        estimates = [(t1.model, self._estimate(t1.model, len(prompts[i]) + len(responses[i]) + 200, 0)) for i, _ in items]
        results = self._run("echo_repeat", policy.name, keys, tasks, estimates, lambda e: EchoRepeat(None, error=e))
        diffs: list[float] = []
        for i in range(len(prompts)):
            runs = [results[j].values for j, (row, _) in enumerate(items) if row == i and results[j].values]
            for a, b in zip(runs, runs[1:]):
                if len(a) == len(b):
                    diffs.extend(abs(x - y) for x, y in zip(a, b))
        return {
            "echo_noise_rows": len(prompts),
            "echo_repeats": repeats,
            "echo_noise_mean": float(np.mean(diffs)) if diffs else None,
            "echo_noise_max": float(np.max(diffs)) if diffs else None,
        }

    # ---------------------------------------------------------------- judging

    def _response_format(self) -> dict[str, Any] | None:
        if self.judge_response_format == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "judge_score", "schema": JUDGE_SCHEMA}}
        if self.judge_response_format == "json_object":
            return {"type": "json_object"}
        return None

    def _judge_call(self, prompt: str, response: str, judge: JudgeSpec) -> _Call:
        user = f"[User prompt]\n{prompt}\n\n[AI assistant's response]\n{response}"
        body: dict[str, Any] = {
            "model": judge.model,
            "messages": self._messages(judge.rubric, user),
            "temperature": judge.temperature,
            "top_p": 1.0,
            "max_tokens": judge.max_tokens,
        }
        response_format = self._response_format()
        if response_format is not None:
            body["response_format"] = response_format
        data, attempts = self._post("/chat/completions", body)
        usage: dict[str, float] = {"attempts": float(attempts)}
        pt, ct, cost = self._account(judge.model, data, len(user) + len(judge.rubric), judge.max_tokens, usage)
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
        rescaling, with the end of turn only when the reply ended. Whether the chat endpoint's
        log-probs include the end-of-turn entry is detected from the data (its last token's text is
        the template's end of turn, or the counts match only with it; vLLM's include it, OpenAI's
        do not). The sum over the tokens both sides cover must match within ``check_tolerance``
        nats per token on average. A mismatch usually means a wrong ``chat_template``, a BOS
        setting (``with_bos``) or a provider that returns processed log-probs. The echo's own noise
        is measured with ``check_echo_repeats`` identical T=1 calls, and for T != 1 whether the
        server applies the temperature to echo log-probs is decided by the 1/T signature.
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
            ended = not gen.usage.get("truncated")
            try:
                _, _, _, raw, *_ = self._forced(prompt, gen.text, t1, ended, {})
            except ConfigurationError as exc:
                return CheckReport(policy.name, policy.model, "ERROR", [str(exc)])
            except (MalformedResponseError, *_RETRYABLE) as exc:
                return CheckReport(policy.name, policy.model, "ERROR", [self._scrub(f"echo failed: {exc}")])
            except ValueError as exc:
                report.verdict = "FAIL"
                report.details.append(f"teacher forcing failed: {exc}")
                continue
            generated = list(gen.token_logprobs)
            forced_part = raw
            if ended:
                eot = self._chat_eot(gen, len(generated), len(raw))
                if eot is not None:
                    report.chat_includes_eot = eot if report.chat_includes_eot is None else report.chat_includes_eot and eot
                if "eot_logprob" in gen.usage:
                    generated.append(gen.usage["eot_logprob"])
                elif not eot:
                    forced_part = raw[:-1]  # the chat API omitted the end of turn: compare without it
            forced, total = sum(forced_part), sum(generated)
            n = max(1, len(generated))
            diff = abs(forced - total) / n
            worst = max(worst, diff)
            ok = diff <= self.check_tolerance and len(generated) == len(forced_part)
            report.details.append(
                f"{'ok ' if ok else 'BAD'} tokens gen={len(generated)} forced={len(forced_part)} "
                f"({'ended' if ended else 'cut at max_tokens'}) sum gen={total:.3f} forced={forced:.3f} "
                f"|diff|/token={diff:.4f}"
            )
            if not ok:
                report.verdict = "FAIL"
        report.max_abs_diff_per_token = worst
        if report.chat_includes_eot is not None:
            report.details.append(
                f"chat log-probs {'include' if report.chat_includes_eot else 'omit'} the end-of-turn entry (detected)"
            )
        done = [(p, g) for p, g in zip(prompts, gens) if not g.error]
        if report.verdict != "ERROR" and done:
            prompt, gen = done[0]
            self._check_echo_noise(t1, prompt, gen, report)
            if policy.temperature != 1.0 and report.verdict != "ERROR":
                self._check_echo_temperature(policy, t1, prompt, gen, report)
        return report

    def _chat_eot(self, gen: Generation, n_generated: int, n_forced: int) -> bool | None:
        """Does the chat endpoint's log-prob list hold the end-of-turn entry (reply ended)?"""
        if "eot_logprob" in gen.usage:
            return True  # its last token's text was the template's end of turn
        if n_generated == n_forced:
            return True  # counts match only with it (its text differs from the template's)
        if n_generated == n_forced - 1:
            return False
        return None

    def _echo_rows(self, text: str, policy: PolicySpec) -> _Echo:
        return self._echo(text, policy, {})[0]

    def _check_echo_noise(self, t1: PolicySpec, prompt: str, gen: Generation, report: CheckReport) -> None:
        """Repeat one T=1 echo and report the per-token spread (nats) of identical requests."""
        full, _, _ = self.template.render(prompt, gen.text, t1.system_prompt, self.with_bos,
                                          not gen.usage.get("truncated"))
        try:
            echoes = [self._echo_rows(full, t1) for _ in range(self.check_echo_repeats)]
        except (ConfigurationError, MalformedResponseError, *_RETRYABLE) as exc:
            report.verdict = "ERROR"
            report.details.append(self._scrub(f"echo for the noise measurement failed: {exc}"))
            return
        diffs = []
        for a, b in zip(echoes, echoes[1:]):
            diffs.extend(abs(x - y) for x, y in zip(a.values, b.values) if _finite(x) and _finite(y))
        if diffs:
            report.echo_noise_mean = float(np.mean(diffs))
            report.echo_noise_max = float(np.max(diffs))
            report.details.append(
                f"echo noise over {self.check_echo_repeats} identical T=1 calls: mean |diff| "
                f"{report.echo_noise_mean:.2e} nats/token, max {report.echo_noise_max:.2e}"
            )

    def _check_echo_temperature(self, policy: PolicySpec, t1: PolicySpec, prompt: str, gen: Generation,
                                report: CheckReport) -> None:
        """Does the provider apply the sent temperature to echo log-probs? Must match the option.

        At temperature T the log-probs of one position relate to those at T=1 as l/T - c (c
        constant within the position), so the slope of the T-echo's log-probs on the T=1 echo's,
        fitted within positions over the top-k entries, is 1/T when the server applies T and 1 when
        it does not; noise does not move the slope. Without top-k entries the mean |difference|
        per token is compared with the measured noise instead.
        """
        full, _, _ = self.template.render(prompt, gen.text, policy.system_prompt, self.with_bos,
                                          not gen.usage.get("truncated"))
        try:
            at_t, at_1 = self._echo_rows(full, policy), self._echo_rows(full, t1)
        except (ConfigurationError, MalformedResponseError, *_RETRYABLE) as exc:
            report.verdict = "ERROR"
            report.details.append(self._scrub(f"echo at T={policy.temperature} failed: {exc}"))
            return
        inverse = 1.0 / policy.temperature
        slope = _within_position_slope(at_1.tops, at_t.tops)
        if slope is not None:
            report.echo_temperature_slope = slope
            applied = abs(slope - inverse) < abs(slope - 1.0)
            how = f"slope of T-echo on T=1 echo {slope:.3f} (1/T = {inverse:.3f}, no temperature = 1)"
        else:
            diffs = [abs(a - b) for a, b in zip(at_t.values, at_1.values) if _finite(a) and _finite(b)]
            floor = 3.0 * (report.echo_noise_max or 0.0) + 1e-6
            applied = bool(diffs) and float(np.mean(diffs)) > floor
            how = f"mean |diff| {np.mean(diffs) if diffs else float('nan'):.2e} vs noise floor {floor:.2e} (no top-k to fit 1/T)"
        report.details.append(f"echo log-probs {'apply' if applied else 'do not apply'} the temperature: {how} "
                              f"(echo_applies_temperature={self.echo_applies_temperature})")
        if applied != self.echo_applies_temperature:
            report.verdict = "FAIL"
            report.details.append(f"set backend.openai_compatible.echo_applies_temperature: {str(applied).lower()}")


def _usage(data: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` from the reply's ``usage``; ``None`` when absent."""
    usage = data.get("usage")
    if not isinstance(usage, Mapping) or usage.get("prompt_tokens") is None:
        return None
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return None
