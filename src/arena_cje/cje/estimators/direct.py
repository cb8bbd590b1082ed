"""Fresh-draw estimators: the naive judge mean and the calibrated direct method.

Both average over the policy's own fresh draws d of each logged prompt g and need no log-probs.
"""

from __future__ import annotations

import numpy as np

from arena_cje.cje.context import EstimationContext
from arena_cje.cje.estimators.output import EstimatorOutput, refused


def naive(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Mean judge score of the policy's fresh draws (judge scale, no calibration).

    psi_g = mean_{d in g} S_d;  theta = mean_g psi_g.

    Always ``warned``: the value is on the judge's scale, not the oracle's. No OUA replicates (no
    calibration is used).
    """
    f = ctx.fresh(policy)
    if f is None:
        return refused(policy, "naive", "no fresh draws for this policy")
    psi = f.prompt_mean_series(f.judge)
    out = EstimatorOutput(policy, "naive", float(psi.mean()), psi)
    out.warn(["uncalibrated: mean judge score, not on the oracle scale"])
    return out


def direct(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Calibrated direct method on the fresh draws, with the labelled-draw residual term when available.

    psi_g = mean_{d in g} [ f(S_d) + (L_d / pi_F)(Y_d - f(S_d)) ],  theta = mean_g psi_g,

    with f(S_d) = f^(-k(d))(S_d) the cross-fitted calibrated prediction, L_d = 1 when draw d carries
    an oracle label and pi_F = (number of labelled draws) / (number of draws). The residual term only
    exists when at least two of the policy's own draws are labelled (e.g. the logging policy's
    calibration slice); otherwise psi_g = mean_{d in g} f(S_d). OUA replicate k replaces f by
    f^(-k) in the same formula. ``extras["residual_correction"]`` says whether the term was used.
    """
    f = ctx.fresh(policy)
    if f is None:
        return refused(policy, "direct", "no fresh draws for this policy")
    lab = f.labelled
    n_lab = int(lab.sum())

    def contrib(pred: np.ndarray) -> np.ndarray:
        v = pred.copy()
        if n_lab >= 2:
            pi_f = n_lab / len(pred)
            v[lab] += (f.label[lab] - pred[lab]) / pi_f
        return v

    psi = f.prompt_mean_series(contrib(f.pred))
    reps = np.array([np.mean(f.prompt_means(contrib(pk))) for pk in f.pred_k]) if ctx.use_oua else None
    out = EstimatorOutput(policy, "direct", float(psi.mean()), psi, reps, oracle_n=ctx.cal.diagnostics.n_labelled)
    out.extras["residual_correction"] = n_lab >= 2
    return out
