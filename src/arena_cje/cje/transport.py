"""The reporting rule for estimates that borrow another policy's calibration.

A level estimator that applies the judge -> oracle calibration f (learned on the logging policy's
labels) to a target policy's responses (``direct``, the DR family, ``stacked_dr``) *borrows* that
calibration: it is unbiased only if E[Y - f(S)] = 0 under the target policy (transport). An
oracle-labelled probe of the target's own responses (m rows j, prompts g(j)) measures the
transport gap delta = E_target[Y - f(S)] directly.

The candidate levels and their formulas (``levels.py``): the borrowed level B, the probe-corrected
level C, the bias-aware combination theta_lambda = B + lambda (C - B) with lambda* and b2_hat, the
PPI++ level, the pooled prior tau2_hat of the gaps, and the interval of each. The graded transport
audit (states PASS / FAIL / INCONCLUSIVE / NOT_GRADED / NOT_CHECKED, TOST p-values, Holm family)
that the ``graded`` rule reads: ``audit.py``.

Reporting rule (``EstimationConfig.transport_rule``), for borrowed level rows of a policy with a probe:

* ``graded``: FAIL, or REFUSE-LEVEL fired on the borrowed level (>= 5% of the policy's judge scores
  outside the calibrated range, ``api.py``) -> C (``probe_corrected``, status ``warning``); PASS ->
  theta_lambda (``combined``); INCONCLUSIVE / NOT_GRADED -> ``transport_shrinkage``: ``mse`` = theta_lambda
  as for PASS, or ``pooled`` = an empirical-Bayes shrinkage (``shrunk``): the pooled prior variance
  tau2_hat of the gaps (``levels.pooled_bias_sq``) over the policies of the estimator whose borrowed
  level may be reported (no FAIL, no REFUSE-LEVEL); policy p's weight is lambda* with
  b^2 = min(b2_hat_p, tau2_hat) (its own revealed squared gap, capped by the family's: with two or
  three policies the pooled moment is itself noisy, and one adversarial policy would otherwise pull
  every benign policy's weight toward its probe), and its interval's bias bound is
  (1 - lambda) sqrt(max(d_hat_p^2, b2_hat_p, tau2_hat)) (``levels.py``, "Interval of the reported value");
  or ``precision`` (the default; ``shrunk``): lambda* with b^2 = 0, the covariance-aware
  minimum-variance weight (Var(B) - Cov_BC) / V_d: the gap the audit could not grade enters the
  interval only, with the same bias bound as ``pooled``. Why: b2_hat_p and
  tau2_hat are noisy (b2_hat_p has SD ~ sqrt(2) V_d when the gap is 0, and tau2_hat averages two or
  three policies), and a noisy squared gap in the weight adds more variance than the bias it removes
  while b^2 <~ V_d. A gap beyond the margin is FAIL (lambda = 1); an INCONCLUSIVE large gap keeps the
  minimum-variance weight and its unremoved share in the interval's bias bound (on the Arena sample the
  adversarial policy's INCONCLUSIVE draws get lambda 0.4-1 from Var(B) alone, its calibration
  extrapolating). Chosen by the probe study (docs/statistics.md).
* ``correct`` (the rule before the graded audit): C when |delta_hat| > margin and the t test of
  delta = 0 rejects (``TransportAudit.legacy_failed``) or REFUSE-LEVEL fired, theta_lambda otherwise.
* ``ppi``: the PPI++ level theta_PPI (``levels.py``; power-tuned lam of ``levels.ppi_weight``, fixed
  in the interval) whatever the audit says.
* every correcting rule: no probe and no oracle labels of the policy's own responses -> B
  (``borrowed``), status ``warning`` (audit NOT_CHECKED): the interval does not include the
  unmeasured transport error; the policy's own fresh draws carry oracle labels (e.g. the logging
  policy) -> ``own_labels`` for every level estimator (the direct residual term and the DR
  corrections use those labels; nothing is borrowed).
* ``refuse``: only ``level_source`` is filled and an audit FAIL refuses the rows (``api.py``).

Rows of ``naive``/``snips``/``calibrated_ips`` get ``level_source = not_borrowed`` (naive is on
the judge scale; IPS applies f to the logging policy's own responses, where it was learned).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from arena_cje.cje.audit import FAIL, PASS, ProbeDesign, TransportAudit, probe_design, probe_residuals
from arena_cje.cje.context import EstimationContext
from arena_cje.cje.estimators import EstimatorOutput, run_estimator

# The candidate levels moved to ``levels.py``; the names tests and benchmarks import from here stay
# importable from here (optimal_weight is not used below).
from arena_cje.cje.levels import (  # noqa: F401
    Contributions,
    LevelMoments,
    combine_levels,
    level_moments,
    optimal_weight,
    pooled_bias_sq,
    ppi_weight,
    probe_corrected,
)

LEVEL_ESTIMATORS = ("direct", "dr_cpo", "mrdr", "tmle", "stacked_dr")
TRANSPORT_COLUMNS = ["level_source", "borrowed_estimate", "corrected_estimate", "corrected_std_error", "probe_weight",
                     "correction_weight", "transport_bias_sq", "var_transport"]


def _independent_probe_rows(probe: pd.DataFrame, fresh: pd.DataFrame | None) -> int:
    """How many probe rows are not among the policy's fresh draws (matched on prompt_id and draw_idx)."""
    if fresh is None or "draw_idx" not in probe.columns or "draw_idx" not in fresh.columns:
        return len(probe)
    keys = set(zip(fresh["prompt_id"].astype(str), pd.to_numeric(fresh["draw_idx"]).astype(float), strict=True))
    pk = zip(probe["prompt_id"].astype(str), pd.to_numeric(probe["draw_idx"]).astype(float), strict=True)
    return int(sum(k not in keys for k in pk))


def has_own_labels(ctx: EstimationContext, policy: str) -> bool:
    """Whether at least two of the policy's own fresh draws carry oracle labels (nothing is borrowed)."""
    f = ctx.fresh(policy)
    return f is not None and int(f.labelled.sum()) >= 2


@dataclass
class _Pending:
    """A borrowed level row with a probe, waiting for the rule (two passes: the pooled prior needs all).

    ``c`` is the probe-based level the rule uses: C (correction weight 1) or the PPI++ level
    (``ppi_lam`` < 1; rule ``ppi`` or ``transport_correction_weight: tuned``); ``probe_var`` the
    variance of its probe mean.
    """

    i: int
    policy: str
    name: str
    out: EstimatorOutput
    c: Contributions
    moments: LevelMoments
    design: ProbeDesign
    r: np.ndarray
    probe_var: float
    ppi_lam: float


def _rule_for(rule: str, shrinkage: str, audit: TransportAudit | None, force_probe: bool) -> str:
    """Which value a borrowed level with a probe reports: ``corrected``, ``combined``, ``shrunk``, ``precision`` or ``ppi``."""
    if rule == "ppi":
        return "ppi"
    if force_probe:
        return "corrected"
    if rule == "correct":  # today's two-state rule (legacy criterion)
        return "corrected" if audit is not None and audit.legacy_failed else "combined"
    # graded
    if audit is None or audit.state == FAIL:
        return "corrected"
    if audit.state == PASS or shrinkage == "mse":
        return "combined"
    return "precision" if shrinkage == "precision" else "shrunk"


def apply_transport_rule(ctx: EstimationContext, estimates: pd.DataFrame, audits: dict, statuses: dict) -> pd.DataFrame:
    """Add ``TRANSPORT_COLUMNS`` and, under a correcting ``transport_rule``, replace borrowed levels.

    Args:
        ctx: The estimation context (calibration, memoised outputs, config).
        estimates: Rows built by ``estimate_policies`` (one per policy x estimator).
        audits: Policy -> ``TransportAudit`` (``grade_audits``).
        statuses: (policy, estimator) -> row status objects (``refused``, ``warned``, ``reasons``);
            updated in place so that paired differences see the same status.

    Returns:
        ``estimates`` with the extra columns; reported rows carry the rule's value and interval, and
        ``ctx.outputs`` holds the reported contributions (paired differences use them).
    """
    est = estimates.copy()
    for col in TRANSPORT_COLUMNS:
        est[col] = "not_borrowed" if col == "level_source" else np.nan
    est["borrowed_estimate"] = est["estimate"]
    rule, shrinkage = ctx.config.transport_rule, ctx.config.transport_shrinkage
    correct = rule != "refuse"
    probes = ctx.data.probes
    if correct and ctx.cal is not None:
        for p in probes:
            run_estimator(ctx, p, "direct")
    # Borrowed outputs as the estimators produced them (reported ones replace them in ctx.outputs below).
    original = dict(ctx.outputs)
    pending: list[_Pending] = []
    residuals: dict[str, tuple] = {}
    for i, row in est.iterrows():
        policy, name = row["policy"], row["estimator"]
        if name not in LEVEL_ESTIMATORS:
            continue
        if has_own_labels(ctx, policy):
            # Labels of the policy's own responses (the logging policy's calibration slice): the
            # direct residual term and the DR corrections use them; nothing is borrowed.
            est.at[i, "level_source"] = "own_labels"
            continue
        est.at[i, "level_source"] = "borrowed"
        out = original.get((policy, name))
        st = statuses[(policy, name)]
        if not correct or ctx.cal is None or out is None or not np.isfinite(out.estimate) or out.n < 2:
            continue
        probe = probes.get(policy)
        if probe is None or len(probe) < 2:
            if not st.refused:
                st.warned = True
                st.reasons.append("no oracle-labelled probe of this policy (transport audit NOT_CHECKED): the level "
                                  "borrows the logging policy's calibration; transport unverified and not in the CI")
                est.at[i, "status"], est.at[i, "reasons"] = st.status, "; ".join(st.reasons)
            continue
        direct = original[(policy, "direct")]
        if direct.n < 2 or not np.isfinite(direct.estimate) or st.refused:
            continue
        if policy not in residuals:
            r, rk = probe_residuals(ctx, probe)
            residuals[policy] = (r, rk, probe_design(probe, f"probes[{policy}]"))
        r, rk, design = residuals[policy]
        lam, why = 1.0, "one"
        if rule == "ppi" or ctx.config.transport_correction_weight == "tuned":
            y = probe["oracle_label"].to_numpy(dtype=float)
            lam, why = ppi_weight(y, y - r, design.weights, probe["prompt_id"].to_numpy(dtype=object),
                                  len(ctx.data.fresh[policy]), _independent_probe_rows(probe, ctx.data.fresh.get(policy)))
            if why != "tuned":
                st.reasons.append(f"PPI++ weight fell back to 1 ({why})")
        c = probe_corrected(direct, probe, r, rk, design, weight=lam)
        # Variance of the probe mean of Y - lam f(S) = (1 - lam) Y + lam r (the df split of the interval).
        probe_var = design.variance(r if lam == 1.0 else (1 - lam) * probe["oracle_label"].to_numpy(dtype=float) + lam * r)
        b = Contributions(out.estimate, out.psi, out.oua_replicates)
        pending.append(_Pending(i, policy, name, out, c, level_moments(b, c), design, r, probe_var, lam))
    # Empirical-Bayes prior of the transport gaps, per estimator, over the policies whose borrowed level
    # may be reported at all (the rule would not force the probe-corrected value: no FAIL, no REFUSE-LEVEL).
    eligible = [q for q in pending if _rule_for(rule, shrinkage, audits.get(q.policy), statuses[(q.policy, q.name)].force_probe)
                != "corrected"]
    tau2 = {name: pooled_bias_sq([q.moments for q in eligible if q.name == name]) for name in {q.name for q in pending}}
    for q in pending:
        policy, name, out, i = q.policy, q.name, q.out, q.i
        st = statuses[(policy, name)]
        audit = audits.get(policy)
        which = _rule_for(rule, shrinkage, audit, st.force_probe)
        b = q.moments.b
        m = q.design.df + 1
        if which in ("ppi", "corrected"):
            rep = combine_levels(b, q.c, m, q.probe_var, ctx.K, ctx.config.alpha, force_corrected=True,
                                 source="ppi" if which == "ppi" else "probe_corrected", moments=q.moments)
        elif which == "precision":
            # Minimum-variance weight (no estimated gap in it); the gap left enters the interval as under ``pooled``.
            rep = combine_levels(b, q.c, m, q.probe_var, ctx.K, ctx.config.alpha, bias_sq=0.0, source="shrunk",
                                 moments=q.moments, interval_bias_sq=max(q.moments.b2, tau2[name]))
        elif which == "shrunk":
            # Weight from the smaller of the policy's own revealed squared gap and the family's prior
            # variance (an unlucky probe cannot pull the weight beyond what the family supports, nor another
            # policy's large gap beyond what this policy's own probe shows); interval from the larger.
            rep = combine_levels(b, q.c, m, q.probe_var, ctx.K, ctx.config.alpha,
                                 bias_sq=min(q.moments.b2, tau2[name]), source="shrunk", moments=q.moments,
                                 interval_bias_sq=max(q.moments.b2, tau2[name]))
        else:
            rep = combine_levels(b, q.c, m, q.probe_var, ctx.K, ctx.config.alpha, moments=q.moments)
        if audit is not None and which != "ppi" and (audit.state == FAIL if rule == "graded" else audit.legacy_failed):
            st.warned = True
            why = ("" if rule == "graded" else "|mean residual| > margin and its t test rejects; graded ")
            st.reasons.append(f"transport audit failed ({why}{audit.describe()}): reporting the probe-corrected level "
                              f"(borrowed {out.estimate:.3f})")
        est.loc[i, ["estimate", "std_error", "ci_lower", "ci_upper", "df", "var_if", "var_oua", "var_transport"]] = [
            rep.estimate, rep.std_error, rep.ci_lower, rep.ci_upper, rep.df, rep.var_if, rep.var_oua, rep.var_transport]
        est.loc[i, ["level_source", "corrected_estimate", "corrected_std_error", "probe_weight", "correction_weight",
                    "transport_bias_sq"]] = [rep.source, rep.corrected, rep.corrected_se, rep.weight, q.ppi_lam, rep.bias_sq]
        est.at[i, "status"], est.at[i, "reasons"] = st.status, "; ".join(st.reasons)
        k = rep.contributions
        ctx.outputs[(policy, name)] = EstimatorOutput(
            policy, name, k.estimate, k.psi, k.replicates, oracle_n=out.oracle_n + len(q.r), uses_weights=out.uses_weights,
            reasons=list(st.reasons), warned=st.warned, extras={**out.extras, "level_source": rep.source,
                                                               "probe_weight": rep.weight, "ppi_weight": q.ppi_lam})
        est.at[i, "oracle_n"] = out.oracle_n + len(q.r)
    return est