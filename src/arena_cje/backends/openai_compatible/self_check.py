"""The self-check of the OpenAI-compatible backend: does teacher forcing reproduce generation?

:func:`run_self_check` (what ``OpenAICompatibleBackend.self_check`` and ``kedro check-models`` run)
generates a few replies, teacher-forces them at T=1 and compares the two sums of log-probs per
token; it detects whether the chat endpoint's log-probs hold the end-of-turn entry, measures the
echo's own noise over identical requests, and for T != 1 decides from the 1/T signature whether
the server applies the temperature to echo log-probs. The verdict and its figures are a
:class:`CheckReport`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from arena_cje.backends.base import Generation, PolicySpec
from arena_cje.backends.openai_compatible.echo import _Echo
from arena_cje.backends.openai_compatible.errors import (
    _RETRYABLE,
    BudgetExceededError,
    ConfigurationError,
    MalformedResponseError,
)
from arena_cje.backends.openai_compatible.temperature import _finite, _within_position_slope

if TYPE_CHECKING:
    from arena_cje.backends.openai_compatible.backend import OpenAICompatibleBackend


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


def run_self_check(backend: OpenAICompatibleBackend, policy: PolicySpec, prompts: Sequence[str], seed: int = 0) -> CheckReport:
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
        gens = backend._generate_batch(list(prompts), policy, [seed + i for i in range(len(prompts))], use_store=False)
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
            _, _, _, raw, *_ = backend._scorer.forced(prompt, gen.text, t1, ended, {})
        except ConfigurationError as exc:
            return CheckReport(policy.name, policy.model, "ERROR", [str(exc)])
        except (MalformedResponseError, *_RETRYABLE) as exc:
            return CheckReport(policy.name, policy.model, "ERROR", [backend._client.scrub(f"echo failed: {exc}")])
        except ValueError as exc:
            report.verdict = "FAIL"
            report.details.append(f"teacher forcing failed: {exc}")
            continue
        generated = list(gen.token_logprobs)
        forced_part = raw
        if ended:
            eot = chat_includes_eot(gen, len(generated), len(raw))
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
        ok = diff <= backend.check_tolerance and len(generated) == len(forced_part)
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
        check_echo_noise(backend, t1, prompt, gen, report)
        if policy.temperature != 1.0 and report.verdict != "ERROR":
            check_echo_temperature(backend, policy, t1, prompt, gen, report)
    return report


def chat_includes_eot(gen: Generation, n_generated: int, n_forced: int) -> bool | None:
    """Does the chat endpoint's log-prob list hold the end-of-turn entry (reply ended)?"""
    if "eot_logprob" in gen.usage:
        return True  # its last token's text was the template's end of turn
    if n_generated == n_forced:
        return True  # counts match only with it (its text differs from the template's)
    if n_generated == n_forced - 1:
        return False
    return None


def _echo_rows(backend: OpenAICompatibleBackend, text: str, policy: PolicySpec) -> _Echo:
    return backend._scorer.echo(text, policy, {})[0]


def check_echo_noise(backend: OpenAICompatibleBackend, t1: PolicySpec, prompt: str, gen: Generation, report: CheckReport) -> None:
    """Repeat one T=1 echo and report the per-token spread (nats) of identical requests."""
    full, _, _ = backend.template.render(prompt, gen.text, t1.system_prompt, backend.with_bos,
                                         not gen.usage.get("truncated"))
    try:
        echoes = [_echo_rows(backend, full, t1) for _ in range(backend.check_echo_repeats)]
    except (ConfigurationError, MalformedResponseError, *_RETRYABLE) as exc:
        report.verdict = "ERROR"
        report.details.append(backend._client.scrub(f"echo for the noise measurement failed: {exc}"))
        return
    diffs = []
    for a, b in zip(echoes, echoes[1:]):
        diffs.extend(abs(x - y) for x, y in zip(a.values, b.values) if _finite(x) and _finite(y))
    if diffs:
        report.echo_noise_mean = float(np.mean(diffs))
        report.echo_noise_max = float(np.max(diffs))
        report.details.append(
            f"echo noise over {backend.check_echo_repeats} identical T=1 calls: mean |diff| "
            f"{report.echo_noise_mean:.2e} nats/token, max {report.echo_noise_max:.2e}"
        )


def check_echo_temperature(backend: OpenAICompatibleBackend, policy: PolicySpec, t1: PolicySpec, prompt: str,
                           gen: Generation, report: CheckReport) -> None:
    """Does the provider apply the sent temperature to echo log-probs? Must match the option.

    At temperature T the log-probs of one position relate to those at T=1 as l/T - c (c
    constant within the position), so the slope of the T-echo's log-probs on the T=1 echo's,
    fitted within positions over the top-k entries, is 1/T when the server applies T and 1 when
    it does not; noise does not move the slope. Without top-k entries the mean |difference|
    per token is compared with the measured noise instead.
    """
    full, _, _ = backend.template.render(prompt, gen.text, policy.system_prompt, backend.with_bos,
                                         not gen.usage.get("truncated"))
    try:
        at_t, at_1 = _echo_rows(backend, full, policy), _echo_rows(backend, full, t1)
    except (ConfigurationError, MalformedResponseError, *_RETRYABLE) as exc:
        report.verdict = "ERROR"
        report.details.append(backend._client.scrub(f"echo at T={policy.temperature} failed: {exc}"))
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
                          f"(echo_applies_temperature={backend.echo_applies_temperature})")
    if applied != backend.echo_applies_temperature:
        report.verdict = "FAIL"
        report.details.append(f"set backend.openai_compatible.echo_applies_temperature: {str(applied).lower()}")
