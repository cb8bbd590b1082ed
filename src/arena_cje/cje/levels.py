"""Candidate levels of a target policy that borrows the logging policy's calibration, and their combination.

A level estimator that applies the judge -> oracle calibration f (learned on the logging policy's
labels) to a target policy's responses (``direct``, the DR family, ``stacked_dr``) *borrows* that
calibration; an oracle-labelled probe of the target's own responses (m rows j, prompts g(j))
measures the transport gap delta = E_target[Y - f(S)] directly (``transport.py``, ``audit.py``).
This module builds the candidate levels and combines them; which one is reported is the rule of
``transport.py``.

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

Interval of the reported value theta_lambda (bias-aware; ``inference.bias_aware_critical_value``):
its sampling variance s^2 = Var(B + lambda d_hat) (cluster IF + OUA jackknife) with Welch-Satterthwaite
df over the components (fresh/logged part G - 1 df, probe part m - 1 df, OUA part K - 1 df), and a
bound on its remaining transport bias (1 - lambda) |b|,

    M = (1 - lambda) sqrt(max(d_hat^2, b_I^2)),   half-width = cv_alpha(M / s, df) s,

with b_I^2 the squared gap the rule assigns to the interval (b2_hat, or max(b2_hat, tau2_hat) for the
shrinkages of ``transport.py``) and cv the 1 - alpha quantile of |M / s + T_df| (Armstrong & Kolesar
2020). d_hat^2 and not b2_hat is the plug-in for b^2 because b2_hat = max(0, d_hat^2 - V_d) is 0
whenever the gap is within the probe's noise, which with 50 labels is most draws even for a real
gap of 0.02 (V_d ~ 0.027^2): the interval then carried no transport term and under-covered
(probe study, docs/statistics.md); E d_hat^2 = b^2 + V_d errs wide instead, and the folded critical
value (shorter than t sqrt(s^2 + M^2) for every M > 0) pays for it. lambda = 1 (probe-corrected) has
M = 0: the plain t interval. ``std_error`` is the effective SE half-width / t_{1-alpha/2, df} (so the
row's interval is estimate +/- t se like every other row) and ``var_transport`` = se^2 - V_IF - V_OUA,
the variance equivalent of the bias allowance.

PPI++ level (Angelopoulos, Duchi & Zrnic 2023), reported by the ``ppi`` rule:
theta_PPI = lam theta_direct + HT-mean_j (Y_j - lam f(S_j)) with the power-tuned lam of
``ppi_weight`` (lam = 1 is C; lam = 0 the probe's label mean), contributions and replicates as
for C with r_j replaced by Y_j - lam f_j; lam is treated as fixed in the interval.

Pooled prior of the gaps (the ``pooled`` and ``precision`` shrinkages of ``transport.py``): the
policies' gaps are treated as draws from a prior of variance tau^2, estimated by the method of
moments over the policies of an estimator, tau2_hat = max(0, mean_p (d_hat_p^2 - V_d,p))
(``pooled_bias_sq``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from arena_cje.cje.audit import ProbeDesign, probe_design
from arena_cje.cje.estimators import EstimatorOutput
from arena_cje.cje.inference import bias_aware_critical_value, cluster_covariance, jackknife_covariance, jackknife_variance, welch_satterthwaite


@dataclass(frozen=True)
class Contributions:
    """An estimate as per-prompt contributions and OUA replicates."""

    estimate: float
    psi: pd.Series
    replicates: np.ndarray | None


@dataclass(frozen=True)
class LevelReport:
    """Reported level of one (policy, estimator) row under the reporting rule (``transport.py``).

    Attributes:
        source: ``level_source``: ``probe_corrected``, ``combined``, ``shrunk`` or ``ppi``.
        estimate, std_error, ci_lower, ci_upper, df: The reported value and its t interval.
        borrowed: theta_E (the estimator's own value).
        corrected: C (NaN without a probe); corrected_se its standard error.
        weight: lambda (weight of the probe-corrected value; 1 = fully corrected).
        bias_sq: b2_hat, the squared transport gap of B revealed beyond noise.
        var_if, var_oua, var_transport: Variance parts of the reported value (cluster IF, OUA
            jackknife, and the variance equivalent of the bias allowance for the unremoved transport
            gap; std_error^2 is their sum, module docstring "Interval of the reported value").
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


def bias_aware_half_width(bias_bound: float, variance: float, df: float, alpha: float) -> float:
    """Half-width cv s of the interval of a level with |bias| <= ``bias_bound`` and sampling variance s^2.

    cv = ``inference.bias_aware_critical_value(bias_bound / s, df, alpha)`` (module docstring,
    "Interval of the reported value"); a level without sampling noise (s = 0) gets the bound itself.
    """
    if not np.isfinite(variance):
        return float("nan")
    s = float(np.sqrt(max(variance, 0.0)))
    if s == 0.0:
        return float(bias_bound)
    return bias_aware_critical_value(bias_bound / s, df, alpha) * s


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
        bias_sq: The squared transport gap of B used for lam and (unless ``interval_bias_sq``) in the
            interval's bias bound: None = this policy's own b2_hat (``combined``); the ``pooled``
            shrinkage passes min(b2_hat, tau^2) (``pooled_bias_sq``).
        source: ``level_source`` to record (default ``probe_corrected`` / ``combined``).
        moments: Precomputed ``level_moments(b, c)``.
        interval_bias_sq: The squared gap b_I^2 of the interval's bias bound
            M = (1 - lam) sqrt(max(d_hat^2, b_I^2)), when it differs from the one that sets lam (default
            ``bias_sq``).
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
    # df split: the probe term of psi has m - 1 df, the rest G - 1.
    probe_part = min(lam**2 * probe_var, v_if)
    df = welch_satterthwaite([(v_if - probe_part, len(psi) - 1), (probe_part, m - 1), (v_oua, n_folds - 1)])
    q = float(stats.t.ppf(1 - alpha / 2, df)) if np.isfinite(df) else float(stats.norm.ppf(1 - alpha / 2))
    gap_sq = b2 if interval_bias_sq is None else float(interval_bias_sq)
    half = bias_aware_half_width((1 - lam) * float(np.sqrt(max(mo.d**2, gap_sq))), v_if + v_oua, df, alpha)
    se = half / q  # the effective SE: the interval is est +/- q se like every other row
    v_bias = max(se**2 - v_if - v_oua, 0.0)
    source = source or ("probe_corrected" if force_corrected else "combined")
    return LevelReport(source, float(est), se, est - q * se, est + q * se, df, b.estimate, c.estimate,
                       float(np.sqrt(mo.vc)), lam, b2, v_if, v_oua, v_bias,
                       Contributions(float(est), pd.Series(psi, index=mo.index), reps))
