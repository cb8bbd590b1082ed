"""Stacked DR: the minimum-variance convex combination of the DR estimators."""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena_cje.cje.context import EstimationContext
from arena_cje.cje.estimators.output import EstimatorOutput, refused
from arena_cje.cje.weights import simplex_min_variance

#: The DR estimators stacked_dr combines.
STACK_COMPONENTS = ("dr_cpo", "tmle", "mrdr")


def stacked_dr(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Convex combination of DR estimators minimising the variance of the stacked influence function.

    With psi^c the per-prompt contributions of each available component c in ``STACK_COMPONENTS``
    (on the prompts all share),

        beta = argmin_{beta >= 0, sum beta = 1} beta' Cov(psi) beta   (``weights.simplex_min_variance``),
        psi_g = sum_c beta_c psi^c_g,  theta = mean_g psi_g,

    OUA replicates theta_k = sum_c beta_c theta^c_k (beta held fixed). The row carries every
    component's reasons; ``extras["stack_weights"]`` holds beta.
    """
    # The registry imports this module, so the runner is looked up when the estimator runs.
    from arena_cje.cje.estimators import run_estimator

    comps = [run_estimator(ctx, policy, c) for c in STACK_COMPONENTS]
    comps = [c for c in comps if c.n >= 2 and np.isfinite(c.estimate)]
    if not comps:
        return refused(policy, "stacked_dr", "no DR component available")
    idx = comps[0].psi.index
    for c in comps[1:]:
        idx = idx.intersection(c.psi.index)
    mat = np.vstack([c.psi.to_numpy() if c.psi.index.equals(idx) else c.psi.reindex(idx).to_numpy() for c in comps])
    cov = np.atleast_2d(np.cov(mat)) if len(comps) > 1 else np.ones((1, 1))
    beta = simplex_min_variance(cov) if len(comps) > 1 else np.ones(1)
    psi = pd.Series(beta @ mat, index=idx)
    reps = None
    if ctx.use_oua and all(c.oua_replicates is not None for c in comps):
        reps = beta @ np.vstack([c.oua_replicates for c in comps])
    reasons = sorted({r for c in comps for r in c.reasons})
    out = EstimatorOutput(policy, "stacked_dr", float(psi.mean()), psi, reps, oracle_n=comps[0].oracle_n,
                          uses_weights=True, reasons=reasons, warned=any(c.warned for c in comps))
    out.extras["stack_weights"] = {c.estimator: float(b) for c, b in zip(comps, beta, strict=True)}
    return out
