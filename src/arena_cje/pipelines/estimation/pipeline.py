"""``estimation``: calibrate, estimate, tabulate and plot."""

from kedro.pipeline import Node, Pipeline

from .nodes import estimate_policy_values, plot_forest, tabulate_differences, tabulate_estimates


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                estimate_policy_values,
                ["cje_logged_data", "cje_fresh_draws", "cje_probe_slices", "params:estimation"],
                "estimation_result",
                name="estimate_policy_values",
            ),
            Node(tabulate_estimates, ["estimation_result", "policy_truth"], "policy_estimates", name="tabulate_estimates"),
            Node(tabulate_differences, "estimation_result", "policy_differences", name="tabulate_differences"),
            Node(plot_forest, "policy_estimates", "forest_plot", name="plot_forest"),
        ]
    )
