"""``estimate_policies``: calibration, every requested estimator, intervals, gates and differences.

Transport audit (``audit.grade_audits``, formulas in ``audit.py``): per policy with a probe, a
graded equivalence test of the mean probe residual against the margin ``transport_margin`` with
prompt-clustered SEs, Holm-adjusted across the audited policies: PASS / FAIL / INCONCLUSIVE /
NOT_GRADED (fewer than ``transport_min_clusters`` effective prompts) / NOT_CHECKED (no probe). A FAIL
refuses the policy's calibrated rows under ``transport_rule="refuse"``; under the correcting rules
(``correct``, ``graded``, ``ppi``) direct/DR rows report a probe-based level instead (``transport.py``;
column ``level_source``). Rows of the naive estimator are never refused by the audit
(they do not use the calibration) but are always ``warning`` (judge scale).

Gates (thresholds in ``Gates``): IPS-type rows are refused when the ESS fraction of the weights they
use is below ``ess_refuse`` and warned below ``ess_warn``; a raw-weight Hill index below
``hill_warn`` warns SNIPS; judge-score overlap below ``overlap_warn`` warns direct and DR rows;
fewer than ``min_labels`` oracle labels, or oracle labels that are all equal, refuse all calibrated
rows. REFUSE-LEVEL (CJE paper coverage badge): a calibrated row is refused when a share >=
``out_of_range_refuse`` (5%) of the judge scores it applies the calibration to lies outside
[min S, max S] of the labelled slice the calibration was fitted on (the policy's fresh draws for
direct and DR rows, the logged rows for IPS rows):
share = #{S_j < min S_L or S_j > max S_L} / #{j}. The gate is about levels that rest on the
calibration's extrapolation: direct/DR rows of a policy with labels of its own responses (its
residual term corrects f wherever f extrapolates) are exempt, and under ``transport_rule="correct"``
a policy with an oracle probe reports its probe-corrected level (C = theta_direct + mean probe
residual, unbiased whatever f is; status ``warning``) instead of being refused.

Paired differences theta_A - theta_B (same estimator) use the prompts both policies' contributions
share: estimate = mean_g (psi_A,g - psi_B,g), cluster SE of that difference, OUA replicates
theta_A,k - theta_B,k, and the same Satterthwaite t interval as the levels.

Cluster bootstrap (``n_bootstrap`` > 0, ``bootstrap.py``): the reported SE is the bootstrap SD and
the CI the percentile interval (replacing the IF/OUA interval for those rows); dropped replicates, or
too few to use, are reasons on the row (status ``warning``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from arena_cje.cje.bootstrap import cluster_bootstrap
from arena_cje.cje.calibration import CalibrationDiagnostics, CrossFitCalibration, fit_calibration
from arena_cje.cje.comparisons import COMPARISON_COLUMNS, DECISION_COLUMNS, compare_policies, t_test_p_value
from arena_cje.cje.config import EstimationConfig
from arena_cje.cje.data import CJEDataset
from arena_cje.cje.context import EstimationContext
from arena_cje.cje.estimators import EstimatorOutput, run_estimator
from arena_cje.cje.inference import t_interval
from arena_cje.cje.audit import (  # noqa: F401  (TransportAudit, transport_audit re-exported)
    FAIL,
    TransportAudit,
    grade_audits,
    transport_audit,
)
from arena_cje.cje.transport import LEVEL_ESTIMATORS, apply_transport_rule, has_own_labels
from arena_cje.cje.weight_diagnostics import WeightDiagnostics, judge_overlap

#: The leading columns of ``EstimationResult.estimates`` (followed by var_if, var_oua, df and
#: ``transport.TRANSPORT_COLUMNS``); the pipeline's table for people adds the true value to them.
ESTIMATE_COLUMNS = ["policy", "estimator", "estimate", "std_error", "ci_lower", "ci_upper", "n", "oracle_n",
                    "status", "reasons", "ess_fraction"]
DIFFERENCE_COLUMNS = ["policy", "baseline", "estimator", "estimate", "std_error", "ci_lower", "ci_upper", "df",
                      "p_value", "n", "status", "reasons"]


@dataclass
class EstimationResult:
    """Everything ``estimate_policies`` produces.

    Attributes:
        estimates: One row per (policy, estimator); columns ``ESTIMATE_COLUMNS`` plus var_if,
            var_oua, df (the variance decomposition and t degrees of freedom).
        differences: Paired differences; columns ``DIFFERENCE_COLUMNS``.
        calibration: Calibration diagnostics (None when there were too few labels).
        weights: Per-policy weight diagnostics (policies with log-probs).
        transport: Probe audits, one per policy with a probe.
        comparisons: Every pair of policies per estimator with raw, BH and Bonferroni p-values
            (``comparisons.COMPARISON_COLUMNS``).
        decisions: Per estimator: best policy, runner-up, their difference and whether the
            decision is ready (``comparisons.DECISION_COLUMNS``).
        outputs: Raw estimator outputs (influence contributions), keyed by (policy, estimator).
        config: The settings that produced this result (readers take alpha, gates, ... from here).
    """

    estimates: pd.DataFrame
    differences: pd.DataFrame
    calibration: CalibrationDiagnostics | None
    weights: dict[str, WeightDiagnostics]
    transport: dict[str, TransportAudit] = field(default_factory=dict)
    comparisons: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COMPARISON_COLUMNS))
    decisions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS))
    outputs: dict[tuple[str, str], EstimatorOutput] = field(default_factory=dict, repr=False)
    config: EstimationConfig | None = None

    @property
    def weights_table(self) -> pd.DataFrame:
        """Weight diagnostics as a flat table (one row per policy)."""
        return pd.DataFrame([w.as_row() for w in self.weights.values()])

    @property
    def transport_table(self) -> pd.DataFrame:
        return pd.DataFrame([a.as_row() for a in self.transport.values()])


@dataclass
class RowStatus:
    """Status of one estimate row: the estimator's own reasons plus the gates' (outputs stay untouched)."""

    refused: bool
    warned: bool
    reasons: list[str]
    force_probe: bool = False  # REFUSE-LEVEL on a borrowed level with a probe: report the probe-corrected value

    @property
    def status(self) -> str:
        return "refused" if self.refused else ("warning" if self.warned or self.reasons else "ok")


def _row_ess(d: WeightDiagnostics, name: str) -> float:
    """ESS fraction of the weights estimator ``name`` uses: raw for snips, SIMCal for the others."""
    return d.ess_raw if name == "snips" else d.ess_simcal


def _apply_gates(est: EstimatorOutput, ctx: EstimationContext, audit: TransportAudit | None) -> RowStatus:
    """Combine the estimator's own flags with the diagnostic gates and the transport audit."""
    out = RowStatus(est.refused, est.warned, list(est.reasons))
    g = ctx.config.gates
    name = est.estimator
    if out.refused:
        return out
    if name != "naive" and ctx.cal is not None and ctx.cal.diagnostics.n_labelled < g.min_labels:
        out.refused = True
        out.reasons.append(f"only {ctx.cal.diagnostics.n_labelled} oracle labels (< {g.min_labels})")
    labels = ctx.data.logged["oracle_label"].dropna()
    if name != "naive" and len(labels) and labels.nunique() == 1:
        # A constant oracle carries no information: every calibrated value would be that constant
        # with a zero standard error, which reads as certainty.
        out.refused = True
        out.reasons.append(f"all {len(labels)} oracle labels equal {labels.iloc[0]:g}: the calibration cannot "
                           "tell better responses from worse")
    pw = ctx.weights(est.policy) if est.uses_weights else None
    if pw is not None:
        d = pw.diagnostics
        ess = _row_ess(d, name)
        label = "raw" if name == "snips" else "SIMCal"
        if name in ("snips", "calibrated_ips") and ess < g.ess_refuse:
            out.refused = True
            out.reasons.append(f"{label} ESS fraction {ess:.3f} < {g.ess_refuse}")
        elif ess < g.ess_warn:
            out.warned = True
            out.reasons.append(f"{label} ESS fraction {ess:.3f} < {g.ess_warn}")
        if name == "snips" and np.isfinite(d.hill_alpha) and d.hill_alpha < g.hill_warn:
            out.warned = True
            out.reasons.append(f"heavy-tailed weights: Hill index {d.hill_alpha:.2f} < {g.hill_warn}")
    if name in LEVEL_ESTIMATORS:
        f = ctx.fresh(est.policy)
        if f is not None:
            ov = judge_overlap(ctx.judge, f.judge)
            if ov < g.overlap_warn:
                out.warned = True
                out.reasons.append(f"judge-score overlap logged vs fresh {ov:.2f} < {g.overlap_warn}")
    # Under a correcting transport_rule a failed audit makes level rows report the probe-corrected value
    # (transport.py) instead of refusing them.
    corrected = ctx.config.transport_rule != "refuse" and name in LEVEL_ESTIMATORS
    probed = audit is not None and audit.state != "NOT_CHECKED"
    if name != "naive" and ctx.cal is not None:
        share, where = _out_of_range(ctx, est.policy, name)
        own = name in LEVEL_ESTIMATORS and has_own_labels(ctx, est.policy)
        if share >= g.out_of_range_refuse and not own:
            lo, hi = ctx.cal.diagnostics.judge_range
            text = (f"REFUSE-LEVEL: {share:.1%} of the {where} judge scores lie outside the range "
                    f"[{lo:g}, {hi:g}] the calibration was fitted on (>= {g.out_of_range_refuse:.0%})")
            if corrected and probed:
                out.warned, out.force_probe = True, True
                out.reasons.append(text + ": the borrowed level is not reported")
            else:
                out.refused = True
                out.reasons.append(text)
    if audit is not None and name != "naive" and audit.state == FAIL and not corrected:
        out.refused = True
        out.reasons.append(f"transport audit failed: {audit.describe()}")
    return out


def out_of_range_share(scores: np.ndarray, lo: float, hi: float) -> float:
    """Share of finite ``scores`` outside [lo, hi] (NaN when there are none)."""
    s = np.asarray(scores, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan")
    tol = 1e-9 * max(1.0, abs(hi - lo))  # judge grids survive rescaling up to rounding
    return float(np.mean((s < lo - tol) | (s > hi + tol)))


def _out_of_range(ctx: EstimationContext, policy: str, name: str) -> tuple[float, str]:
    """(share, which scores) of the judge scores row (policy, name) applies the calibration to (module docstring)."""
    lo, hi = ctx.cal.diagnostics.judge_range
    parts = []
    f = ctx.fresh(policy)
    if name in LEVEL_ESTIMATORS and f is not None:
        parts.append((out_of_range_share(f.judge, lo, hi), "fresh-draw"))
    if name in ("snips", "calibrated_ips") or (name in LEVEL_ESTIMATORS and f is None):
        parts.append((out_of_range_share(ctx.logged["judge_score"].to_numpy(dtype=float), lo, hi), "logged"))
    return max((p for p in parts if np.isfinite(p[0])), default=(0.0, ""))


@dataclass
class BorrowedEstimates:
    """Everything before the transport rule: the context, graded audits, row statuses and the estimates as
    the estimators produced them (``borrowed_estimates``; ``estimate_policies`` then applies the rule)."""

    ctx: EstimationContext
    audits: dict[str, TransportAudit]
    statuses: dict[tuple[str, str], "RowStatus"]
    estimates: pd.DataFrame


def borrowed_estimates(data: CJEDataset, config: EstimationConfig) -> BorrowedEstimates:
    """Calibrate, grade the transport audits, run every estimator, apply the gates and build the rows.

    The first half of ``estimate_policies`` (before ``transport.apply_transport_rule``), separate so a
    study can apply several reporting rules to one fit (``benchmarks/probe_study.py``).
    """
    cal: CrossFitCalibration | None
    cal_error = None
    try:
        cal = fit_calibration(data.logged, config.n_folds, config.calibrator, data.covariates, config.reliability_bins)
    except ValueError as e:
        cal, cal_error = None, str(e)
    ctx = EstimationContext(data, config, cal)
    audits = {}
    if cal is not None:
        unprobed = [p for p in data.policies if ctx.fresh(p) is not None and not has_own_labels(ctx, p)]
        audits = grade_audits(data.probes, cal, config.transport_margin, config.alpha, config.transport_min_clusters,
                              unprobed)

    rows = []
    statuses: dict[tuple[str, str], RowStatus] = {}
    for policy in data.policies:
        for name in config.estimators:
            out = run_estimator(ctx, policy, name)
            st = _apply_gates(out, ctx, audits.get(policy))
            if cal_error and st.refused and not any(cal_error in r for r in st.reasons):
                st.reasons.append(cal_error)
            statuses[(policy, name)] = st
            if out.n >= 2 and np.isfinite(out.estimate):
                iv = t_interval(out.estimate, out.psi.to_numpy(), out.oua_replicates, config.alpha,
                                out.extras.get("sampling_jackknife"))
                se, lo, hi, v_if, v_oua, df = iv.std_error, iv.ci_lower, iv.ci_upper, iv.var_if, iv.var_oua, iv.df
                if config.n_bootstrap > 0 and name != "naive" and not st.refused:
                    boot = cluster_bootstrap(data, config, policy, name)
                    reps = boot.estimates
                    if boot.reasons:
                        st.warned = True
                        st.reasons.extend(boot.reasons)
                    if boot.usable:
                        se = float(reps.std(ddof=1))
                        lo, hi = (float(x) for x in np.quantile(reps, [config.alpha / 2, 1 - config.alpha / 2]))
                        out.extras["bootstrap_replicates"] = int(reps.size)
            else:
                se = lo = hi = v_if = v_oua = df = float("nan")
            ess = float("nan")
            if out.uses_weights and ctx.weights(policy) is not None:
                ess = _row_ess(ctx.weights(policy).diagnostics, name)
            rows.append({
                "policy": policy, "estimator": name, "estimate": out.estimate, "std_error": se,
                "ci_lower": lo, "ci_upper": hi, "n": out.n, "oracle_n": out.oracle_n,
                "status": st.status, "reasons": "; ".join(st.reasons), "ess_fraction": ess,
                "var_if": v_if, "var_oua": v_oua, "df": df,
            })
    estimates = pd.DataFrame(rows, columns=ESTIMATE_COLUMNS + ["var_if", "var_oua", "df"])
    return BorrowedEstimates(ctx, audits, statuses, estimates)


def estimate_policies(data: CJEDataset, config: EstimationConfig) -> EstimationResult:
    """Calibrate, run every requested estimator for every policy, and build the result tables.

    Args:
        data: Validated dataset (``CJEDataset.from_frames``).
        config: Estimation settings (``EstimationConfig.from_params``).

    Returns:
        :class:`EstimationResult` (estimates, differences, calibration, weights, transport audits).
    """
    pre = borrowed_estimates(data, config)
    ctx, audits, statuses, cal = pre.ctx, pre.audits, pre.statuses, pre.ctx.cal
    estimates = apply_transport_rule(ctx, pre.estimates, audits, statuses)
    all_pairs = paired_differences(ctx, data.policies, config, statuses, baseline=None)
    differences = (all_pairs if config.baseline is None
                   else paired_differences(ctx, data.policies, config, statuses, baseline=config.baseline))
    compared = compare_policies(all_pairs, estimates, config.alpha)
    weights = {p: ctx.weights(p).diagnostics for p in data.policies if ctx.weights(p) is not None}
    return EstimationResult(
        estimates=estimates,
        differences=differences,
        calibration=cal.diagnostics if cal is not None else None,
        weights=weights,
        transport=audits,
        comparisons=compared.table,
        decisions=compared.decisions,
        outputs=dict(ctx.outputs),
        config=config,
    )


def paired_differences(ctx: EstimationContext, policies: list[str], config: EstimationConfig,
                       statuses: dict[tuple[str, str], RowStatus], baseline: str | None) -> pd.DataFrame:
    """theta_A - theta_B on shared prompts for each estimator (module docstring).

    ``baseline``: every other policy against it; None: all pairs (A before B in ``policies``).
    """
    if baseline is not None:
        pairs = [(p, baseline) for p in policies if p != baseline]
    else:
        pairs = [(a, b) for i, a in enumerate(policies) for b in policies[i + 1:]]
    rows = []
    for name in config.estimators:
        for a, b in pairs:
            oa, ob = ctx.outputs.get((a, name)), ctx.outputs.get((b, name))
            if oa is None or ob is None or not (np.isfinite(oa.estimate) and np.isfinite(ob.estimate)):
                continue
            if oa.psi.index.equals(ob.psi.index):  # the usual case: both on the same prompts, same order
                shared = oa.psi.index
                d = oa.psi.to_numpy() - ob.psi.to_numpy()
            else:
                shared = oa.psi.index.intersection(ob.psi.index)
                d = oa.psi.reindex(shared).to_numpy() - ob.psi.reindex(shared).to_numpy()
            if len(shared) < 2:
                continue
            reps = None
            if oa.oua_replicates is not None and ob.oua_replicates is not None:
                reps = oa.oua_replicates - ob.oua_replicates
            iv = t_interval(float(d.mean()), d, reps, config.alpha)
            sa, sb = statuses[(a, name)], statuses[(b, name)]
            reasons = [f"{a}: {r}" for r in sa.reasons] + [f"{b}: {r}" for r in sb.reasons]
            status = "refused" if (sa.refused or sb.refused) else ("warning" if reasons else "ok")
            rows.append({"policy": a, "baseline": b, "estimator": name, "estimate": iv.estimate, "std_error": iv.std_error,
                         "ci_lower": iv.ci_lower, "ci_upper": iv.ci_upper, "df": iv.df,
                         "p_value": t_test_p_value(iv.estimate, iv.std_error, iv.df), "n": int(len(shared)),
                         "status": status, "reasons": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)
