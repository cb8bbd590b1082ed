"""Responses of every policy, teacher-forced log-probs of the logged responses, true values."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from arena_cje.backends import SimulatedTruth
from arena_cje.backends.base import generate_batch, teacher_force_batch
from arena_cje.experiment import (
    backend_from_params,
    backends_from_params,
    policy_backends,
    policy_specs,
    stable_seed,
)

logger = logging.getLogger(__name__)

RESPONSE_COLUMNS = ["prompt_id", "policy", "draw_idx", "response", "logprob", "n_tokens", "truncated", "error"]
LOGPROB_COLUMNS = ["prompt_id", "policy", "logprob", "n_tokens", "tail_mass_bound", "error"]


def generate_responses(
    prompts: pd.DataFrame,
    backend: dict[str, Any],
    policies: dict[str, Any],
    policy_defaults: dict[str, Any],
    generation: dict[str, Any],
) -> pd.DataFrame:
    """Sample one response per (prompt, policy), each policy on its own backend.

    Each item's seed is ``stable_seed(generation.seed, prompt_id, policy)`` so reruns and
    larger runs reproduce earlier responses. Failures keep their row with ``error`` set and
    ``logprob`` missing. A policy with a ``backend`` block of its own is generated there, others
    on the top-level ``backend`` (:func:`arena_cje.experiment.policy_backends`).

    Returns:
        Columns ``prompt_id, policy, draw_idx, response, logprob, n_tokens, truncated, error``;
        ``logprob`` is the log-prob the backend reported at generation (``NaN`` when it reports
        none, e.g. chat APIs that omit the end-of-turn token); ``truncated`` marks responses cut
        at ``max_tokens``.
    """
    clients = backends_from_params(policy_backends(backend, policies))
    frames = []
    for name, spec in policy_specs(policies, policy_defaults).items():
        seeds = [stable_seed(generation["seed"], pid, name) for pid in prompts["prompt_id"]]
        results = generate_batch(clients[name], prompts["prompt"].tolist(), spec, seeds)
        frames.append(
            pd.DataFrame(
                {
                    "prompt_id": prompts["prompt_id"].to_numpy(),
                    "policy": name,
                    "draw_idx": 0,
                    "response": [r.text for r in results],
                    "logprob": [_missing_to_nan(r.logprob) for r in results],
                    "n_tokens": [r.n_tokens for r in results],
                    "truncated": [_is_truncated(r, spec.max_tokens) for r in results],
                    "error": [r.error for r in results],
                }
            )
        )
        _log_failures("generation", name, frames[-1])
    return pd.concat(frames, ignore_index=True)[RESPONSE_COLUMNS]


def teacher_force_logged_responses(
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    backend: dict[str, Any],
    policies: dict[str, Any],
    policy_defaults: dict[str, Any],
    logging_policy: str,
) -> pd.DataFrame:
    """Score the logging policy's responses under every policy (itself included), each policy on
    its own backend (the one that generates its responses).

    ``logprob = log P_policy(response | prompt)`` summed over the response tokens including
    end of turn when the response ended (a response cut at ``max_tokens``, ``truncated``, never
    produced one and is scored without it). Missing values stay missing (``NaN`` with ``error``);
    never 0.0.

    Returns:
        Columns ``prompt_id, policy, logprob, n_tokens, tail_mass_bound, error``.
    """
    specs = policy_specs(policies, policy_defaults)
    if logging_policy not in specs:
        raise ValueError(f"logging_policy={logging_policy!r} is not one of the policies {sorted(specs)}")
    logged = _logged_responses(prompts, responses, logging_policy)
    clients = backends_from_params(policy_backends(backend, policies))
    frames = []
    for name, spec in specs.items():
        results = teacher_force_batch(clients[name], logged["prompt"].tolist(), logged["response"].tolist(), spec,
                                      ended=logged["ended"].tolist())
        frames.append(
            pd.DataFrame(
                {
                    "prompt_id": logged["prompt_id"].to_numpy(),
                    "policy": name,
                    "logprob": [_missing_to_nan(r.logprob) for r in results],
                    "n_tokens": [r.n_tokens for r in results],
                    "tail_mass_bound": [r.tail_mass_bound for r in results],
                    "error": [r.error for r in results],
                }
            )
        )
        _log_failures("teacher forcing", name, frames[-1])
    return pd.concat(frames, ignore_index=True)[LOGPROB_COLUMNS]


def measure_echo_noise(
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    backend: dict[str, Any],
    policies: dict[str, Any],
    policy_defaults: dict[str, Any],
    logging_policy: str,
    n_rows: int = 5,
) -> dict[str, Any]:
    """Repeat identical T=1 echo requests for a few logged responses (backends with ``echo_noise``).

    A deterministic server gives 0; a hosted API may not (the seed data's Fireworks echoes of
    identical requests differed by up to several nats), and that noise inflates the variance of
    every importance weight. Exact backends (simulated, local) have no such noise and send nothing.
    The requests go to the logging policy's backend.

    Returns:
        The backend's ``echo_noise`` figures, or ``{"echo_noise_measured": False}``.
    """
    specs = policy_specs(policies, policy_defaults)
    if logging_policy not in specs:
        raise ValueError(f"logging_policy={logging_policy!r} is not one of the policies {sorted(specs)}")
    client = backends_from_params(policy_backends(backend, policies))[logging_policy]
    if not hasattr(client, "echo_noise"):
        return {"echo_noise_measured": False}
    sample = _logged_responses(prompts, responses, logging_policy).head(n_rows)
    figures = client.echo_noise(sample["prompt"].tolist(), sample["response"].tolist(), specs[logging_policy],
                                ended=sample["ended"].tolist())
    return {"echo_noise_measured": True, **figures}


def check_teacher_forcing(
    responses: pd.DataFrame, logprobs: pd.DataFrame, logging_policy: str, echo_noise: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Compare generation-time and teacher-forced log-probs of the logged responses.

    A backend whose teacher forcing is right reproduces the log-prob it reported at generation
    (to float precision on deterministic backends). Rows where either side is missing are counted.
    The API's echo noise (:func:`measure_echo_noise`), where measured, is reported beside it.

    Returns:
        ``n_compared``, ``n_missing``, ``max_abs_diff``, ``mean_abs_diff``, ``passed`` (and the
        echo-noise figures).
    """
    noise = {k: v for k, v in (echo_noise or {}).items() if k != "echo_noise_measured"}
    generated = responses[responses["policy"] == logging_policy].set_index("prompt_id")["logprob"]
    forced = logprobs[logprobs["policy"] == logging_policy].set_index("prompt_id")["logprob"]
    if generated.notna().sum() == 0:
        return {
            "policy": logging_policy,
            "n_compared": 0,
            "n_missing": int(len(generated)),
            "passed": None,
            "note": "this backend reports no generation log-probs; run `kedro check-models` to compare "
            "teacher forcing with the provider's own log-probs",
            **noise,
        }
    both = pd.concat({"generated": generated, "forced": forced}, axis=1)
    complete = both.dropna()
    diff = (complete["generated"] - complete["forced"]).abs()
    report = {
        "policy": logging_policy,
        "n_compared": int(len(complete)),
        "n_missing": int(len(both) - len(complete)),
        "max_abs_diff": float(diff.max()) if len(diff) else None,
        "mean_abs_diff": float(diff.mean()) if len(diff) else None,
        "tolerance": 1e-4,
    }
    report["passed"] = bool(len(diff) > 0 and report["max_abs_diff"] <= report["tolerance"])
    report.update(noise)
    if not report["passed"]:
        logger.warning("Teacher forcing does not reproduce generation log-probs: %s", report)
    return report


def compute_true_values(
    prompts: pd.DataFrame,
    backend: dict[str, Any],
    policies: dict[str, Any],
    policy_defaults: dict[str, Any],
) -> pd.DataFrame:
    """True value V(pi) = E[Y] of each policy over the run's prompts, where the backend knows it.

    Only a simulated world knows Y; for other backends ``truth`` is missing. Y is the quality the
    raters see, i.e. that of the top-level ``backend``'s world. A policy generated by a backend of
    its own gets a true value only when that backend is the same world (equal ``world_params``);
    another world's responses are not what the raters' world samples, so its ``truth`` is
    missing, and a warning says so.

    Returns:
        Columns ``policy, truth, truth_se`` (Monte Carlo standard error of ``truth``).
    """
    world = backend_from_params(backend)
    knows_truth = isinstance(world, SimulatedTruth) and hasattr(world, "true_value_detail")
    clients = backends_from_params(policy_backends(backend, policies)) if knows_truth else {}
    rows = []
    for name, spec in policy_specs(policies, policy_defaults).items():
        value, se = math.nan, math.nan
        if knows_truth and not _same_world(clients[name], world):
            logger.warning("true value of %s unknown: it is generated by its own backend (policies.%s.backend), "
                           "another world than the raters'", name, name)
        elif knows_truth:
            value, se = world.true_value_detail(spec, prompts["prompt"].tolist())
        rows.append({"policy": name, "truth": value, "truth_se": se})
    return pd.DataFrame(rows, columns=["policy", "truth", "truth_se"])


def _same_world(a: Any, b: Any) -> bool:
    """Whether two backends are the same simulated world (the same instance, or equal ``world_params``)."""
    if a is b:
        return True
    params_a, params_b = getattr(a, "world_params", None), getattr(b, "world_params", None)
    return callable(params_a) and callable(params_b) and params_a() == params_b()


def _logged_responses(prompts: pd.DataFrame, responses: pd.DataFrame, logging_policy: str) -> pd.DataFrame:
    logged = responses[responses["policy"] == logging_policy][["prompt_id", "response", "truncated", "error"]]
    logged = logged[logged["error"].isna()]
    logged = logged.assign(ended=~logged["truncated"].fillna(False).astype(bool))
    return prompts[["prompt_id", "prompt"]].merge(logged, on="prompt_id", how="inner")


def _is_truncated(result: Any, max_tokens: int) -> bool:
    if "truncated" in result.usage:
        return bool(result.usage["truncated"])
    return result.n_tokens is not None and result.n_tokens >= max_tokens


def _missing_to_nan(value: float | None) -> float:
    return np.nan if value is None else float(value)


def _log_failures(stage: str, policy: str, frame: pd.DataFrame) -> None:
    failed = frame["error"].notna().sum()
    if failed:
        first = frame.loc[frame["error"].notna(), ["prompt_id", "error"]].iloc[0]
        logger.warning(
            "%s: %d of %d items failed for policy %s (first: prompt_id=%s: %s)",
            stage, failed, len(frame), policy, first["prompt_id"], first["error"],
        )
