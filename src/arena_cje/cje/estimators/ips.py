"""Logs-only estimators: self-normalised IPS on the raw weights (snips) and on SIMCal-W weights (calibrated_ips).

Both reweight the calibrated rewards R_i = f^(-k(i))(S_i) of the logged rows with both log-probs;
the weights and their diagnostics come from ``EstimationContext.weights`` (formulas: ``weights.py``, ``weight_diagnostics.py``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.isotonic import IsotonicRegression

from arena_cje.cje.context import EstimationContext, PolicyWeights
from arena_cje.cje.estimators.output import EstimatorOutput, prompt_sum, refused
from arena_cje.cje.weights import JudgeOrder, simcal_sorted

#: Number of prompt groups G of the grouped jackknife of calibrated IPS (``simcal_jackknife_variance``).
SIMCAL_JACKKNIFE_GROUPS = 20
#: Threads that run the jackknife's refits (the issue's target machine has two cores).
JACKKNIFE_THREADS = 2


def snips(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Self-normalised IPS on the raw weights with calibrated rewards.

    theta = sum_i w~_i R_i / sum_i w~_i,   phi_i = w~_i (R_i - theta) + theta,

    over the logged rows with both log-probs (w~ the mean-one Hajek weights); psi_g aggregates phi
    by prompt (``output.prompt_sum``). OUA replicate k: the same ratio with R replaced by f^(-k)(S).
    Refused when target-typicality coverage is below ``gates.ttc_refuse`` (logs-only IPS cannot be
    accurate when the logger rarely produces what the target produces).
    """
    return _ips(ctx, policy, "snips", simcal=False)


def calibrated_ips(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Self-normalised IPS on the SIMCal-W weights with calibrated rewards.

    With W = 1 + gamma (sum_c beta_c W^c - 1) the SIMCal weights (``weights.simcal_weights``),
    theta = sum_i W_i R_i / sum_i W_i and

        phi_i = W_i (R_i - theta) + theta + gamma sum_{c in {+,-}} beta_c (w~_i - W^c_i)(m_hat(S_i) - theta),

    the last term being the influence of ESTIMATING the monotone projections W^c = Pi_c(w~ | S):
    perturbing the data moves W^c by the projection of (w~ - W^c), which moves theta by
    E[(w~ - W^c)(m(S) - theta)] with m(S) = E[R | S], estimated by m_hat, the isotonic fit of R on S
    (``projection_correction``). beta and gamma are treated as fixed; their sampling variance is
    covered by a grouped jackknife that refits SIMCal (``simcal_jackknife_variance``, passed to
    ``inference.t_interval`` as ``extras["sampling_jackknife"]``).

    Refused when the RAW ESS fraction is below ``gates.ess_refuse`` (SIMCal cannot create overlap)
    or TTC is below ``gates.ttc_refuse``; warned when the variance cap blends (gamma < 1: the
    estimand is shrunk toward the logging policy's value, a bias no SE covers) or SIMCal fell back
    to fixed stacking weights.
    """
    return _ips(ctx, policy, "calibrated_ips", simcal=True)


def projection_correction(pw: PolicyWeights, judge: np.ndarray, r: np.ndarray, theta: float) -> np.ndarray:
    """gamma sum_{c in {+,-}} beta_c (w~_i - W^c_i)(m_hat(S_i) - theta), m_hat = isotonic fit of R on S.

    The influence of the estimated SIMCal projections (``calibrated_ips``); zeros when SIMCal kept
    no projection.
    """
    fit = pw.simcal_fit
    if fit is None or not fit.projections:
        return np.zeros(r.size)
    m_hat = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(judge, r).predict(judge)
    corr = np.zeros(r.size)
    for name, proj in fit.projections.items():
        corr += fit.stack_weights.get(name, 0.0) * (pw.raw - proj)
    return fit.blend_gamma * corr * (m_hat - theta)


def simcal_jackknife_variance(ctx: EstimationContext, pw: PolicyWeights, r: np.ndarray) -> float:
    """Grouped delete-a-group jackknife variance of calibrated IPS, refitting SIMCal (projections AND stacking).

    Prompts are split into G = ``SIMCAL_JACKKNIFE_GROUPS`` groups by crc32(prompt_id) mod G;
    theta_(-g) recomputes the whole SIMCal fit without group g;
    V_JK = (G-1)/G sum_g (theta_(-g) - mean theta)^2 (NaN with fewer than two usable groups).

    The refits run in the judge order of the full fit (one sort; theta is a ratio of sums, so the
    row order does not matter), and a refit's out-of-fold projection for fold k is the full fit's
    when group g lies inside fold k (its training rows, all folds but k, are then untouched; the
    fit scales with w, so it is rescaled to the refit's mean-one weights).
    """
    m = pw.mask
    fit = pw.simcal_fit
    order = fit.order if fit is not None and fit.order is not None else JudgeOrder(ctx.judge[m])
    ws_all = pw.raw[order.order]
    rs_all = r[order.order]
    fs_all = ctx.folds[m][order.order]
    grp_all = ctx.prompt_hashes[m][order.order] % SIMCAL_JACKKNIFE_GROUPS
    oof = fit.oof_sorted if fit is not None else None

    def refit(g: int) -> float | None:
        """theta_(-g), or None when dropping group g leaves fewer than two rows or drops none."""
        keep = grp_all != g
        n_keep = int(keep.sum())
        if n_keep < 2 or n_keep == keep.size:
            return None
        ws = ws_all[keep]
        scale = ws.mean()
        ws = ws / scale
        rs, fs = rs_all[keep], fs_all[keep]
        known = None
        dropped_folds = np.unique(fs_all[~keep])
        if oof is not None and dropped_folds.size == 1 and int(dropped_folds[0]) in oof[2]:
            up, down, _ = oof
            known = {int(dropped_folds[0]): (up[keep] / scale, down[keep] / scale)}
        wj = simcal_sorted(ws, rs, fs, ctx.config.var_cap, order.sorted_subset(keep), known_oof=known).weights
        return float(np.sum(wj * rs) / np.sum(wj))

    # The refits are independent and their isotonic fits and array work release the GIL.
    with ThreadPoolExecutor(max_workers=min(JACKKNIFE_THREADS, os.cpu_count() or 1)) as pool:
        thetas = [t for t in pool.map(refit, range(SIMCAL_JACKKNIFE_GROUPS)) if t is not None]
    t = np.asarray(thetas)
    if t.size < 2:
        return float("nan")
    return float((t.size - 1) / t.size * np.sum((t - t.mean()) ** 2))


def _ips(ctx: EstimationContext, policy: str, name: str, simcal: bool) -> EstimatorOutput:
    """The self-normalised IPS of ``snips`` (raw weights) or ``calibrated_ips`` (SIMCal weights)."""
    pw = ctx.weights(policy)
    if pw is None or pw.mask.sum() < 2:
        return refused(policy, name, "no target log-probs for this policy on the logged data")
    w = pw.simcal if simcal else pw.raw
    if not np.isfinite(w).all():
        return refused(policy, name, "weights unavailable")
    m = pw.mask
    r = ctx.rewards[m]
    theta = float(np.sum(w * r) / np.sum(w))
    wn = w / w.mean()
    phi = wn * (r - theta) + theta
    if simcal:
        phi = phi + projection_correction(pw, ctx.judge[m], r, theta)
    psi = prompt_sum(None, phi, groups=ctx.prompt_groups(m))
    reps = np.array([np.sum(w * rk[m]) / np.sum(w) for rk in ctx.rewards_k]) if ctx.use_oua else None
    out = EstimatorOutput(policy, name, theta, psi, reps, oracle_n=ctx.cal.diagnostics.n_labelled, uses_weights=True)
    if simcal and pw.diagnostics.ess_raw < 0.999:  # unit weights: SIMCal is the identity
        out.extras["sampling_jackknife"] = (simcal_jackknife_variance(ctx, pw, r), SIMCAL_JACKKNIFE_GROUPS)
    out.warn(ctx.logprob_reasons(pw))
    d, g = pw.diagnostics, ctx.config.gates
    if simcal:
        out.warn(pw.simcal_reasons)
        # SIMCal cannot create overlap the logger lacks: gate on the RAW weights (the SIMCal ESS is
        # >= 1/(1 + var_cap) by construction and says nothing about overlap).
        if d.ess_raw < g.ess_refuse:
            out.refused = True
            out.reasons.append(f"raw ESS fraction {d.ess_raw:.4f} < {g.ess_refuse}: too little overlap for weights-only estimation")
        if np.isfinite(d.simcal_gamma) and d.simcal_gamma < 0.999:
            out.warn([f"variance cap blended the weights toward uniform (gamma {d.simcal_gamma:.2f}):"
                      " estimate shrunk toward the logging policy's value"])
    if np.isfinite(d.ttc) and d.ttc < g.ttc_refuse:
        out.refused = True
        out.reasons.append(f"target-typicality coverage {d.ttc:.2f} < {g.ttc_refuse}: logs-only IPS unreliable, use direct/DR")
    return out
