"""Estimation: thin adapters over :mod:`arena_cje.cje` plus tables and plots for people."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies  # noqa: E402

ESTIMATE_COLUMNS = [
    "policy", "estimator", "estimate", "std_error", "ci_lower", "ci_upper", "n", "oracle_n",
    "truth", "status", "reasons", "ess_fraction",
]


def estimate_policy_values(
    cje_logged_data: pd.DataFrame,
    cje_fresh_draws: Mapping[str, Callable[[], pd.DataFrame] | pd.DataFrame],
    cje_probe_slices: Mapping[str, Callable[[], pd.DataFrame] | pd.DataFrame],
    estimation: dict[str, Any],
):
    """Run every configured estimator on the CJE dataset.

    Args:
        cje_logged_data: Logged rows in the reference layout.
        cje_fresh_draws: Policy -> fresh draws (Kedro partitions, loaded lazily).
        cje_probe_slices: Policy -> oracle-labelled probe of its responses (may be empty).
        estimation: ``estimation`` parameters.

    Returns:
        The :class:`arena_cje.cje.EstimationResult` (estimates, differences, diagnostics).
    """
    data = CJEDataset.from_frames(
        cje_logged_data,
        fresh_draws=_load_partitions(cje_fresh_draws),
        probes=_load_partitions(cje_probe_slices),
    )
    return estimate_policies(data, EstimationConfig.from_params(estimation))


def tabulate_estimates(estimation_result, policy_truth: pd.DataFrame) -> pd.DataFrame:
    """One row per (policy, estimator) with the true value where it is known."""
    truth = policy_truth[["policy", "truth"]] if len(policy_truth) else pd.DataFrame(columns=["policy", "truth"])
    table = estimation_result.estimates.drop(columns=["truth"], errors="ignore").merge(truth, on="policy", how="left")
    return table[ESTIMATE_COLUMNS]


def tabulate_differences(estimation_result) -> pd.DataFrame:
    """Paired differences between policies on shared prompts."""
    return estimation_result.differences


def plot_forest(policy_estimates: pd.DataFrame) -> plt.Figure:
    """Forest plot: every estimator's estimate and CI per policy, with the true value if known."""
    policies = list(dict.fromkeys(policy_estimates["policy"]))
    estimators = list(dict.fromkeys(policy_estimates["estimator"]))
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * len(policies) * len(estimators)))
    colors = plt.get_cmap("tab10")
    y, ticks, labels = 0.0, [], []
    for policy in policies:
        rows = policy_estimates[policy_estimates["policy"] == policy]
        start = y
        for k, estimator in enumerate(estimators):
            row = rows[rows["estimator"] == estimator]
            if row.empty:
                continue
            r = row.iloc[0]
            refused = r.get("status") == "refused"
            ax.errorbar(
                r["estimate"], y, xerr=[[r["estimate"] - r["ci_lower"]], [r["ci_upper"] - r["estimate"]]],
                fmt="x" if refused else "o", color=colors(k % 10), capsize=3,
                label=estimator if policy == policies[0] else None, alpha=0.4 if refused else 1.0,
            )
            ticks.append(y)
            labels.append(f"{policy} · {estimator}")
            y += 1
        truth = rows["truth"].dropna()
        if len(truth):
            ax.vlines(truth.iloc[0], start - 0.4, y - 0.6, colors="black", linestyles="--", linewidth=1.2,
                      label="true value" if policy == policies[0] else None)
        y += 0.8
    ax.set_yticks(ticks, labels)
    ax.invert_yaxis()
    ax.set_xlabel("policy value (oracle scale)")
    ax.set_title("Estimates with 95% confidence intervals")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def _load_partitions(partitions: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Kedro partitions (policy -> loader) -> policy -> DataFrame."""
    return {policy: value() if callable(value) else value for policy, value in (partitions or {}).items()}
