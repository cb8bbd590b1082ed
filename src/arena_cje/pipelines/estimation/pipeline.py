"""``estimation``: calibrate, estimate, tabulate and plot."""

from kedro.pipeline import Node, Pipeline

from arena_cje.report import plot_forest

from .nodes import estimate_policy_values, tabulate_comparisons, tabulate_differences, tabulate_estimates
from .report_nodes import (
    plan_label_budget_node,
    plot_calibration_node,
    plot_differences_node,
    plot_weights_node,
    summarise_stages,
    write_report,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                estimate_policy_values,
                ["cje_logged_data", "cje_fresh_draws", "cje_probe_slices", "params:estimation", "params:judge"],
                "estimation_result",
                name="estimate_policy_values",
            ),
            Node(tabulate_estimates, ["estimation_result", "policy_truth"], "policy_estimates", name="tabulate_estimates"),
            Node(tabulate_differences, "estimation_result", "policy_differences", name="tabulate_differences"),
            Node(tabulate_comparisons, "estimation_result", ["comparisons", "policy_decisions"],
                 name="tabulate_comparisons"),
            Node(plot_forest, "policy_estimates", "forest_plot", name="plot_forest"),
            # --- report (arena_cje.report) ---
            Node(plot_calibration_node, "estimation_result", "calibration_plot", name="plot_calibration"),
            Node(plot_weights_node, ["estimation_result", "params:estimation"], "weight_diagnostics_plot",
                 name="plot_weight_diagnostics"),
            Node(plot_differences_node, ["policy_differences", "params:logging_policy"], "differences_plot",
                 name="plot_differences"),
            Node(summarise_stages, ["responses", "logprobs", "judge_scores", "labeling_summary"], "stage_summary",
                 name="summarise_stages"),
            Node(plan_label_budget_node, ["estimation_result", "policy_estimates", "policy_differences", "parameters"],
                 "label_budget", name="plan_label_budget"),
            Node(
                write_report,
                ["parameters", "policy_estimates", "policy_differences", "estimation_result", "policy_truth",
                 "teacher_forcing_check", "stage_summary", "prompt_filter_report", "labeling_summary", "label_budget",
                 "comparisons", "policy_decisions"],
                ["report_html", "report_markdown"],
                name="write_report",
            ),
        ]
    )
