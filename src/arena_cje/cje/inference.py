"""Standard errors, the OUA jackknife and t intervals.

Every estimator returns per-prompt contributions psi_g (g = 1..G prompts) whose mean is the
estimate, theta_hat = (1/G) sum_g psi_g. Rows of one prompt are summed into its psi_g, so

* IF variance (cluster-robust by prompt):  V_IF = s^2_psi / G,  s^2_psi = sum_g (psi_g - theta_hat)^2 / (G - 1),
  with G - 1 degrees of freedom.
* OUA variance (CJE paper, "oracle-uncertainty-aware" inference): with theta_k the estimate recomputed
  with the calibrator f^(-k) fitted without oracle fold k (k = 1..K),
  V_OUA = (K - 1)/K * sum_k (theta_k - mean_k theta_k)^2   (delete-one-group jackknife), K - 1 df.
  Skipped (V_OUA = 0) at 100% oracle coverage, where the calibration is not a sampled quantity.
* Total V = V_IF + V_OUA; degrees of freedom by Welch-Satterthwaite,
  df = V^2 / (V_IF^2/(G-1) + V_OUA^2/(K-1)), so the t critical value reflects how much of the
  variance rests on only K - 1 jackknife degrees of freedom. CI = theta_hat +/- t_{1-alpha/2, df} sqrt(V).
* Bias-aware critical value (Armstrong & Kolesar 2020, "Simple and honest confidence intervals in
  nonparametric regression", Quantitative Economics 11): for an estimate theta_hat = theta + beta + noise
  with |beta| <= M and noise N(0, s^2), theta_hat +/- cv_alpha(M / s) s with cv_alpha(t) the 1 - alpha
  quantile of |t + Z| (folded normal) covers with probability >= 1 - alpha whatever the bias within the
  bound, with equality at |beta| = M. With s estimated on df degrees of freedom Z becomes Student's
  T_df: cv = the 1 - alpha quantile of |M / s_hat + T_df| (the t interval at M = 0; the bound M is in
  the estimate's units and is not rescaled by s_hat / s). It is shorter than the root-sum-of-squares
  t sqrt(s^2 + M^2) for every M > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


@dataclass(frozen=True)
class Interval:
    """A point estimate with its variance decomposition and t interval."""

    estimate: float
    std_error: float
    ci_lower: float
    ci_upper: float
    var_if: float
    var_oua: float
    df: float


def cluster_covariance(a: np.ndarray, b: np.ndarray) -> float:
    """Cov(mean a, mean b) of per-prompt contributions on the same G prompts (NaN if G < 2).

    sum_g (a_g - a_bar)(b_g - b_bar) / (G (G - 1)); ``cluster_covariance(psi, psi)`` = V_IF.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    g = len(a)
    if g < 2:
        return float("nan")
    return float(np.sum((a - a.mean()) * (b - b.mean())) / (g * (g - 1)))


def cluster_variance(psi: np.ndarray) -> float:
    """V_IF = var(psi, ddof=1) / G for per-prompt contributions psi (NaN if G < 2)."""
    return cluster_covariance(psi, psi)


def jackknife_covariance(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Delete-one-group jackknife covariance (K-1)/K sum_k (a_k - a_bar)(b_k - b_bar); 0 without replicates."""
    if a is None or b is None or len(a) < 2:
        return 0.0
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    k = len(a)
    return float((k - 1) / k * np.sum((a - a.mean()) * (b - b.mean())))


def jackknife_variance(replicates: np.ndarray | None) -> float:
    """Delete-one-group jackknife: (K-1)/K * sum_k (theta_k - mean theta)^2; 0 when None."""
    return jackknife_covariance(replicates, replicates)


def welch_satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite df of sum_c v_c with component dfs d_c: (sum v_c)^2 / sum v_c^2 / d_c.

    Components with v_c <= 0 (or non-finite) or d_c <= 0 are dropped; inf when none is left.
    """
    parts = [(v, d) for v, d in parts if np.isfinite(v) and v > 0 and d > 0]
    if not parts:
        return float("inf")
    return float(sum(v for v, _ in parts) ** 2 / sum(v**2 / d for v, d in parts))


def satterthwaite_df(v1: float, df1: float, v2: float, df2: float) -> float:
    """Welch-Satterthwaite df of v1 + v2 with component dfs df1, df2."""
    if v2 <= 0 or not np.isfinite(v2):
        return float(df1)
    if v1 <= 0:
        return float(df2)
    return welch_satterthwaite([(v1, df1), (v2, df2)])


def bias_aware_critical_value(bias_ratio: float, df: float, alpha: float) -> float:
    """cv = the 1 - alpha quantile of |bias_ratio + T_df| (module docstring, "Bias-aware critical value").

    Args:
        bias_ratio: M / s_hat, the bound on |bias| over the standard error (its sign is irrelevant).
        df: Degrees of freedom of s_hat (inf: the folded normal ``scipy.stats.foldnorm``).
        alpha: 1 - coverage.

    Returns:
        cv with P(|bias_ratio + T| <= cv) = 1 - alpha; the usual t_{1-alpha/2, df} when bias_ratio = 0.
    """
    t_b = abs(float(bias_ratio))
    if not np.isfinite(t_b):
        return float("inf")
    if t_b == 0.0:
        return float(stats.t.ppf(1 - alpha / 2, df))
    if not np.isfinite(df):
        return float(stats.foldnorm.ppf(1 - alpha, t_b))

    def excess(x: float) -> float:  # P(|t_b + T| > x) - alpha
        return float(stats.t.sf(x - t_b, df) + stats.t.cdf(-x - t_b, df) - alpha)

    # The root lies between t_b + t_{1-alpha} (the far tail holds nothing) and t_b + t_{1-alpha/2}.
    lo, hi = t_b + float(stats.t.ppf(1 - alpha, df)), t_b + float(stats.t.ppf(1 - alpha / 2, df))
    if excess(lo) <= 0:  # the far tail is negligible: the one-tailed quantile
        return lo
    return float(optimize.brentq(excess, lo, hi))


def t_interval(estimate: float, psi: np.ndarray, oua_replicates: np.ndarray | None, alpha: float,
               sampling_jackknife: tuple[float, int] | None = None) -> Interval:
    """t interval from the cluster IF variance plus the OUA jackknife variance (module docstring).

    ``sampling_jackknife = (V_JK, G)``: an estimator whose IF misses part of its sampling variance
    (calibrated IPS: the data-driven SIMCal stacking) supplies a grouped jackknife variance; the
    sampling part is then max(V_IF, V_JK), with G - 1 df when the jackknife is the larger.
    """
    g = len(psi)
    v_if = cluster_variance(psi)
    df_if = g - 1
    if sampling_jackknife is not None and np.isfinite(sampling_jackknife[0]) and sampling_jackknife[0] > v_if:
        v_if, df_if = float(sampling_jackknife[0]), int(sampling_jackknife[1]) - 1
    v_oua = jackknife_variance(oua_replicates)
    k = 0 if oua_replicates is None else len(oua_replicates)
    df = satterthwaite_df(v_if, df_if, v_oua, k - 1) if g > 1 else float("nan")
    v = v_if + v_oua
    se = float(np.sqrt(v)) if np.isfinite(v) else float("nan")
    if not np.isfinite(se) or not np.isfinite(df) or df <= 0:
        return Interval(estimate, se, float("nan"), float("nan"), v_if, v_oua, df)
    q = float(stats.t.ppf(1 - alpha / 2, df))
    return Interval(estimate, se, estimate - q * se, estimate + q * se, v_if, v_oua, df)
