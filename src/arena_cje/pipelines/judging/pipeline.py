"""``judging``: LLM-judge scores of every response (namespace ``judging``; tag ``api``: it calls the judge)."""

from kedro.pipeline import Node, Pipeline

from .nodes import judge_responses


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                judge_responses,
                ["prompts", "responses", "params:backend", "params:judge"],
                "judge_scores",
                name="judge_responses",
                tags=["api"],
            )
        ],
        namespace="judging",
        prefix_datasets_with_namespace=False,
    )
