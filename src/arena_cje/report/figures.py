"""Matplotlib figures of a CJE run (pure functions: tables / diagnostics in, Figure out)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .tables import differences_vs_baseline  # noqa: E402

#: Matplotlib is not thread-safe (pyplot's figure registry, the FreeType font objects all text
#: shares): under Kedro's ThreadRunner, plots drawn and saved in parallel threads now and then came
#: out different from the SequentialRunner's. Whatever draws or saves a figure holds this lock.
MATPLOTLIB_LOCK = threading.RLock()


def one_at_a_time(draw: Callable[..., Any]) -> Callable[..., Any]:
    """``draw`` holding :data:`MATPLOTLIB_LOCK`."""

    @functools.wraps(draw)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with MATPLOTLIB_LOCK:
            return draw(*args, **kwargs)

    return locked


def _empty(message: str, figsize: tuple[float, float] = (8, 2)) -> plt.Figure:
    fig, ax = plt.subplots(figsize=figsize)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11)
    ax.set_axis_off()
    return fig


@one_at_a_time
def plot_forest(policy_estimates: pd.DataFrame) -> plt.Figure:
    """Forest plot: every estimator's estimate and CI per policy, with the true value if known.

    Refused rows are drawn faded with an ``x`` marker; rows without an estimate are skipped.
    """
    rows_ok = policy_estimates.dropna(subset=["estimate"])
    if rows_ok.empty:
        return _empty("no estimates")
    policies = list(dict.fromkeys(policy_estimates["policy"]))
    estimators = list(dict.fromkeys(policy_estimates["estimator"]))
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.26 * len(rows_ok) + 0.2 * len(policies)))
    colors = plt.get_cmap("tab10")
    y, ticks, labels, seen = 0.0, [], [], set()
    for policy in policies:
        rows = rows_ok[rows_ok["policy"] == policy]
        start = y
        for k, estimator in enumerate(estimators):
            row = rows[rows["estimator"] == estimator]
            if row.empty:
                continue
            r = row.iloc[0]
            refused = r.get("status") == "refused"
            lo, hi = r["ci_lower"], r["ci_upper"]
            xerr = [[r["estimate"] - lo], [hi - r["estimate"]]] if np.isfinite([lo, hi]).all() else None
            ax.errorbar(r["estimate"], y, xerr=xerr, fmt="x" if refused else "o", color=colors(k % 10), capsize=3,
                        label=estimator if estimator not in seen else None, alpha=0.35 if refused else 1.0)
            seen.add(estimator)
            ticks.append(y)
            labels.append(f"{policy} · {estimator}" + (" (refused)" if refused else ""))
            y += 1
        truth = rows["truth"].dropna() if "truth" in rows else pd.Series(dtype=float)
        if len(truth) and y > start:
            ax.vlines(truth.iloc[0], start - 0.4, y - 0.6, colors="black", linestyles="--", linewidth=1.2,
                      label="true value" if "truth" not in seen else None)
            seen.add("truth")
        y += 0.8
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("policy value (oracle scale)")
    ax.set_title("Estimates with 95% confidence intervals")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    fig.tight_layout()
    return fig


@one_at_a_time
def plot_differences(policy_differences: pd.DataFrame, baseline: str) -> plt.Figure:
    """Paired differences ``policy - baseline`` per estimator with CIs and a zero line."""
    diffs = differences_vs_baseline(policy_differences, baseline).dropna(subset=["estimate"])
    if diffs.empty:
        return _empty(f"no paired differences against {baseline}")
    estimators = list(dict.fromkeys(diffs["estimator"]))
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.42 * len(diffs) + 0.3 * diffs["policy"].nunique()))
    colors = plt.get_cmap("tab10")
    y, ticks, labels, seen = 0.0, [], [], set()
    for policy, rows in diffs.groupby("policy", sort=False):
        for _, r in rows.iterrows():
            k = estimators.index(r["estimator"])
            refused = r["status"] == "refused"
            ax.errorbar(r["estimate"], y, xerr=[[r["estimate"] - r["ci_lower"]], [r["ci_upper"] - r["estimate"]]],
                        fmt="x" if refused else "o", color=colors(k % 10), capsize=3, alpha=0.35 if refused else 1.0,
                        label=r["estimator"] if r["estimator"] not in seen else None)
            seen.add(r["estimator"])
            ticks.append(y)
            labels.append(f"{policy} − {baseline} · {r['estimator']}" + (" (refused)" if refused else ""))
            y += 1
        y += 0.6
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(ticks, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"paired difference against {baseline} (oracle scale)")
    ax.set_title(f"Paired differences vs {baseline}, 95% confidence intervals")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


@one_at_a_time
def plot_calibration(calibration: Any) -> plt.Figure:
    """Judge -> oracle calibration: labelled points, fitted curve (with fold curves), reliability.

    Args:
        calibration: :class:`arena_cje.cje.calibration.CalibrationDiagnostics` (or ``None``).

    Left panel: each labelled point (oracle label vs judge score, jittered by +-0.005 on the judge
    axis so ties show), the full-data calibrator f and the K delete-one-fold curves f^(-k).
    Right panel: binned reliability, mean oracle label vs mean out-of-fold prediction per judge
    bin (marker area ~ bin size); on the diagonal means calibrated.
    """
    if calibration is None:
        return _empty("no calibration: too few oracle labels")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    pts = calibration.points
    jitter = np.random.default_rng(0).uniform(-0.005, 0.005, len(pts))
    ax.scatter(pts["judge_score"] + jitter, pts["oracle_label"], s=14, alpha=0.5, color="tab:blue",
               label=f"labelled responses (n={calibration.n_labelled})")
    for k, curve in enumerate(np.atleast_2d(calibration.fold_curves)):
        ax.plot(calibration.judge_grid, curve, color="tab:orange", alpha=0.25, linewidth=1,
                label="delete-one-fold fits" if k == 0 else None)
    ax.plot(calibration.judge_grid, calibration.fitted_curve, color="tab:red", linewidth=2,
            label=f"fitted calibrator ({calibration.calibrator})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="identity")
    ax.set_xlabel("judge score")
    ax.set_ylabel("oracle label")
    ax.set_title("Calibration: oracle label vs judge score")
    ax.legend(loc="upper left", fontsize="small")
    rel = calibration.reliability
    if len(rel):
        sizes = 20 + 180 * rel["n"] / rel["n"].max()
        bx.scatter(rel["predicted_mean"], rel["label_mean"], s=sizes, color="tab:green", alpha=0.8)
        for _, r in rel.iterrows():
            bx.annotate(f"[{r['bin_lo']:.1f},{r['bin_hi']:.1f}) n={int(r['n'])}", (r["predicted_mean"], r["label_mean"]),
                        fontsize=7, xytext=(4, -10), textcoords="offset points")
        lo = float(min(rel["predicted_mean"].min(), rel["label_mean"].min())) - 0.05
        hi = float(max(rel["predicted_mean"].max(), rel["label_mean"].max())) + 0.05
        bx.plot([lo, hi], [lo, hi], color="grey", linestyle=":", linewidth=1)
    bx.set_xlabel("mean out-of-fold prediction (per judge bin)")
    bx.set_ylabel("mean oracle label")
    bx.set_title(f"Binned reliability (MACE {calibration.mean_abs_calibration_error:.3f}, "
                 f"OOF RMSE {calibration.oof_rmse:.3f})")
    fig.tight_layout()
    return fig


@one_at_a_time
def plot_weight_diagnostics(weights: Mapping[str, Any], hill_warn: float) -> plt.Figure:
    """Importance-weight diagnostics per target policy.

    Panels: histogram of the raw log-ratios log w = log pi'(y|x) - log pi_0(y|x); ESS fraction
    (sum w)^2 / (n sum w^2) of the raw and SIMCal-stabilised weights (log scale); Hill tail index
    of the raw weights with the alpha = ``hill_warn`` line (below it the variance is effectively
    infinite).

    Args:
        weights: Policy -> :class:`arena_cje.cje.weight_diagnostics.WeightDiagnostics`.
        hill_warn: Reference line for the tail index.
    """
    if not weights:
        return _empty("no importance weights (no target log-probs)")
    policies = list(weights)
    colors = plt.get_cmap("tab10")
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    for k, policy in enumerate(policies):
        lw = np.asarray(weights[policy].log_weights, dtype=float)
        lw = lw[np.isfinite(lw)]
        if lw.size:
            ax.hist(lw, bins=40, alpha=0.45, color=colors(k % 10), label=f"{policy} (n={lw.size})")
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_xlabel("log importance ratio  log π′(y|x) − log π₀(y|x)")
    ax.set_ylabel("responses")
    ax.set_title("Raw log-weights")
    ax.legend(fontsize="small")
    x = np.arange(len(policies))
    raw = [weights[p].ess_raw for p in policies]
    sim = [weights[p].ess_simcal for p in policies]
    bx.bar(x - 0.2, raw, width=0.4, label="raw", color="tab:grey")
    bx.bar(x + 0.2, sim, width=0.4, label="after SIMCal", color="tab:blue")
    for xi, (r, s) in enumerate(zip(raw, sim, strict=True)):
        bx.annotate(f"{r:.1%}", (xi - 0.2, r), ha="center", va="bottom", fontsize=7)
        if np.isfinite(s):
            bx.annotate(f"{s:.1%}", (xi + 0.2, s), ha="center", va="bottom", fontsize=7)
    bx.set_yscale("log")
    bx.set_ylim(top=1.5)
    bx.set_xticks(x, policies, rotation=20)
    bx.set_ylabel("ESS / n")
    bx.set_title("Effective sample size")
    bx.legend(fontsize="small")
    hill = np.array([weights[p].hill_alpha for p in policies], dtype=float)
    # alpha = inf (unit weights: no tail) or NaN (too few weights) cannot be drawn; show a capped
    # bar labelled with the value instead (an infinite bar broke matplotlib's transforms).
    finite = hill[np.isfinite(hill)]
    cap = 1.5 * max(float(finite.max()) if finite.size else 0.0, hill_warn)
    shown = np.where(np.isposinf(hill), cap, np.where(np.isfinite(hill), hill, 0.0))
    cx.bar(x, shown, color=["tab:red" if h < hill_warn else "tab:green" for h in hill])
    for xi, h in enumerate(hill):
        if not np.isfinite(h):
            cx.annotate("∞ (no tail)" if h > 0 else "n/a", (xi, shown[xi]), ha="center", va="bottom", fontsize=7)
    cx.axhline(hill_warn, color="black", linestyle="--", linewidth=1, label=f"α = {hill_warn:g}")
    cx.set_xticks(x, policies, rotation=20)
    cx.set_ylabel("Hill tail index α")
    cx.set_title("Tail index of raw weights")
    cx.legend(fontsize="small")
    fig.tight_layout()
    return fig
