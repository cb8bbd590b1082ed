"""``judging``: LLM-judge scores of every response."""

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
            )
        ]
    )
