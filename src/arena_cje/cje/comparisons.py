"""Every pairwise comparison of policies, multiplicity-adjusted, and the best policy with its runner-up.

Input: the paired differences of ``api.paired_differences`` (one row per estimator and pair (A, B)
of policies, theta_A - theta_B on the prompts both share): estimate D = mean_g (psi_A,g - psi_B,g),
SE^2 = V_IF + V_OUA (prompt-clustered variance of the per-prompt differences plus the OUA jackknife
variance of the replicate differences theta_A,k - theta_B,k, so the calibration's own uncertainty
is in it) and Welch-Satterthwaite df (``inference.t_interval``).

* p-value (two-sided t test of D = 0, consistent with the t interval: the 1 - alpha CI excludes 0
  iff p < alpha):  p = 2 P(T_df > |D| / SE).
* Family: all pairs of ONE estimator (m = number of finite p-values among its k(k - 1)/2 pairs;
  estimators are alternative analyses of the same data, not further hypotheses).
* Bonferroni: p_Bonf = min(1, m p) (family-wise error rate <= alpha).
* Benjamini-Hochberg (1995) step-up: with p_(1) <= ... <= p_(m),
  p_BH,(i) = min_{j >= i} min(1, m p_(j) / j) (false discovery rate <= alpha for independent or
  positively dependent tests); ``scipy.stats.false_discovery_control(p, method="bh")``.
  ``significant`` = p_BH < alpha (the FDR-controlled call); ``significant_bonferroni`` = p_Bonf < alpha.
* Best policy and runner-up (per estimator): the policies whose level row is not ``refused``, ranked
  by their reported level estimate; best = the largest, runner-up = the second largest (a refused
  row's number must not be reported, so it never wins: an adversarial policy that fools the judge
  would). The decision is **ready** when the 1 - alpha interval of best - runner-up (the paired
  difference above, unadjusted: one contrast once the ranking is fixed) lies above 0 and no gate
  failed: no policy's level row of that estimator is ``refused`` (a refused policy cannot be ranked,
  so it could be the true best) and neither is the best-vs-runner-up difference. The cje-eval 0.9.3 ``best_policy().decision_ready`` asks for more
  (best beats EVERY other policy, an intersection-union test); ``beats_all`` reports that too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

COMPARISON_COLUMNS = ["estimator", "policy_a", "policy_b", "estimate", "std_error", "ci_lower", "ci_upper", "df",
                      "p_value", "p_bh", "p_bonferroni", "significant", "significant_bonferroni", "favours", "n",
                      "status", "reasons"]
DECISION_COLUMNS = ["estimator", "best", "runner_up", "best_estimate", "runner_up_estimate", "difference",
                    "ci_lower", "ci_upper", "p_value", "beats_all", "gate_failed", "decision_ready", "note"]


@dataclass(frozen=True)
class PolicyComparisons:
    """Pairwise comparisons and the best-policy decision of every estimator.

    Attributes:
        table: One row per (estimator, pair), columns ``COMPARISON_COLUMNS``; ``estimate`` is
            theta_{policy_a} - theta_{policy_b}; ``favours`` names the policy the BH-significant
            difference favours ("" when not significant).
        decisions: One row per estimator, columns ``DECISION_COLUMNS``.
    """

    table: pd.DataFrame
    decisions: pd.DataFrame


def t_test_p_value(estimate: float, std_error: float, df: float) -> float:
    """Two-sided p-value of estimate = 0 with a t(df) reference (normal when df is infinite); NaN if undefined."""
    if not (np.isfinite(estimate) and np.isfinite(std_error)) or std_error < 0 or not df > 0:
        return float("nan")
    if std_error == 0:
        return 1.0 if estimate == 0 else 0.0
    return float(2 * stats.t.sf(abs(estimate) / std_error, df))


def adjust_p_values(p: np.ndarray, method: str) -> np.ndarray:
    """Multiplicity-adjusted p-values over the finite entries of ``p`` (NaN stays NaN).

    Args:
        p: Raw p-values of one family.
        method: ``bh`` (Benjamini-Hochberg, scipy), ``bonferroni`` (min(1, m p)) or ``holm``
            (Holm 1979 step-down: with p_(1) <= ... <= p_(m), p_Holm,(i) = max_{j <= i} min(1, (m - j + 1) p_(j));
            family-wise error rate <= alpha like Bonferroni, never less powerful).
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    if method == "bh":
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    elif method == "bonferroni":
        out[ok] = np.minimum(1.0, p[ok] * ok.sum())
    elif method == "holm":
        q = p[ok]
        m = q.size
        order = np.argsort(q, kind="stable")
        stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * q[order]))
        adj = np.empty(m)
        adj[order] = stepped
        out[ok] = adj
    else:
        raise ValueError(f"unknown p-value adjustment {method!r}; use 'bh', 'bonferroni' or 'holm'")
    return out


def _pair_table(differences: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Rename the differences to policy_a/policy_b and add p-values, adjustments and the favoured policy."""
    cols = {"policy": "policy_a", "baseline": "policy_b"}
    t = differences.rename(columns=cols).copy()
    if "p_value" not in t:
        t["p_value"] = [t_test_p_value(e, s, d) for e, s, d in zip(t["estimate"], t["std_error"], t["df"], strict=True)]
    t["p_bh"] = np.nan
    t["p_bonferroni"] = np.nan
    for _, idx in t.groupby("estimator", sort=False).groups.items():
        p = t.loc[idx, "p_value"].to_numpy(dtype=float)
        t.loc[idx, "p_bh"] = adjust_p_values(p, "bh")
        t.loc[idx, "p_bonferroni"] = adjust_p_values(p, "bonferroni")
    t["significant"] = t["p_bh"] < alpha
    t["significant_bonferroni"] = t["p_bonferroni"] < alpha
    t["favours"] = np.where(t["significant"], np.where(t["estimate"] > 0, t["policy_a"], t["policy_b"]), "")
    t["reasons"] = t["reasons"].fillna("") if "reasons" in t else ""
    return t.reindex(columns=COMPARISON_COLUMNS).reset_index(drop=True)


def _oriented(table: pd.DataFrame, estimator: str, a: str, b: str) -> pd.Series | None:
    """The comparison row theta_a - theta_b of ``estimator`` (flipped if stored as b - a)."""
    rows = table[(table["estimator"] == estimator)]
    hit = rows[(rows["policy_a"] == a) & (rows["policy_b"] == b)]
    if len(hit):
        return hit.iloc[0]
    hit = rows[(rows["policy_a"] == b) & (rows["policy_b"] == a)]
    if not len(hit):
        return None
    r = hit.iloc[0].copy()
    r["policy_a"], r["policy_b"] = a, b
    r["estimate"] = -r["estimate"]
    r["ci_lower"], r["ci_upper"] = -hit.iloc[0]["ci_upper"], -hit.iloc[0]["ci_lower"]
    return r


def decide_best(table: pd.DataFrame, estimates: pd.DataFrame, estimator: str) -> dict:
    """Best policy, runner-up and decision readiness of one estimator (module docstring)."""
    lv = estimates[estimates["estimator"] == estimator]
    refused = sorted(lv.loc[lv["status"] == "refused", "policy"])
    usable = lv[np.isfinite(lv["estimate"].astype(float)) & (lv["status"] != "refused")]
    ranked = usable.sort_values("estimate", ascending=False, kind="stable")
    row = {c: np.nan for c in DECISION_COLUMNS}
    row.update(estimator=estimator, best=None, runner_up=None, beats_all=False, decision_ready=False)
    if len(ranked) < 2:
        row.update(gate_failed=bool(refused), note=f"fewer than two policies with a {estimator} estimate")
        return row
    best, runner = ranked.iloc[0], ranked.iloc[1]
    row.update(best=best["policy"], runner_up=runner["policy"], best_estimate=float(best["estimate"]),
               runner_up_estimate=float(runner["estimate"]))
    d = _oriented(table, estimator, best["policy"], runner["policy"])
    pair_refused = d is not None and d["status"] == "refused"
    gate_failed = bool(refused) or pair_refused
    row["gate_failed"] = gate_failed
    others = [_oriented(table, estimator, best["policy"], p) for p in ranked["policy"].iloc[1:]]
    row["beats_all"] = bool(all(o is not None and o["ci_lower"] > 0 for o in others))
    if d is None or not np.isfinite(d["estimate"]):
        row["note"] = f"no paired difference of {best['policy']} and {runner['policy']} (no shared prompts)"
        return row
    row.update(difference=float(d["estimate"]), ci_lower=float(d["ci_lower"]), ci_upper=float(d["ci_upper"]),
               p_value=float(d["p_value"]))
    separated = bool(d["ci_lower"] > 0)
    row["decision_ready"] = separated and not gate_failed
    why = []
    if not separated:
        why.append(f"the interval of {best['policy']} - {runner['policy']} includes 0")
    if refused:
        why.append(f"refused rows: {', '.join(refused)}")
    elif pair_refused:
        why.append("the best-vs-runner-up difference is refused")
    row["note"] = ("ready: " + f"{best['policy']} beats the runner-up {runner['policy']}" if row["decision_ready"]
                   else "not ready: " + "; ".join(why))
    return row


def compare_policies(differences: pd.DataFrame, estimates: pd.DataFrame, alpha: float) -> PolicyComparisons:
    """All pairwise comparisons with p-values, BH and Bonferroni adjustment, and the decision per estimator.

    Args:
        differences: ``EstimationResult.differences`` (all pairs; needs ``df`` or ``p_value``).
        estimates: ``EstimationResult.estimates`` (reported levels with ``status``).
        alpha: Significance level (and 1 - CI level).

    Returns:
        :class:`PolicyComparisons`.
    """
    table = _pair_table(differences, alpha) if len(differences) else pd.DataFrame(columns=COMPARISON_COLUMNS)
    decisions = [decide_best(table, estimates, e) for e in dict.fromkeys(estimates["estimator"])]
    return PolicyComparisons(table, pd.DataFrame(decisions, columns=DECISION_COLUMNS))
