"""The OpenAI-compatible backend: generation, teacher forcing and judging over HTTP.

* Generation: ``POST {base_url}/chat/completions`` with the policy's system prompt, temperature,
  ``top_p=1``, ``max_tokens``, ``seed`` and per-token log-probs. ``finish_reason: "length"`` marks
  a reply cut at ``max_tokens`` (``usage["truncated"]``).
* Teacher forcing: ``POST {base_url}/completions`` with ``echo=True``, ``max_tokens=0`` and
  ``logprobs=k`` on the conversation written with the model family's chat template
  (:mod:`arena_cje.backends.templates`), the end-of-turn marker appended only when the reply ended
  (``ended``; a reply cut at ``max_tokens`` never produced it), scored by :mod:`.forcing` (the
  response's tokens located in the echo by their text, :mod:`.echo`, and rescaled to the policy's
  temperature with an error bound, :mod:`.temperature`). llama.cpp's server rejects ``echo``:
  that is a :class:`~arena_cje.backends.openai_compatible.errors.ConfigurationError` saying it
  cannot teacher-force.
* Judging: ``POST {base_url}/chat/completions`` with the rubric as system message, T=0, the score
  parsed from JSON with a tolerant fallback; with ``judge_response_format: json_schema`` the
  server's structured output (vLLM, Fireworks) forces ``{"score": <0..1>, ...}``.

The request layer (session, rate limit, retries, error classification): :mod:`.client`; the
errors: :mod:`.errors`; the batch engine (thread pool, request record, budget): :mod:`.batch`;
prices and token accounting: :mod:`.cost`; API key, rate limiter and budget cap: :mod:`.access`;
the self-check: :mod:`.self_check`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from arena_cje.backends.base import EchoRepeat, Generation, JudgeSpec, Judgement, PolicySpec, TeacherForced
from arena_cje.backends.judge_parsing import parse_judge_score
from arena_cje.backends.openai_compatible.access import resolve_api_key
from arena_cje.backends.openai_compatible.batch import BatchRunner, Call
from arena_cje.backends.openai_compatible.client import HTTPClient
from arena_cje.backends.openai_compatible.cost import CostMeter
from arena_cje.backends.openai_compatible.forcing import EchoScorer
from arena_cje.backends.openai_compatible.echo import locate_span
from arena_cje.backends.openai_compatible.errors import MalformedResponseError
from arena_cje.backends.openai_compatible.self_check import CheckReport, run_self_check
from arena_cje.backends.openai_compatible.temperature import _finite
from arena_cje.backends.store import DONE, FAILED, RequestStore, make_key, sha256
from arena_cje.backends.templates import ChatTemplate, get_template

logger = logging.getLogger(__name__)

DEFAULT_STORE_PATH = "data/02_intermediate/api_requests.sqlite"


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
        self.top_k = int(top_k_logprobs)
        self.vocab_size = int(vocab_size)
        self.echo_applies_temperature = bool(echo_applies_temperature)
        self.judge_rescore_fraction = float(judge_rescore_fraction)
        self.judge_rescore_seed = int(judge_rescore_seed)
        self.judge_response_format = judge_response_format
        self.check_tolerance = float(check_tolerance)
        self.check_echo_repeats = int(check_echo_repeats)
        self.echo_token_ids = bool(echo_token_ids)
        self.progress = bool(progress)
        key = resolve_api_key(api_key, api_key_env)
        key_hint = (
            f"set the {api_key_env} environment variable or the api_key in conf/local/credentials.yml"
            if api_key_env else "set the api_key in conf/local/credentials.yml"
        )
        self._client = HTTPClient(self.base_url, key, key_hint, self.concurrency, requests_per_minute, timeout,
                                  max_retries, backoff_initial, backoff_max)
        self.store = RequestStore(store_path) if store_path else None
        self._meter = CostMeter(prices, budget_usd, self.store.total_cost() if self.store else 0.0)
        self._scorer = EchoScorer(self._client, self._meter, self.template, self.with_bos, self.top_k, self.vocab_size,
                                  self.echo_applies_temperature, self.echo_token_ids)
        self._runner = BatchRunner(self.store, self._meter.budget, self._client.scrub, self.concurrency,
                                   self._client.max_retries, self.progress)
        if budget_usd is not None and not self._meter.prices:
            raise ValueError("backend.openai_compatible.budget_usd needs backend.openai_compatible.prices to count the cost")

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleBackend(base_url={self.base_url!r}, template={self.template.name!r})"

    def close(self) -> None:
        """Close the HTTP session and the store."""
        self._client.close()
        if self.store is not None:
            self.store.close()

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

    def _generate_call(self, prompt: str, policy: PolicySpec, seed: int) -> Call:
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
        data, attempts = self._client.post("/chat/completions", body)
        usage: dict[str, float] = {"attempts": float(attempts)}
        pt, ct, cost = self._meter.account(policy.model, data, len(prompt) + len(policy.system_prompt), policy.max_tokens, usage)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("message.content is not a string")
        except (KeyError, IndexError, TypeError) as exc:
            error = f"malformed chat completion: {type(exc).__name__}: {exc}"
            return Call(Generation(text="", error=error, usage=usage), FAILED, pt, ct, cost)
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
        return Call(result, DONE, pt, ct, cost)

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
            (policy.model, self._meter.estimate(policy.model, len(p) + len(policy.system_prompt), policy.max_tokens))
            for p in prompts
        ]
        return self._runner.run("generate", policy.name, keys, tasks, estimates,
                         lambda e: Generation(text="", error=e), use_store=use_store)

    # ---------------------------------------------------------------- teacher forcing

    def _teacher_force_call(self, prompt: str, response: str, policy: PolicySpec, ended: bool) -> Call:
        usage: dict[str, float] = {"ended": float(ended)}
        try:
            logprob, bound, n_tokens, _, pt, ct, cost = self._scorer.forced(prompt, response, policy, ended, usage)
        except MalformedResponseError as exc:
            error = f"teacher forcing failed: {self._client.scrub(str(exc))}"
            pt, ct, cost = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), usage.get("cost_usd", 0.0)
            return Call(TeacherForced(None, error=error, usage=usage), FAILED, pt, ct, cost)
        except ValueError as exc:
            pt, ct, cost = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), usage.get("cost_usd", 0.0)
            return Call(TeacherForced(None, error=f"teacher forcing failed: {exc}", usage=usage), DONE, pt, ct, cost)
        if not math.isfinite(logprob) or logprob > 0.0:
            error = f"refused teacher-forced log-prob {logprob!r}: must be finite and <= 0"
            return Call(TeacherForced(None, n_tokens=n_tokens, error=error, usage=usage), DONE, pt, ct, cost)
        return Call(TeacherForced(logprob, n_tokens=n_tokens, tail_mass_bound=bound, usage=usage), DONE, pt, ct, cost)

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
            (policy.model, self._meter.estimate(policy.model, len(p) + len(r) + len(policy.system_prompt) + 200, 0, n_calls=2))
            for p, r in zip(prompts, responses)
        ]
        return self._runner.run("teacher_force", policy.name, keys, tasks, estimates,
                         lambda e: TeacherForced(None, error=e))

    # ---------------------------------------------------------------- echo noise

    def _echo_repeat_call(self, prompt: str, response: str, policy: PolicySpec, ended: bool) -> Call:
        usage: dict[str, float] = {}
        full, start, _ = self.template.render(prompt, response, policy.system_prompt, self.with_bos, ended)
        try:
            echo, pt, ct, cost = self._scorer.echo(full, policy, usage)
        except MalformedResponseError as exc:
            return Call(EchoRepeat(None, error=self._client.scrub(str(exc)), usage=usage), FAILED)
        first = locate_span(echo.tokens, full, start, echo.first)
        values = [float(v) for v in echo.values[first if first is not None else max(1, echo.first):] if _finite(v)]
        return Call(EchoRepeat(values, usage=usage), DONE, pt, ct, cost)

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
        estimates = [(t1.model, self._meter.estimate(t1.model, len(prompts[i]) + len(responses[i]) + 200, 0)) for i, _ in items]
        results = self._runner.run("echo_repeat", policy.name, keys, tasks, estimates, lambda e: EchoRepeat(None, error=e))
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

    def _judge_call(self, prompt: str, response: str, judge: JudgeSpec) -> Call:
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
        data, attempts = self._client.post("/chat/completions", body)
        usage: dict[str, float] = {"attempts": float(attempts)}
        pt, ct, cost = self._meter.account(judge.model, data, len(user) + len(judge.rubric), judge.max_tokens, usage)
        try:
            raw = data["choices"][0]["message"]["content"]
            if raw is None:
                raw = ""  # e.g. a refusal carried elsewhere: no score
            if not isinstance(raw, str):
                raise TypeError("message.content is not a string")
        except (KeyError, IndexError, TypeError) as exc:
            error = f"malformed chat completion: {type(exc).__name__}: {exc}"
            return Call(Judgement(None, error=error, usage=usage), FAILED, pt, ct, cost)
        score, error = parse_judge_score(raw, judge.scale)
        return Call(Judgement(score, raw=raw, error=error, usage=usage), DONE, pt, ct, cost)

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
                (judge.model, self._meter.estimate(judge.model, len(prompts[i]) + len(responses[i]) + len(judge.rubric) + 50,
                                             judge.max_tokens))
                for i in indices
            ]
            return self._runner.run("judge", label, keys, tasks, estimates, lambda e: Judgement(None, error=e))

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

        See :func:`~arena_cje.backends.openai_compatible.self_check.run_self_check`.
        """
        return run_self_check(self, policy, prompts, seed)
