"""CJE estimators behind one interface: ``run_estimator(ctx, policy, name) -> EstimatorOutput``.

Every estimator is a function ``(ctx: EstimationContext, policy: str) -> EstimatorOutput`` listed
in ``ESTIMATORS``; it returns per-prompt contributions psi_g with theta_hat = mean_g psi_g and the OUA
replicates theta_k (``output.py``). ``run_estimator`` runs one by name and memoises it in
``ctx.outputs``; inference is shared (``inference.py``), gates are applied by ``api.py``.

Notation (CJE paper, arXiv 2512.11150): X prompt, A response, S judge score, Y oracle label,
L_i = 1 if row i is labelled, pi_L = share of labelled logged rows, f the cross-fitted calibrator
(R_i = f^(-k(i))(S_i)), w~ the raw mean-one weights, W the SIMCal-W weights,
g_hat(X) = mean of the outcome model over the policy's fresh draws for prompt X.

Where each formula is (each estimator's docstring states its own):

* ``direct.py``: ``naive`` (mean judge score of the fresh draws) and ``direct`` (calibrated direct
  method, with the labelled-draw residual term when the policy's own draws are labelled);
* ``ips.py``: ``snips`` (self-normalised IPS, raw weights) and ``calibrated_ips`` (SIMCal-W weights,
  with the influence of the estimated projections and a grouped jackknife);
* ``dr.py``: ``dr_cpo``, ``mrdr`` and ``tmle`` (direct method plus weighted labelled residual, with
  the calibrator, a W^2-weighted refit, or a logistic fluctuation as outcome model);
* ``stacked.py``: ``stacked_dr`` (minimum-variance convex combination of the DR estimators).
"""

from __future__ import annotations

from collections.abc import Callable

from arena_cje.cje.context import EstimationContext
from arena_cje.cje.estimators.direct import direct, naive
from arena_cje.cje.estimators.dr import dr_cpo, mrdr, tmle
from arena_cje.cje.estimators.ips import calibrated_ips, snips
from arena_cje.cje.estimators.output import EstimatorOutput, refused
from arena_cje.cje.estimators.stacked import stacked_dr

Estimator = Callable[[EstimationContext, str], EstimatorOutput]

ESTIMATORS: dict[str, Estimator] = {
    "naive": naive,
    "snips": snips,
    "calibrated_ips": calibrated_ips,
    "direct": direct,
    "dr_cpo": dr_cpo,
    "mrdr": mrdr,
    "tmle": tmle,
    "stacked_dr": stacked_dr,
}


def run_estimator(ctx: EstimationContext, policy: str, name: str) -> EstimatorOutput:
    """Run (and memoise in ``ctx.outputs``) one estimator for one policy.

    Every estimator but ``naive`` needs the calibration; without one it is refused.
    """
    key = (policy, name)
    if key not in ctx.outputs:
        if name != "naive" and ctx.cal is None:
            ctx.outputs[key] = refused(policy, name, "no calibration (too few oracle labels)")
        else:
            ctx.outputs[key] = ESTIMATORS[name](ctx, policy)
    return ctx.outputs[key]


__all__ = ["ESTIMATORS", "Estimator", "EstimatorOutput", "run_estimator"]
