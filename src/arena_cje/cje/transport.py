"""Probe-corrected levels and the reporting rule for estimates that borrow another policy's calibration.

A level estimator that applies the judge -> oracle calibration f (learned on the logging policy's
labels) to a target policy's responses (``direct``, the DR family, ``stacked_dr``) *borrows* that
calibration: it is unbiased only if E[Y - f(S)] = 0 under the target policy (transport). An
oracle-labelled probe of the target's own responses (m rows j, prompts g(j)) measures the
transport gap delta = E_target[Y - f(S)] directly.

Estimates (all with per-prompt contributions psi_g, mean = estimate, and OUA replicates theta_k
recomputed with the delete-one-fold calibrator f^(-k), as in ``inference.py``):

* **borrowed** B: the estimator's own row (theta_E, psi_E, theta_E,k).
* **probe-corrected** C = (calibrated mean of the target's fresh draws) + (probe mean residual):
  C = theta_direct + delta_hat, delta_hat = (1/m) sum_j (Y_j - f^(-k(j))(S_j)). It is a two-phase
  sampling estimator on the target's own responses, unbiased whatever f is. Its contributions on
  the union U of prompts: psi_C,g = (|U|/G) psi_direct,g + delta_hat + (|U|/m) sum_{j in g} (r_j - delta_hat)
  (absent terms are 0; the ratio form of the fixed-size probe mean), so mean_U psi_C = C; replicates C_k = theta_direct,k + mean_j (Y_j - f^(-k)(S_j)).
  Because the probe residual is taken against the same f, the calibration error largely cancels in
  C (its OUA variance is small) while the probe adds sampling variance var(r)/m.
* **combined** theta_lambda = B + lambda d_hat with d_hat = C - B, lambda in [0, 1] minimising the
  mean squared error when B may carry a transport bias b = E[d_hat]:

      MSE(lambda) = V_B + 2 lambda Cov(B, d) + lambda^2 V_d + (1 - lambda)^2 b^2,
      lambda* = (b^2 - Cov(B, d)) / (V_d + b^2),   Cov(B, d) = Cov_BC - V_B,  V_d = V_B + V_C - 2 Cov_BC,

  with b^2 estimated without bias by b2_hat = max(0, d_hat^2 - V_d) (the squared bias the probe
  reveals beyond its own noise). With b2_hat = 0 this is the minimum-variance (precision-weighted,
  covariance-aware) combination of B and C; the larger the revealed gap, the more weight C gets.
  Variances and covariances: cluster (prompt) covariance of the two contribution vectors embedded
  on U, plus the jackknife covariance (K-1)/K sum_k (B_k - B_bar)(C_k - C_bar) of the replicates.

Stratified probes (``inclusion_prob``): the probe mean, its variance and the probe term of the
contributions use the probe design's Horvitz-Thompson weights (``audit.py``, "Stratified probes").

Interval of the reported value: V = Var(B + lambda d_hat) + (1 - lambda)^2 b2_hat (the
transport uncertainty the probe reveals enters as the unremoved squared bias); t interval with
Welch-Satterthwaite df over the components (fresh/logged part G - 1 df, probe part m - 1 df,
OUA part K - 1 df, bias term m - 1 df).

The graded transport audit (states PASS / FAIL / INCONCLUSIVE / NOT_GRADED / NOT_CHECKED, TOST
p-values, Holm family) that the ``graded`` rule reads: ``audit.py``.

Reporting rule (``EstimationConfig.transport_rule``), for borrowed level rows of a policy with a probe:

* ``graded``: FAIL, or REFUSE-LEVEL fired on the borrowed level (>= 5% of the policy's judge scores
  outside the calibrated range, ``api.py``) -> C (``probe_corrected``, status ``warning``); PASS ->
  theta_lambda (``combined``); INCONCLUSIVE / NOT_GRADED -> ``transport_shrinkage``: ``mse`` = theta_lambda
  as for PASS, or ``pooled`` = an empirical-Bayes shrinkage (``shrunk``): the policies' gaps are
  treated as draws from a prior of variance tau^2, estimated by the method of moments over the
  policies of the estimator whose borrowed level may be reported (no FAIL, no REFUSE-LEVEL),
  tau2_hat = max(0, mean_p (d_hat_p^2 - V_d,p)); policy p's weight is lambda* with
  b^2 = min(b2_hat_p, tau2_hat) (its own revealed squared gap, capped by the family's: with two or
  three policies the pooled moment is itself noisy, and one adversarial policy would otherwise pull
  every benign policy's weight toward its probe), and its interval adds
  (1 - lambda)^2 max(b2_hat_p, tau2_hat) (the larger of the two estimates of the squared gap left);
  or ``precision`` (the default; ``shrunk``): lambda* with b^2 = 0, the covariance-aware
  minimum-variance weight (Var(B) - Cov_BC) / V_d: the gap the audit could not grade enters the
  interval only, with the same (1 - lambda)^2 max(b2_hat_p, tau2_hat) as ``pooled``. Why: b2_hat_p and
  tau2_hat are noisy (b2_hat_p has SD ~ sqrt(2) V_d when the gap is 0, and tau2_hat averages two or
  three policies), and a noisy squared gap in the weight adds more variance than the bias it removes
  while b^2 <~ V_d. A gap beyond the margin is FAIL (lambda = 1); an INCONCLUSIVE large gap keeps the
  minimum-variance weight and its unremoved square in the interval (on the Arena sample the
  adversarial policy's INCONCLUSIVE draws get lambda 0.4-1 from Var(B) alone, its calibration
  extrapolating). Chosen by the probe study (docs/statistics.md).
* ``correct`` (the rule before the graded audit): C when |delta_hat| > margin and the t test of
  delta = 0 rejects (``TransportAudit.legacy_failed``) or REFUSE-LEVEL fired, theta_lambda otherwise.
* ``ppi``: the PPI++ level (Angelopoulos, Duchi & Zrnic 2023) whatever the audit says:
  theta_PPI = lam theta_direct + HT-mean_j (Y_j - lam f(S_j)) with the power-tuned lam of
  ``ppi_weight`` (lam = 1 is C; lam = 0 the probe's label mean), contributions and replicates as
  for C with r_j replaced by Y_j - lam f_j; lam is treated as fixed in the interval.
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
from scipy import stats

from arena_cje.cje.audit import FAIL, PASS, ProbeDesign, TransportAudit, probe_design, probe_residuals
from arena_cje.cje.context import EstimationContext
from arena_cje.cje.estimators import EstimatorOutput, run_estimator
from arena_cje.cje.inference import cluster_covariance, jackknife_covariance, jackknife_variance, welch_satterthwaite

LEVEL_ESTIMATORS = ("direct", "dr_cpo", "mrdr", "tmle", "stacked_dr")
TRANSPORT_COLUMNS = ["level_source", "borrowed_estimate", "corrected_estimate", "corrected_std_error", "probe_weight",
                     "correction_weight", "transport_bias_sq", "var_transport"]


@dataclass(frozen=True)
class Contributions:
    """An estimate as per-prompt contributions and OUA replicates."""

    estimate: float
    psi: pd.Series
    replicates: np.ndarray | None


@dataclass(frozen=True)
class LevelReport:
    """Reported level of one (policy, estimator) row under the reporting rule (module docstring).

    Attributes:
        source: ``probe_corrected``, ``combined``, ``borrowed`` or ``own_labels``.
        estimate, std_error, ci_lower, ci_upper, df: The reported value and its t interval.
        borrowed: theta_E (the estimator's own value).
        corrected: C (NaN without a probe); corrected_se its standard error.
        weight: lambda (weight of the probe-corrected value; 1 = fully corrected).
        bias_sq: b2_hat, the squared transport gap of B revealed beyond noise.
        var_if, var_oua, var_transport: Variance parts of the reported value (cluster IF, OUA
            jackknife, unremoved squared transport gap (1 - lambda)^2 b2_hat).
        contributions: psi and replicates of the reported value (for paired differences).
    """

    source: str
    estimate: float
    std_error: float
    ci_lower: float
    ci_upper: float
    df: float
    borrowed: float
    corrected: float
    corrected_se: float
    weight: float
    bias_sq: float
    var_if: float
    var_oua: float
    var_transport: float
    contributions: Contributions | None



def probe_corrected(direct: EstimatorOutput, probe: pd.DataFrame, r: np.ndarray, rk: np.ndarray | None,
                    design: ProbeDesign | None = None, weight: float = 1.0) -> Contributions:
    """C(lam) = lam theta_direct + (HT-weighted) mean_j (Y_j - lam f(S_j)) as contributions on the union of prompts.

    ``weight`` lam = 1 (default) is the probe-corrected level C = theta_direct + mean_j r_j (module
    docstring); another lam is the PPI++ level (``ppi_weight``): the probe term becomes
    Y_j - lam f_j = (1 - lam) Y_j + lam r_j and the fresh-draw term lam psi_direct.
    """
    design = design or probe_design(probe)
    m = len(r)
    if weight != 1.0:
        y = probe["oracle_label"].to_numpy(dtype=float)
        r = (1 - weight) * y + weight * r
        rk = None if rk is None else (1 - weight) * y + weight * rk
    pid = probe["prompt_id"].to_numpy(dtype=object)
    codes, uniq = pd.factorize(pid)
    # Hajek (ratio) form of the probe mean: centred residuals, so the fixed-size probe contributes
    # var(r)/m and not E[r^2]/m (the squared gap is a mean, not noise); stratified: centred per stratum.
    rbar = design.mean(r)
    rho = pd.Series(np.bincount(codes, weights=design.centred(r), minlength=len(uniq)), index=pd.Index(uniq, name="prompt_id"))
    idx = direct.psi.index.union(rho.index)
    psi = pd.Series(rbar, index=idx).add(weight * len(idx) / len(direct.psi) * direct.psi, fill_value=0.0)
    psi = psi.add(len(idx) / m * rho, fill_value=0.0)
    reps = None
    if direct.oua_replicates is not None and rk is not None:
        reps = weight * direct.oua_replicates + rk @ design.weights
    return Contributions(float(weight * direct.estimate + rbar), psi, reps)


# ----------------------------------------------------------------------------------------------
# PPI++ power-tuned weight
# ----------------------------------------------------------------------------------------------

PPI_MIN_CLUSTERS = 20
PPI_MIN_MINORITY = 5


def ppi_weight(y: np.ndarray, f: np.ndarray, weights: np.ndarray, clusters: np.ndarray, n_fresh: int,
               n_independent: int) -> tuple[float, str]:
    """PPI++ power-tuned weight lam on the calibrated prediction, clipped to [0, 1], and why (module docstring).

    lam = Cov_w(f, Y) / ((1 + n_ind / N) Var_w(f)) on the probe (weights ``weights``: the normalised
    HT weights), N = number of fresh draws of the policy, n_ind = probe rows that are NOT among them
    (Angelopoulos, Duchi & Zrnic 2023, "PPI++", mean estimation: lam = Cov / ((1 + n/N) Var) for an
    independent labelled sample; for a probe drawn from the fresh draws themselves the variance of
    lam mean_N f + mean_n (Y - lam f) is minimised by the plain slope Cov / Var, i.e. n_ind = 0).
    Falls back to lam = 1 (the plain probe correction) with fewer than ``PPI_MIN_CLUSTERS`` probe
    prompts, fewer than ``PPI_MIN_MINORITY`` probe prompts whose label differs from the most common
    one (the slope is then noise), or predictions without variance (as cje-eval 0.9.3 does).

    Returns:
        (lam, reason): reason ``tuned``, ``too_few_clusters``, ``rare_outcome`` or ``constant_predictions``.
    """
    y, f, w = (np.asarray(a, dtype=float) for a in (y, f, weights))
    clusters = np.asarray(clusters, dtype=object)
    if len(pd.unique(clusters)) < PPI_MIN_CLUSTERS:
        return 1.0, "too_few_clusters"
    rounded = np.round(y, 6)
    per_value = pd.Series(clusters).groupby(rounded).nunique()
    modal = per_value.idxmax()
    if len(pd.unique(clusters[rounded != modal])) < PPI_MIN_MINORITY:
        return 1.0, "rare_outcome"
    fc = f - np.average(f, weights=w)
    var_f = float(np.average(fc**2, weights=w))
    if not np.isfinite(var_f) or var_f <= 1e-12:
        return 1.0, "constant_predictions"
    cov = float(np.average(fc * (y - np.average(y, weights=w)), weights=w))
    factor = 1.0 + n_independent / max(n_fresh, 1)
    return float(np.clip(cov / (factor * var_f), 0.0, 1.0)), "tuned"


def _independent_probe_rows(probe: pd.DataFrame, fresh: pd.DataFrame | None) -> int:
    """How many probe rows are not among the policy's fresh draws (matched on prompt_id and draw_idx)."""
    if fresh is None or "draw_idx" not in probe.columns or "draw_idx" not in fresh.columns:
        return len(probe)
    keys = set(zip(fresh["prompt_id"].astype(str), pd.to_numeric(fresh["draw_idx"]).astype(float), strict=True))
    pk = zip(probe["prompt_id"].astype(str), pd.to_numeric(probe["draw_idx"]).astype(float), strict=True)
    return int(sum(k not in keys for k in pk))


# ----------------------------------------------------------------------------------------------
# Combining borrowed and probe-corrected levels
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelMoments:
    """B and C embedded on the union U of their prompts, with their (co)variances (module docstring).

    Attributes:
        index: U. pb, pc: contributions of B and C on U (scaled by |U|/G so each averages to its estimate).
        vb, vc, cbc: Var(B), Var(C), Cov(B, C) (cluster + jackknife).
        d: d_hat = C - B. vd: Var(d_hat). b2: b2_hat = max(0, d_hat^2 - V_d).
    """

    b: Contributions
    c: Contributions
    index: pd.Index
    pb: np.ndarray
    pc: np.ndarray
    vb: float
    vc: float
    cbc: float
    d: float
    vd: float
    b2: float


def level_moments(b: Contributions, c: Contributions) -> LevelMoments:
    """Align B and C on the union of their prompts and compute the moments the weights need."""
    idx = b.psi.index if b.psi.index.equals(c.psi.index) else b.psi.index.union(c.psi.index)
    pb = b.psi.reindex(idx, fill_value=0.0).to_numpy(dtype=float) * (len(idx) / len(b.psi))
    pc = c.psi.reindex(idx, fill_value=0.0).to_numpy(dtype=float) * (len(idx) / len(c.psi))
    vb = cluster_covariance(pb, pb) + jackknife_covariance(b.replicates, b.replicates)
    vc = cluster_covariance(pc, pc) + jackknife_covariance(c.replicates, c.replicates)
    cbc = cluster_covariance(pb, pc) + jackknife_covariance(b.replicates, c.replicates)
    d = c.estimate - b.estimate
    vd = max(vb + vc - 2 * cbc, 0.0)
    return LevelMoments(b, c, idx, pb, pc, vb, vc, cbc, d, vd, max(0.0, d**2 - vd))


def optimal_weight(mo: LevelMoments, bias_sq: float) -> float:
    """lam* = (b^2 - Cov(B, d)) / (V_d + b^2) clipped to [0, 1], Cov(B, d) = Cov_BC - V_B (module docstring)."""
    if mo.vd + bias_sq <= 0:
        return 0.0
    return float(np.clip((bias_sq + mo.vb - mo.cbc) / (mo.vd + bias_sq), 0.0, 1.0))


def pooled_bias_sq(moments: list[LevelMoments]) -> float:
    """Empirical-Bayes prior variance of the transport gaps: tau^2 = max(0, mean_p (d_p^2 - V_d,p)) (module docstring)."""
    vals = [mo.d**2 - mo.vd for mo in moments if np.isfinite(mo.d) and np.isfinite(mo.vd)]
    return float(max(0.0, np.mean(vals))) if vals else 0.0


def combine_levels(b: Contributions, c: Contributions, m: int, probe_var: float, n_folds: int, alpha: float,
                   force_corrected: bool = False, bias_sq: float | None = None, source: str | None = None,
                   moments: LevelMoments | None = None, interval_bias_sq: float | None = None) -> LevelReport:
    """Report B + lam (C - B) with its interval (module docstring).

    Args:
        b: Borrowed estimate.
        c: Probe-corrected estimate (or the PPI++ level).
        m: Probe size (df of the probe and bias terms).
        probe_var: Variance of the probe mean, the probe term's share of Var(C) (for the df split only).
        n_folds: K (df of the OUA part is K - 1).
        alpha: 1 - CI level.
        force_corrected: lam = 1 (audit FAIL, REFUSE-LEVEL, the PPI++ rule).
        bias_sq: The squared transport gap of B used for lam and (unless ``interval_bias_sq``) for the
            unremoved-bias variance term: None = this policy's own b2_hat (``combined``); the
            ``pooled`` shrinkage passes min(b2_hat, tau^2) (``pooled_bias_sq``).
        source: ``level_source`` to record (default ``probe_corrected`` / ``combined``).
        moments: Precomputed ``level_moments(b, c)``.
        interval_bias_sq: The squared gap whose unremoved share (1 - lam)^2 enters the variance, when it
            differs from the one that sets lam (default ``bias_sq``).
    """
    mo = moments or level_moments(b, c)
    b2 = mo.b2 if bias_sq is None else float(bias_sq)
    lam = 1.0 if force_corrected else optimal_weight(mo, b2)
    est = b.estimate + lam * mo.d
    psi = (1 - lam) * mo.pb + lam * mo.pc
    reps = None
    if b.replicates is not None and c.replicates is not None:
        reps = (1 - lam) * b.replicates + lam * c.replicates
    v_if = cluster_covariance(psi, psi)
    v_oua = jackknife_variance(reps)
    v_bias = (1 - lam) ** 2 * (b2 if interval_bias_sq is None else float(interval_bias_sq))
    v = v_if + v_oua + v_bias
    # df split: the probe term of psi has m - 1 df, the rest G - 1.
    probe_part = min(lam**2 * probe_var, v_if)
    df = welch_satterthwaite([(v_if - probe_part, len(psi) - 1), (probe_part, m - 1), (v_oua, n_folds - 1),
                              (v_bias, m - 1)])
    se = float(np.sqrt(v))
    q = float(stats.t.ppf(1 - alpha / 2, df)) if np.isfinite(df) else float(stats.norm.ppf(1 - alpha / 2))
    source = source or ("probe_corrected" if force_corrected else "combined")
    return LevelReport(source, float(est), se, est - q * se, est + q * se, df, b.estimate, c.estimate,
                       float(np.sqrt(mo.vc)), lam, b2, v_if, v_oua, v_bias,
                       Contributions(float(est), pd.Series(psi, index=mo.index), reps))


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
