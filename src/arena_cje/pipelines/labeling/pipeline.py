"""``labeling``: select items, export blinded tasks, collect (simulated) ratings, import, check,
aggregate, summarise, assemble.

Registered three ways: ``labeling`` (all of it; with the simulated backend the simulated crowd
answers), ``labeling_export`` (stop after the task files) and ``labeling_import`` (start from a
platform's result file in ``data/01_raw/labels/``). Every node is in the ``labeling`` namespace
(``labeling.import_ratings``); datasets and parameters keep their names. ``collect_ratings`` is
tagged ``api``: with ``labeling.oracle: llm`` it sends the tasks to an LLM oracle.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    aggregate_oracle_labels,
    archive_raw_ratings,
    assemble_cje_dataset,
    collect_ratings,
    export_label_tasks,
    import_ratings,
    score_workers,
    select_label_items,
    summarise_labeling,
)

NAMESPACE = "labeling"

EXPORT_OUTPUTS = [
    "label_tasks",
    "label_task_mapping",
    "label_tasks_generic",
    "label_studio_tasks",
    "label_studio_config",
    "labeling_instructions",
    "labeling_export_summary",
]


def create_export_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                select_label_items,
                ["prompts", "responses", "judge_scores", "params:logging_policy", "params:labeling"],
                "label_items",
                name="select_label_items",
            ),
            Node(
                export_label_tasks,
                ["label_items", "params:labeling"],
                {name: name for name in EXPORT_OUTPUTS},
                name="export_label_tasks",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )


def create_collect_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                collect_ratings,
                ["label_tasks", "label_task_mapping", "params:backend", "params:labeling"],
                "crowd_ratings",
                name="collect_ratings",
                tags=["api"],
            )
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )


def create_import_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                archive_raw_ratings,
                "crowd_ratings",
                ["crowd_ratings_archive", "crowd_ratings_fingerprint"],
                name="archive_raw_ratings",
            ),
            Node(
                import_ratings,
                ["crowd_ratings", "crowd_ratings_fingerprint", "label_task_mapping", "params:labeling"],
                ["valid_ratings", "quarantined_ratings", "labeling_import_report"],
                name="import_ratings",
            ),
            Node(score_workers, ["valid_ratings", "label_task_mapping", "params:labeling"], "worker_quality", name="score_workers"),
            Node(
                aggregate_oracle_labels,
                ["valid_ratings", "worker_quality", "label_task_mapping", "params:labeling"],
                "oracle_labels",
                name="aggregate_oracle_labels",
            ),
            Node(
                summarise_labeling,
                ["label_task_mapping", "valid_ratings", "worker_quality", "oracle_labels", "labeling_import_report", "params:labeling"],
                "labeling_summary",
                name="summarise_labeling",
            ),
            Node(
                assemble_cje_dataset,
                ["prompts", "responses", "logprobs", "judge_scores", "oracle_labels", "params:logging_policy"],
                ["cje_logged_data", "cje_fresh_draws", "cje_probe_slices"],
                name="assemble_cje_dataset",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )


def create_pipeline(**kwargs) -> Pipeline:
    return create_export_pipeline() + create_collect_pipeline() + create_import_pipeline()
