"""``estimation``: calibrate, estimate, tabulate, and record the results with their provenance.

Nodes are in the ``estimation`` namespace; datasets and parameters keep their names. Plots and
the report are the ``reporting`` pipeline, which reads what this one persisted.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import estimate_policy_values, record_results, tabulate_comparisons, tabulate_differences, tabulate_estimates


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
            # `kedro_run` (the run's id and parameters) is put in the catalog by RunProvenanceHook.
            Node(
                record_results,
                ["estimation_result", "policy_estimates", "comparisons", "policy_decisions", "cje_logged_data",
                 "cje_fresh_draws", "cje_probe_slices", "params:estimation", "params:judge", "kedro_run"],
                "results_json",
                name="record_results",
            ),
        ],
        namespace="estimation",
        prefix_datasets_with_namespace=False,
    )
