"""The backend protocol: how text, log-probabilities and judge scores are produced.

A backend knows nothing about pipelines. Every method returns a result object; failures are
*recorded* in the result's ``error`` field with ``None`` for the missing value, never turned into
a default number (a log-prob of 0.0 means probability one; a judge score of 0.5 is a real score).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class PolicySpec:
    """One policy: a model plus its decoding settings and system prompt.

    Attributes:
        name: Policy name as used in every table (``policy`` column), e.g. ``pi_hot``.
        model: Model identifier understood by the backend.
        temperature: Sampling temperature; teacher forcing scores under the same temperature.
        system_prompt: System prompt ("" for none).
        max_tokens: Maximum number of generated tokens.
        top_p: Always 1.0 for CJE: nucleus truncation makes log-probs disagree with sampling.
    """

    name: str
    model: str = "default"
    temperature: float = 1.0
    system_prompt: str = ""
    max_tokens: int = 256
    top_p: float = 1.0

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> "PolicySpec":
        """Build a spec from a ``policies.<name>`` parameter block (unknown keys are rejected)."""
        merged = {**(defaults or {}), **dict(params)}
        allowed = {f for f in cls.__dataclass_fields__ if f != "name"}
        unknown = set(merged) - allowed - {"role"}
        if unknown:
            raise ValueError(f"policies.{name}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(name=name, **{k: v for k, v in merged.items() if k in allowed})


@dataclass(frozen=True)
class JudgeSpec:
    """The LLM judge: model, temperature (0), the rubric actually sent and its score scale.

    ``scale = (min, max)``: the bounded scale the judge answers on (``judge.scale`` in the
    parameters; e.g. ``[0, 10]`` or ``[1, 5]``); scores are stored on it and rescaled to [0, 1]
    by estimation (``arena_cje.cje.scale``).
    """

    model: str = "default"
    temperature: float = 0.0
    rubric: str = ""
    max_tokens: int = 64
    scale: tuple[float, float] = (0.0, 1.0)


@dataclass
class Generation:
    """A generated response.

    Attributes:
        text: Response text ("" when generation failed).
        logprob: Sum of the sampled tokens' log-probs under the policy (incl. end of turn),
            or ``None`` when the backend does not return them or generation failed.
        token_logprobs: Per-token log-probs when available.
        n_tokens: Number of response tokens (incl. end of turn) or ``None``.
        error: Why the result is missing or partial; ``None`` when fine.
        usage: Token usage / cost bookkeeping (free-form, e.g. ``{"prompt_tokens": 12}``).
    """

    text: str
    logprob: float | None = None
    token_logprobs: list[float] | None = None
    n_tokens: int | None = None
    error: str | None = None
    usage: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TeacherForced:
    """Log-probability of a given response under a policy (teacher forcing).

    Attributes:
        logprob: Sum over the response tokens, end-of-turn token included; ``None`` on failure.
        n_tokens: Number of scored tokens.
        error: Why ``logprob`` is missing.
        tail_mass_bound: Upper bound on the approximation error of a temperature-rescaled
            log-prob computed from top-k log-probs (0 when exact).
    """

    logprob: float | None
    n_tokens: int | None = None
    error: str | None = None
    tail_mass_bound: float = 0.0
    usage: dict[str, float] = field(default_factory=dict)


@dataclass
class EchoRepeat:
    """Raw T=1 echo log-probs of one response's tokens, from one of several identical requests.

    Identical requests to a deterministic server give identical values; the spread between
    repeats is the API's own noise, which enters every importance weight.
    """

    values: list[float] | None
    error: str | None = None
    usage: dict[str, float] = field(default_factory=dict)


@dataclass
class Judgement:
    """A judge score on the 0–1 scale, or ``None`` with the raw text and the reason."""

    score: float | None
    raw: str = ""
    error: str | None = None
    usage: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What every backend provides. ``seed`` makes sampling reproducible where possible."""

    def generate(self, prompt: str, policy: PolicySpec, seed: int) -> Generation:
        """Sample one response of ``policy`` to ``prompt`` (with its log-probs)."""
        ...

    def teacher_force(self, prompt: str, response: str, policy: PolicySpec) -> TeacherForced:
        """Score ``response`` under ``policy``: log P_policy(response | prompt), end of turn included.

        Backends also accept ``ended: bool = True``: ``False`` for a response cut at ``max_tokens``,
        whose log-prob has no end-of-turn term (it never produced one).
        """
        ...

    def judge(self, prompt: str, response: str, judge: JudgeSpec) -> Judgement:
        """Score a (prompt, response) pair with the judge on 0–1."""
        ...


@runtime_checkable
class SimulatedTruth(Protocol):
    """Extra powers of a simulated world: exact quality, true policy values and fake raters."""

    def true_quality(self, prompt: str, response: str) -> float:
        """The true quality Y(prompt, response) in [0, 1]."""
        ...

    def true_value(self, policy: PolicySpec, prompts: list[str]) -> float:
        """V(policy) = E[Y] over ``prompts`` (uniform) and the policy's responses."""
        ...

    def rate(self, prompt: str, response: str, n_votes: int, seed: int) -> list[int]:
        """Integer 0–10 votes of ``n_votes`` simulated human raters."""
        ...


def generate_batch(backend: Backend, prompts: list[str], policy: PolicySpec, seeds: list[int]) -> list[Generation]:
    """Generate for many prompts, using the backend's own batch method when it has one."""
    if hasattr(backend, "generate_batch"):
        return backend.generate_batch(prompts, policy, seeds)
    return [backend.generate(p, policy, s) for p, s in zip(prompts, seeds, strict=True)]


def teacher_force_batch(
    backend: Backend,
    prompts: list[str],
    responses: list[str],
    policy: PolicySpec,
    ended: Sequence[bool] | None = None,
) -> list[TeacherForced]:
    """Teacher-force many (prompt, response) pairs, batched where the backend supports it.

    Args:
        backend: The backend.
        prompts: Prompts.
        responses: Responses to score.
        policy: The scoring policy.
        ended: Per response, whether it ended with the end-of-turn token (``False``: cut at
            ``max_tokens``, so no end-of-turn term is scored); ``None``: every response ended.
    """
    if ended is not None and len(ended) != len(prompts):
        raise ValueError(f"{len(ended)} ended flags for {len(prompts)} prompts")
    if hasattr(backend, "teacher_force_batch"):
        if ended is None:
            return backend.teacher_force_batch(prompts, responses, policy)
        return backend.teacher_force_batch(prompts, responses, policy, ended=list(ended))
    if ended is None:
        return [backend.teacher_force(p, r, policy) for p, r in zip(prompts, responses, strict=True)]
    return [backend.teacher_force(p, r, policy, ended=bool(e))  # type: ignore[call-arg]
            for p, r, e in zip(prompts, responses, ended, strict=True)]


def judge_batch(backend: Backend, prompts: list[str], responses: list[str], judge: JudgeSpec) -> list[Judgement]:
    """Judge many (prompt, response) pairs, batched where the backend supports it."""
    if hasattr(backend, "judge_batch"):
        return backend.judge_batch(prompts, responses, judge)
    return [backend.judge(p, r, judge) for p, r in zip(prompts, responses, strict=True)]
