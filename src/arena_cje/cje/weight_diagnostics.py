"""Diagnostics of the importance weights: how far the target policy is from the logging policy.

On the raw weights w~ (mean one, ``weights.hajek_weights``; ``context.py`` computes them per policy
and also reports the ESS of the SIMCal-W weights).

Diagnostics:
    ESS fraction = (sum w)^2 / (n sum w^2);  max weight = max w~ (mean-one scale);
    Hill tail index (top k = max(10, 5% n) weights): alpha_hat = 1 / mean_{j<=k} log(w_(j) / w_(k+1)),
      alpha < 2 means the weights have no finite variance;
    near-zero mass = share of rows with w~ < 1e-3 (log-prob mass the target gives ~nothing);
    Hellinger affinity A = mean sqrt(w~) = estimate of sum sqrt(pi_target pi_logging) (1 = identical);
    target-typicality coverage (TTC) = share of logged rows whose per-token target surprisal lies
      below the target's own 90% quantile (``target_typicality_coverage``; NaN without token counts).
    judge overlap = Bhattacharyya coefficient sum_b sqrt(p_b q_b) of the logged and fresh judge-score
      histograms (``judge_overlap``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def ess_fraction(w: np.ndarray) -> float:
    """(sum w)^2 / (n sum w^2)."""
    if w.size == 0:
        return float("nan")
    return float(w.sum() ** 2 / (w.size * np.sum(w**2)))


def hill_tail_index(w: np.ndarray, k: int | None = None) -> float:
    """Hill estimator of the Pareto tail index of the weights (module docstring)."""
    n = w.size
    if n < 20:
        return float("nan")
    k = k or max(10, int(0.05 * n))
    k = min(k, n - 1)
    top = np.sort(w)[::-1][: k + 1]
    if top[k] <= 0:
        return float("nan")
    m = np.mean(np.log(top[:k] / top[k]))
    return float(1.0 / m) if m > 0 else float("inf")


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """Smallest x_(j) whose cumulative normalised weight reaches q."""
    order = np.argsort(x)
    cum = np.cumsum(w[order]) / np.sum(w)
    return float(x[order][min(int(np.searchsorted(cum, q)), x.size - 1)])


def target_typicality_coverage(
    target_logprob: np.ndarray,
    n_tokens: np.ndarray,
    base_logprob: np.ndarray | None = None,
    fresh_logprob: np.ndarray | None = None,
    fresh_n_tokens: np.ndarray | None = None,
    mass: float = 0.9,
    min_rows: int = 20,
) -> tuple[float, str]:
    """Target-typicality coverage (TTC, CJE paper arXiv 2512.11150): logger mass on the target-typical set.

    Per-token surprisal of a response a to prompt x under the target: u(x, a) = -log pi'(a|x) / |a|
    (|a| = number of tokens). The target-typical set is T = {u <= q}, q the ``mass``-quantile (0.9) of
    u under the TARGET policy, so P_pi'(T) = 0.9 by construction; TTC = P_pi0(T) = share of logged
    rows with u_i <= q. Low TTC (paper gate: < 0.7) means the logger rarely produces what the
    target produces: logs-only IPS cannot be accurate whatever the weight stabilisation.

    q comes from the target's own fresh draws when they carry their generation log-probs and token
    counts (an on-policy sample, method ``fresh``); otherwise from the logged rows weighted by the
    self-normalised importance weights pi'/pi0 (method ``weighted``, as the reference library does;
    unreliable when those weights are degenerate).

    Returns:
        (TTC, method); (NaN, "unavailable") when token counts are missing or fewer than ``min_rows``
        rows have all inputs.
    """
    lp = np.asarray(target_logprob, dtype=float)
    nt = np.asarray(n_tokens, dtype=float)
    ok = np.isfinite(lp) & np.isfinite(nt) & (nt > 0)
    if ok.sum() < min_rows:
        return float("nan"), "unavailable"
    u = -lp[ok] / nt[ok]
    if fresh_logprob is not None and fresh_n_tokens is not None:
        flp, fnt = np.asarray(fresh_logprob, dtype=float), np.asarray(fresh_n_tokens, dtype=float)
        fok = np.isfinite(flp) & np.isfinite(fnt) & (fnt > 0)
        if fok.sum() >= min_rows:
            q = float(np.quantile(-flp[fok] / fnt[fok], mass))
            return float(np.mean(u <= q)), "fresh"
    if base_logprob is not None:
        b = np.asarray(base_logprob, dtype=float)[ok]
        good = np.isfinite(b)
        if good.sum() >= min_rows:
            logw = lp[ok][good] - b[good]
            q = _weighted_quantile(u[good], np.exp(logw - logw.max()), mass)
            return float(np.mean(u[good] <= q)), "weighted"
    return float("nan"), "unavailable"


@dataclass
class WeightDiagnostics:
    """Per-policy importance-weight diagnostics.

    Attributes:
        policy: Target policy.
        n: Rows with both log-probs.
        n_missing_logprob: Logged rows excluded because a log-prob was missing.
        n_zero_logprob: Used rows whose base or target log-prob is exactly 0.0 (probability one:
            a scoring failure upstream, or an empty response; ``data.suspect_logprob_rows``).
        n_identical_logprobs: Used rows whose log-prob is the same under the base and every
            target policy (a scoring failure upstream?).
        ess_raw: ESS fraction of the raw Hajek weights.
        ess_simcal: ESS fraction after SIMCal-W (NaN if not computed).
        max_weight: Largest raw mean-one weight.
        max_weight_simcal: Largest SIMCal weight.
        hill_alpha: Hill tail index of the raw weights.
        near_zero_mass: Share of rows with raw mean-one weight < 1e-3.
        hellinger_affinity: mean sqrt(w~) of the raw weights.
        judge_overlap: Bhattacharyya coefficient of logged vs fresh judge-score histograms.
        simcal_stack: Stacking weights of the SIMCal candidates.
        simcal_gamma: Blend factor toward uniform (1 = no blend).
        log_weights: Raw log-ratios (for histograms).
        ttc: Target-typicality coverage (NaN without token counts; ``target_typicality_coverage``).
        ttc_method: How its threshold was estimated: ``fresh``, ``weighted`` or ``unavailable``.
    """

    policy: str
    n: int
    n_missing_logprob: int
    ess_raw: float
    ess_simcal: float
    max_weight: float
    max_weight_simcal: float
    hill_alpha: float
    near_zero_mass: float
    hellinger_affinity: float
    judge_overlap: float
    simcal_stack: dict[str, float] = field(default_factory=dict)
    simcal_gamma: float = float("nan")
    log_weights: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    ttc: float = float("nan")
    ttc_method: str = "unavailable"
    n_zero_logprob: int = 0
    n_identical_logprobs: int = 0

    def as_row(self) -> dict[str, float | int | str]:
        """Flat dict (no arrays) for a diagnostics table."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("log_weights", "simcal_stack")}
        d.update({f"simcal_beta_{k}": v for k, v in self.simcal_stack.items()})
        return d


def judge_overlap(logged_judge: np.ndarray, fresh_judge: np.ndarray, bins: int = 20) -> float:
    """Bhattacharyya coefficient sum_b sqrt(p_b q_b) of the two judge-score histograms on [0, 1]."""
    if logged_judge.size == 0 or fresh_judge.size == 0:
        return float("nan")
    edges = np.linspace(0, 1, bins + 1)
    p = np.histogram(logged_judge, edges)[0] / logged_judge.size
    q = np.histogram(fresh_judge, edges)[0] / fresh_judge.size
    return float(np.sum(np.sqrt(p * q)))
