"""``reporting``: plots, stage summary, label budget and the report, from what estimation persisted.

Runs after ``estimation`` in ``__default__``; alone (``kedro run --pipelines reporting``) it
re-renders the report from ``data/07_model_output`` without re-estimating. Nodes are in the
``reporting`` namespace and tagged ``report``; datasets and parameters keep their names.
"""

from kedro.pipeline import Node, Pipeline

from arena_cje.report import plot_forest

from .nodes import (
    plan_label_budget_node,
    plot_calibration_node,
    plot_differences_node,
    plot_weights_node,
    summarise_stages,
    write_report,
)

#: Parameter blocks shown in the report's configuration section (with ``logging_policy``).
#: ``estimation`` is not among them: the report shows the settings the estimates were made with,
#: which ``estimation_result`` carries. ``backend`` contributes only its name: the whole block
#: reaches a node with its credentials resolved (``BackendParamsHook``), and re-rendering a
#: report must need no API key.
CONFIGURATION_BLOCKS = {
    **{block: f"params:{block}" for block in (
        "prompts", "split", "generation", "policy_defaults", "policies", "judge", "labeling", "report")},
    "backend": "params:backend.name",
}

#: The datasets ``write_report`` reads, by argument name (the plots: the PNGs the plot nodes saved, embedded as
#: they are rather than drawn a second time).
REPORT_INPUTS = {
    "policy_estimates": "policy_estimates",
    "policy_differences": "policy_differences",
    "estimation_result": "estimation_result",
    "policy_truth": "policy_truth",
    "teacher_forcing_check": "teacher_forcing_check",
    "stage_summary_table": "stage_summary",
    "prompt_filter_report": "prompt_filter_report",
    "labeling_summary": "labeling_summary",
    "label_budget": "label_budget",
    "comparisons": "comparisons",
    "policy_decisions": "policy_decisions",
    **{plot: plot for plot in ("forest_plot", "differences_plot", "calibration_plot", "weight_diagnostics_plot")},
    "logging_policy": "params:logging_policy",
}


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(plot_forest, "policy_estimates", "forest_plot", name="plot_forest"),
            Node(plot_calibration_node, "estimation_result", "calibration_plot", name="plot_calibration"),
            Node(plot_weights_node, "estimation_result", "weight_diagnostics_plot", name="plot_weight_diagnostics"),
            Node(plot_differences_node, ["policy_differences", "params:logging_policy"], "differences_plot",
                 name="plot_differences"),
            Node(summarise_stages, ["responses", "logprobs", "judge_scores", "labeling_summary"], "stage_summary",
                 name="summarise_stages"),
            Node(plan_label_budget_node,
                 ["estimation_result", "policy_estimates", "policy_differences", "params:logging_policy",
                  "params:report", "params:labeling"],
                 "label_budget", name="plan_label_budget"),
            Node(write_report, {**REPORT_INPUTS, **CONFIGURATION_BLOCKS}, ["report_html", "report_markdown"],
                 name="write_report"),
        ],
        namespace="reporting",
        tags=["report"],
        prefix_datasets_with_namespace=False,
    )
