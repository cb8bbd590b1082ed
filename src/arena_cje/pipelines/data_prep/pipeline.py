"""``data_prep``: the prompt pool, the run's prompts and their split."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_prompt_pool, select_run_prompts, split_prompts


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(build_prompt_pool, "params:prompts", "prompt_pool", name="build_prompt_pool"),
            Node(select_run_prompts, ["prompt_pool", "params:prompts"], "run_prompts", name="select_run_prompts"),
            Node(split_prompts, ["run_prompts", "params:split"], "prompts", name="split_prompts"),
        ]
    )
