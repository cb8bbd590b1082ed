"""A small synthetic CJE world with a closed-form truth, for fast unit tests.

Prompts x ~ N(0, 1). Each policy p picks one of M actions with
    pi_p(a | x) = softmax_a((eta_p b_a + kappa_p x b_a) / tau_p),  b = linspace(-1.5, 1.5, M).
Judge score S | x, a = expit(b_a + 0.5 x + e), e ~ N(0, 0.7^2).
Oracle label Y | S = m(S) + U(-0.05, 0.05) with m(s) = 0.05 + 0.9 s^2, so E[Y | S] = m(S) for every
policy (the judge is a sufficient surrogate: calibration transports), unless ``judge_bias`` shifts a
policy's judge score (transport violated). Response length 40 + 25 a + N(0, 5^2) words.

True value V(p) = E_x sum_a pi_p(a|x) E_e[m(S)], computed by Gauss-Hermite quadrature in x and e.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit, log_softmax

M = 6
B = np.linspace(-1.5, 1.5, M)
NOISE_SD = 0.7

POLICIES: dict[str, tuple[float, float, float]] = {
    # name: (eta, kappa, tau)
    "pi_0": (0.5, 0.3, 1.0),
    "pi_hot": (0.5, 0.3, 1.6),
    "pi_better": (1.0, 0.3, 1.0),
    "pi_worse": (-0.2, 0.0, 1.0),
}


def m_true(s: np.ndarray) -> np.ndarray:
    return 0.05 + 0.9 * s**2


def log_pi(policy: str, x: np.ndarray) -> np.ndarray:
    eta, kappa, tau = POLICIES[policy]
    logits = (eta * B[None, :] + kappa * x[:, None] * B[None, :]) / tau
    return log_softmax(logits, axis=1)


def true_value(policy: str, judge_bias: float = 0.0) -> float:
    """V(p) by Gauss-Hermite quadrature (60 x 60 nodes); judge bias does not change Y."""
    gx, wx = np.polynomial.hermite_e.hermegauss(60)
    wx = wx / wx.sum()
    ge, we = np.polynomial.hermite_e.hermegauss(60)
    we = we / we.sum()
    pi = np.exp(log_pi(policy, gx))  # (nx, M)
    s = expit(B[None, :, None] + 0.5 * gx[:, None, None] + NOISE_SD * ge[None, None, :])
    em = (m_true(s) * we[None, None, :]).sum(axis=2)  # (nx, M)
    return float(np.sum(wx[:, None] * pi * em))


@dataclass
class SyntheticData:
    logged: pd.DataFrame
    fresh: dict[str, pd.DataFrame]
    probes: dict[str, pd.DataFrame] = field(default_factory=dict)


def simulate(
    n: int = 1000,
    oracle_fraction: float = 0.25,
    seed: int = 0,
    targets: tuple[str, ...] = ("pi_hot", "pi_better", "pi_worse"),
    judge_bias: dict[str, float] | None = None,
    probe_size: int = 0,
    fresh_labels_for_logging: bool = False,
) -> SyntheticData:
    """Draw one dataset in the reference JSONL layout (as DataFrames)."""
    rng = np.random.default_rng(seed)
    judge_bias = judge_bias or {}
    x = rng.standard_normal(n)
    pids = np.array([f"p{seed}_{i}" for i in range(n)], dtype=object)

    def draw(policy: str, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        lp = log_pi(policy, xs)
        u = rng.random(len(xs))[:, None]
        a = (np.cumsum(np.exp(lp), axis=1) < u).sum(axis=1).clip(0, M - 1)
        s_clean = expit(B[a] + 0.5 * xs + NOISE_SD * rng.standard_normal(len(xs)))
        y = m_true(s_clean) + rng.uniform(-0.05, 0.05, len(xs))
        s = np.clip(s_clean + judge_bias.get(policy, 0.0), 0.0, 1.0)
        length = 40 + 25 * a + 5 * rng.standard_normal(len(xs))
        return a, s, y, length

    a0, s0, y0, len0 = draw("pi_0", x)
    lab = rng.random(n) < oracle_fraction
    lp = {p: log_pi(p, x)[np.arange(n), a0] for p in ("pi_0", *targets)}
    logged = pd.DataFrame({
        "prompt": [f"prompt {i}" for i in range(n)],
        "response": [f"action {a}" for a in a0],
        "base_policy_logprob": lp["pi_0"],
        "target_policy_logprobs": [{p: float(lp[p][i]) for p in targets} for i in range(n)],
        "metadata": [{"prompt_id": p} for p in pids],
        "judge_score": s0,
        "oracle_label": np.where(lab, y0, np.nan),
        "response_length": len0,
    })
    fresh = {}
    probes = {}
    for p in targets:
        a, s, y, ln = draw(p, x)
        fresh[p] = pd.DataFrame({"prompt_id": pids, "judge_score": s, "draw_idx": 0, "response_length": ln})
        if probe_size:
            idx = rng.choice(n, size=probe_size, replace=False)
            ap, sp, yp, lnp = draw(p, x[idx])
            probes[p] = pd.DataFrame({"prompt_id": pids[idx], "judge_score": sp, "oracle_label": yp, "draw_idx": 1, "response_length": lnp})
    if fresh_labels_for_logging:
        fresh["pi_0"] = pd.DataFrame({"prompt_id": pids, "judge_score": s0, "draw_idx": 0, "response_length": len0,
                                      "oracle_label": np.where(lab, y0, np.nan)})
    return SyntheticData(logged, fresh, probes)
