"""Report and plot nodes (thin adapters over :mod:`arena_cje.report`).

They read only what estimation persisted (``estimation_result``, the tables in
``data/07_model_output``) and the earlier stages' outputs, so the report can be re-rendered
without re-estimating. The CI level and the gates come from ``estimation_result.config``.
"""

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
from arena_cje.report.budget import plan_budget_table
from arena_cje.report.build import estimation_config


def plot_calibration_node(estimation_result: Any) -> plt.Figure:
    """Calibration plot of the run (oracle vs judge, fitted curve, binned reliability)."""
    return plot_calibration(estimation_result.calibration)


def plot_weights_node(estimation_result: Any) -> plt.Figure:
    """Weight diagnostics of the run (log-weight histograms, ESS before/after SIMCal, tail index).

    The tail-index line is the ``hill_warn`` gate the estimates were made with.
    """
    return plot_weight_diagnostics(estimation_result.weights, estimation_config(estimation_result).gates.hill_warn)


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
    logging_policy: str, report: dict[str, Any], labeling: dict[str, Any],
) -> pd.DataFrame:
    """Budget plan (prompts, labels, probe labels, half-width, MDE) for each policy's speaking estimator.

    Args:
        estimation_result: The run's :class:`arena_cje.cje.EstimationResult` (the pilot the variance
            model is fitted to; its ``config`` gives alpha and the label floor).
        policy_estimates: The estimates table.
        policy_differences: The paired differences table.
        logging_policy: ``logging_policy`` parameter (the verdicts' baseline).
        report: ``report`` parameters (``plan_prompt_cost``, ``plan_budget_multiples``).
        labeling: ``labeling`` parameters (``price_per_label``, ``votes_per_item``).
    """
    verdicts = policy_verdicts(policy_estimates, policy_differences, logging_policy, estimation_result.transport_table)
    return plan_budget_table(estimation_result, verdicts, logging_policy, report, labeling)


def write_report(
    policy_estimates: pd.DataFrame,
    policy_differences: pd.DataFrame,
    estimation_result: Any,
    policy_truth: pd.DataFrame | None,
    teacher_forcing_check: dict[str, Any] | None,
    stage_summary_table: pd.DataFrame | None,
    prompt_filter_report: dict[str, Any] | None,
    labeling_summary: dict[str, Any] | None,
    label_budget: pd.DataFrame | None,
    comparisons: pd.DataFrame | None,
    policy_decisions: pd.DataFrame | None,
    forest_plot: bytes,
    differences_plot: bytes,
    calibration_plot: bytes,
    weight_diagnostics_plot: bytes,
    logging_policy: str,
    **configuration: Any,
) -> tuple[str, str]:
    """The run report as one self-contained HTML page and as Markdown.

    The figures are the PNG files the plot nodes saved (drawn from the same inputs), embedded
    as they are: the report draws none of them again.

    Args:
        forest_plot, differences_plot, calibration_plot, weight_diagnostics_plot: The plot
            nodes' PNGs (``arena_cje.datasets.PngFigureDataset``); the Markdown links the same files.
        logging_policy: ``logging_policy`` parameter (the baseline of differences and verdicts).
        **configuration: The parameter blocks shown in the report's configuration section, by
            block name (``reporting.pipeline.CONFIGURATION_BLOCKS``); ``backend`` is the backend's
            name only.
        Other arguments: the datasets of the same name (see the pipeline).
    """
    if "backend" in configuration and not isinstance(configuration["backend"], dict):
        configuration["backend"] = {"name": configuration["backend"]}
    html, markdown, _ = build_report(
        configuration={"logging_policy": logging_policy, **configuration}, baseline=logging_policy,
        policy_estimates=policy_estimates, policy_differences=policy_differences,
        estimation_result=estimation_result, policy_truth=policy_truth, teacher_forcing_check=teacher_forcing_check,
        stage_summary=stage_summary_table, prompt_filter_report=prompt_filter_report,
        labeling_summary=labeling_summary, label_budget=label_budget, comparisons=comparisons,
        decisions=policy_decisions,
        figures={"forest_plot": forest_plot, "differences_plot": differences_plot,
                 "calibration_plot": calibration_plot, "weight_diagnostics_plot": weight_diagnostics_plot},
    )
    return html, markdown
