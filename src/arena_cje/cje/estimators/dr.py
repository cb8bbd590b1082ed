"""Doubly robust estimators: calibrated DR (dr_cpo), MRDR and TMLE.

All three share one form. On the DR rows i (logged rows with both log-probs whose prompt has fresh
draws of the policy; :class:`DRRows`), with an outcome model q,

    phi_i = g_hat(X_i) + W_i (L_i / pi_L)(Y_i - q(S_i)),    g_hat(X) = mean_{d in X} q(S_d),

theta = mean_g psi_g with psi_g = (G/n) sum_{i in g} phi_i. The first term is the direct method on
the policy's fresh draws d; the second the importance-weighted residual on the labelled slice (an
AIPW / two-phase-sampling correction, unbiased if either the outcome model transports to the policy
or the weights are right). W are the SIMCal weights on the DR rows rescaled to mean one, L_i = 1 when
row i is labelled and pi_L the labelled share of the DR rows. The estimators differ in q only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, logit

from arena_cje.cje.calibration import make_calibrator
from arena_cje.cje.context import EstimationContext, FreshDraws
from arena_cje.cje.estimators.output import EstimatorOutput, prompt_sum, refused

#: TMLE searches the fluctuation eps in [-TMLE_EPS_BRACKET, TMLE_EPS_BRACKET] (logit scale).
TMLE_EPS_BRACKET = 20.0
#: TMLE maps q to [0, 1] and clips it to [TMLE_CLIP, 1 - TMLE_CLIP] before the logit.
TMLE_CLIP = 1e-4


@dataclass(frozen=True)
class DRRows:
    """The logged rows the DR family uses, with what its formula needs (module docstring).

    Attributes:
        rows: Positions of the DR rows in ``ctx.logged``.
        prompt_ids: prompt_id of each DR row.
        fresh_index: Position of each row's prompt among ``fresh.prompts``.
        w: W_i, the SIMCal weights on the DR rows rescaled to mean one.
        y: Y_i (NaN when unlabelled).
        labelled: L_i.
        pi_l: pi_L = mean_i L_i.
        judge: S_i.
        folds: Prompt fold k(i).
        fresh: The policy's fresh draws.
        reasons: Why the DR rows are incomplete or their weights suspect (reported as warnings).
        groups: ``pd.factorize(prompt_ids)`` (``EstimationContext.prompt_groups``; None: factorized when needed).
    """

    rows: np.ndarray
    prompt_ids: np.ndarray
    fresh_index: np.ndarray
    w: np.ndarray
    y: np.ndarray
    labelled: np.ndarray
    pi_l: float
    judge: np.ndarray
    folds: np.ndarray
    fresh: FreshDraws
    reasons: tuple[str, ...]
    groups: tuple[np.ndarray, pd.Index] | None = None

    def g_hat(self, q_fresh: np.ndarray) -> np.ndarray:
        """g_hat(X_i) = mean of the outcome model over the fresh draws of row i's prompt."""
        return self.fresh.prompt_means(q_fresh)[self.fresh_index]

    def phi(self, q_logged: np.ndarray, q_fresh: np.ndarray) -> np.ndarray:
        """phi_i = g_hat(X_i) + W_i (L_i/pi_L)(Y_i - q_i) for outcome-model values on the DR rows and the draws."""
        lab = self.labelled
        corr = np.zeros(len(self.rows))
        corr[lab] = self.w[lab] * (self.y[lab] - q_logged[lab]) / self.pi_l
        return self.g_hat(q_fresh) + corr

    def output(self, ctx: EstimationContext, policy: str, name: str, phi: np.ndarray,
               reps: np.ndarray | None) -> EstimatorOutput:
        """The estimator output of row influence values ``phi`` (aggregated by prompt) and OUA replicates."""
        psi = prompt_sum(self.prompt_ids, phi, groups=self.groups)
        out = EstimatorOutput(policy, name, float(psi.mean()), psi, reps if ctx.use_oua else None,
                              oracle_n=int(self.labelled.sum()), uses_weights=True)
        out.warn(list(self.reasons))
        return out


def dr_rows(ctx: EstimationContext, policy: str, name: str) -> DRRows | EstimatorOutput:
    """The DR rows of a policy, or the refusal of estimator ``name`` when there are fewer than two."""
    pw = ctx.weights(policy)
    f = ctx.fresh(policy)
    if f is None:
        return refused(policy, name, "no fresh draws for this policy")
    if pw is None or pw.mask.sum() < 2 or not np.isfinite(pw.simcal).all():
        return refused(policy, name, "no target log-probs for this policy on the logged data")
    rows = np.flatnonzero(pw.mask)
    fresh_index = ctx.fresh_positions(policy)[rows]
    keep = fresh_index >= 0
    rows, fresh_index = rows[keep], fresh_index[keep]
    if rows.size < 2:
        return refused(policy, name, "no logged prompt has fresh draws of this policy")
    w = pw.simcal[keep]
    w = w / w.mean()
    y = ctx.labels[rows]
    lab = ~np.isnan(y)
    reasons = []
    if (~keep).any():
        reasons.append(f"{int((~keep).sum())} logged row(s) without fresh draws of the policy excluded")
    reasons.extend(ctx.logprob_reasons(pw))
    reasons.extend(pw.simcal_reasons)
    return DRRows(rows=rows, prompt_ids=ctx.prompt_ids[rows], fresh_index=fresh_index, w=w, y=y, labelled=lab,
                  pi_l=lab.mean(), judge=ctx.judge[rows], folds=ctx.folds[rows], fresh=f, reasons=tuple(reasons),
                  groups=ctx.prompt_groups(rows))


def dr_cpo(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Calibrated DR: the DR form (module docstring) with the calibrator as outcome model.

    phi_i = g_hat(X_i) + W_i (L_i/pi_L)(Y_i - f(S_i)),  g_hat(X) = mean_{d in X} f(S_d),

    f the cross-fitted calibrator (R_i on the logged rows, ``FreshDraws.pred`` on the draws).
    OUA replicate k: theta with f replaced by f^(-k) on both.
    """
    s = dr_rows(ctx, policy, "dr_cpo")
    if isinstance(s, EstimatorOutput):
        return s
    f = s.fresh
    phi = s.phi(ctx.rewards[s.rows], f.pred)
    reps = np.array([s.phi(ctx.rewards_k[k][s.rows], f.pred_k[k]).mean() for k in range(ctx.K)])
    return s.output(ctx, policy, "dr_cpo", phi, reps)


def mrdr(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """MRDR: the DR form with an outcome model fitted to minimise the correction term's variance.

    q = the calibration's own family and covariates (isotonic in S, or two-stage in S and length),
    fitted on the labelled DR rows with sample weights W_i^2 (+1e-12): the variance-minimising
    weighting of the correction term (Farajtabar et al. 2018). Cross-fitted by prompt fold: q^(-k)
    is fitted without fold k and predicts the fold-k DR rows and draws;

        phi_i = g_hat(X_i) + W_i (L_i/pi_L)(Y_i - q^(-k(i))(S_i, x_i)),  g_hat(X) = mean_{d in X} q^(-k(d))(S_d, x_d).

    OUA replicate k: theta with q^(-k) on every row and draw.
    """
    s = dr_rows(ctx, policy, "mrdr")
    if isinstance(s, EstimatorOutput):
        return s
    f = s.fresh
    lab = s.labelled
    family = ctx.cal.diagnostics.calibrator
    # Same covariates as the calibration: an S-only outcome model would reintroduce the judge's
    # length bias that the two-stage calibrator removed (and SIMCal weights, being functions of S,
    # cannot correct it in the residual term).
    c_all = ctx.cal.covariate_matrix(ctx.logged)
    c_log = None if c_all is None else c_all[s.rows]
    c_fr = ctx.cal.covariate_matrix(f.frame)

    def sub(c: np.ndarray | None, m: np.ndarray) -> np.ndarray | None:
        return None if c is None else c[m]

    jl, yl, wl, fl = s.judge[lab], s.y[lab], s.w[lab] ** 2 + 1e-12, s.folds[lab]
    cl = sub(c_log, lab)
    fresh_folds = f.folds
    models = []
    for k in range(ctx.K):
        tr = fl != k
        models.append(make_calibrator(family).fit(jl[tr], sub(cl, tr), yl[tr], sample_weight=wl[tr]))
    q_log = np.empty(len(s.rows))
    q_fr = np.empty(len(f.judge))
    for k, m in enumerate(models):
        sl, sf = s.folds == k, fresh_folds == k
        q_log[sl] = m.predict(s.judge[sl], sub(c_log, sl))
        q_fr[sf] = m.predict(f.judge[sf], sub(c_fr, sf))
    phi = s.phi(q_log, q_fr)
    reps = np.array([s.phi(m.predict(s.judge, c_log), m.predict(f.judge, c_fr)).mean() for m in models])
    return s.output(ctx, policy, "mrdr", phi, reps)


@dataclass(frozen=True)
class TmleFluctuation:
    """TMLE's fluctuated outcome model (``tmle``).

    Attributes:
        q_logged: q* on the DR rows (label scale).
        q_fresh: q* on the fresh draws (label scale).
        epsilon: The fluctuation eps (0.0 when no root was bracketed).
        converged: False when the score equation had no root in the bracket and eps fell back to 0.
    """

    q_logged: np.ndarray
    q_fresh: np.ndarray
    epsilon: float
    converged: bool


def fluctuate(s: DRRows, q_logged: np.ndarray, q_fresh: np.ndarray, lo: float, hi: float) -> TmleFluctuation:
    """Solve sum_i W_i L_i (Y~_i - expit(logit q~_i + eps)) = 0 for eps and return the fluctuated q's.

    q~ = clip((q - lo) / (hi - lo), TMLE_CLIP, 1 - TMLE_CLIP) and Y~ = (Y - lo) / (hi - lo) map
    the label range [lo, hi] to [0, 1]; q* = lo + (hi - lo) expit(logit q~ + eps). When the score
    has no sign change on [-TMLE_EPS_BRACKET, TMLE_EPS_BRACKET] (e.g. every labelled residual of
    one sign at the edge of the label range), eps = 0 and ``converged`` is False.
    """
    span = hi - lo if hi > lo else 1.0
    z_log = logit(np.clip((q_logged - lo) / span, TMLE_CLIP, 1 - TMLE_CLIP))
    z_fr = logit(np.clip((q_fresh - lo) / span, TMLE_CLIP, 1 - TMLE_CLIP))
    lab = s.labelled
    y01 = (s.y[lab] - lo) / span
    wl = s.w[lab]

    def score(eps: float) -> float:
        return float(np.sum(wl * (y01 - expit(z_log[lab] + eps))))

    try:
        eps, converged = brentq(score, -TMLE_EPS_BRACKET, TMLE_EPS_BRACKET), True
    except ValueError:  # no sign change in the bracket
        eps, converged = 0.0, False
    return TmleFluctuation(lo + span * expit(z_log + eps), lo + span * expit(z_fr + eps), eps, converged)


def tmle(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """TMLE: the DR form with a weighted logistic intercept fluctuation of the calibrator.

    Initial q = f (the cross-fitted calibrator) on the label scale mapped to [0, 1]; one logistic
    fluctuation logit q* = logit q + eps with eps solving sum_i W_i L_i (Y_i - q*_i) = 0
    (``fluctuate``), so that the weighted residual term of phi is zero by construction and

        theta = mean_g psi_g,  phi_i = g*_hat(X_i) + W_i (L_i/pi_L)(Y_i - q*_i),  g*_hat(X) = mean_{d in X} q*(S_d).

    OUA replicate k: the same with f^(-k) as initial q (eps refitted). When the fluctuation's score
    has no root in its bracket, eps = 0 (q* = the clipped f) and the row is warned, naming how many
    of the main fit and the K replicates fell back. ``extras["epsilon"]`` is the main fit's eps.
    """
    s = dr_rows(ctx, policy, "tmle")
    if isinstance(s, EstimatorOutput):
        return s
    f = s.fresh
    lo, hi = ctx.cal.diagnostics.label_range
    fit = fluctuate(s, ctx.rewards[s.rows], f.pred, lo, hi)
    phi = s.phi(fit.q_logged, fit.q_fresh)
    reps = []
    failed_reps = 0
    for k in range(ctx.K):
        fk = fluctuate(s, ctx.rewards_k[k][s.rows], f.pred_k[k], lo, hi)
        failed_reps += not fk.converged
        reps.append(s.phi(fk.q_logged, fk.q_fresh).mean())
    out = s.output(ctx, policy, "tmle", phi, np.array(reps))
    out.extras["epsilon"] = fit.epsilon
    if not fit.converged:
        out.warn([f"TMLE fluctuation: no root of the weighted score in eps in [-{TMLE_EPS_BRACKET:g}, "
                  f"{TMLE_EPS_BRACKET:g}] (the labelled residuals do not change sign); eps set to 0, so the "
                  "estimate is DR with the clipped calibrator and the residual term is not zeroed"])
    if failed_reps and ctx.use_oua:
        out.warn([f"TMLE fluctuation: eps set to 0 (no root in the bracket) in {failed_reps} of {ctx.K} OUA replicates"])
    return out
