"""Report and plot nodes of ``estimation`` (thin adapters over :mod:`arena_cje.report`)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from arena_cje.report import (
    build_report,
    plot_calibration,
    plot_differences,
    plot_weight_diagnostics,
    policy_verdicts,
    stage_summary,
)
from arena_cje.report.build import plan_label_budget_for_verdicts


def plot_calibration_node(estimation_result: Any) -> plt.Figure:
    """Calibration plot of the run (oracle vs judge, fitted curve, binned reliability)."""
    return plot_calibration(estimation_result.calibration)


def plot_weights_node(estimation_result: Any, estimation: dict[str, Any]) -> plt.Figure:
    """Weight diagnostics of the run (log-weight histograms, ESS before/after SIMCal, tail index)."""
    hill_warn = float((estimation.get("gates") or {}).get("hill_warn", 2.0))
    return plot_weight_diagnostics(estimation_result.weights, hill_warn)


def plot_differences_node(policy_differences: pd.DataFrame, logging_policy: str) -> plt.Figure:
    """Paired differences of every policy against the logging policy."""
    return plot_differences(policy_differences, logging_policy)


def summarise_stages(
    responses: pd.DataFrame | None,
    logprobs: pd.DataFrame | None,
    judge_scores: pd.DataFrame | None,
    labeling_summary: dict[str, Any] | None,
) -> pd.DataFrame:
    """Per stage and policy: rows, failures, tokens, cost (missing inputs are skipped)."""
    return stage_summary(responses, logprobs, judge_scores, labeling_summary)


def plan_label_budget_node(
    estimation_result: Any, policy_estimates: pd.DataFrame, policy_differences: pd.DataFrame,
    parameters: dict[str, Any],
) -> pd.DataFrame:
    """Budget plan (prompts, labels, probe labels, half-width, MDE) for each policy's speaking estimator."""
    from arena_cje.dry_run import plan_run
    from arena_cje.report.budget import plan_budget_table

    verdicts = policy_verdicts(policy_estimates, policy_differences, str(parameters.get("logging_policy", "pi_0")),
                               estimation_result.transport_table)
    n = max(int((parameters.get("prompts") or {}).get("output_samples", 1) or 1), 1)
    try:  # the dry run's API cost per prompt (0 on backends without prices: report.plan_prompt_cost then)
        prompt_cost = sum(r.max_cost_usd for r in plan_run(parameters) if r.stage in ("generate", "teacher_force", "judge")) / n
    except (KeyError, TypeError, ValueError):  # parameters the dry run cannot read: the report's default
        prompt_cost = None
    return plan_budget_table(estimation_result, verdicts, parameters, prompt_cost)


def write_report(
    parameters: dict[str, Any],
    policy_estimates: pd.DataFrame,
    policy_differences: pd.DataFrame,
    estimation_result: Any,
    policy_truth: pd.DataFrame | None,
    teacher_forcing_check: dict[str, Any] | None,
    stage_summary_table: pd.DataFrame | None,
    prompt_filter_report: dict[str, Any] | None,
    labeling_summary: dict[str, Any] | None,
    label_budget: pd.DataFrame | None,
    comparisons: pd.DataFrame | None = None,
    policy_decisions: pd.DataFrame | None = None,
) -> tuple[str, str]:
    """The run report as one self-contained HTML page and as Markdown."""
    html, markdown, _ = build_report(
        parameters=parameters, policy_estimates=policy_estimates, policy_differences=policy_differences,
        estimation_result=estimation_result, policy_truth=policy_truth, teacher_forcing_check=teacher_forcing_check,
        stage_summary=stage_summary_table, prompt_filter_report=prompt_filter_report,
        labeling_summary=labeling_summary, label_budget=label_budget, comparisons=comparisons,
        decisions=policy_decisions,
    )
    plt.close("all")  # the report's figures are embedded; free them
    return html, markdown
