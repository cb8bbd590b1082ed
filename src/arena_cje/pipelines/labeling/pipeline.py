"""``labeling``: export blinded tasks, collect (simulated) ratings, import, aggregate, assemble.

Registered three ways: ``labeling`` (all of it; with the simulated backend the simulated raters
answer), ``labeling_export`` (stop after the tasks file) and ``labeling_import`` (start from a
platform's results file in ``data/01_raw/labels/``).
"""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    aggregate_oracle_labels,
    assemble_cje_dataset,
    collect_simulated_ratings,
    export_label_tasks,
    import_ratings,
    select_label_items,
)


def create_export_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                select_label_items,
                ["prompts", "responses", "params:logging_policy", "params:labeling"],
                "label_items",
                name="select_label_items",
            ),
            Node(export_label_tasks, ["label_items", "params:labeling"], ["label_tasks", "label_task_mapping"], name="export_label_tasks"),
        ]
    )


def create_collect_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                collect_simulated_ratings,
                ["label_tasks", "params:backend", "params:labeling"],
                "crowd_ratings",
                name="collect_simulated_ratings",
            )
        ]
    )


def create_import_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                import_ratings,
                ["crowd_ratings", "label_task_mapping", "params:labeling"],
                ["valid_ratings", "quarantined_ratings"],
                name="import_ratings",
            ),
            Node(
                aggregate_oracle_labels,
                ["valid_ratings", "label_task_mapping", "params:labeling"],
                "oracle_labels",
                name="aggregate_oracle_labels",
            ),
            Node(
                assemble_cje_dataset,
                ["prompts", "responses", "logprobs", "judge_scores", "oracle_labels", "params:logging_policy"],
                ["cje_logged_data", "cje_fresh_draws", "cje_probe_slices"],
                name="assemble_cje_dataset",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return create_export_pipeline() + create_collect_pipeline() + create_import_pipeline()
