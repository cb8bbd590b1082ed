"""``data_prep``: the prompt source and its filters, the pool, the run's prompts and their split.

Nodes live in the ``data_prep`` namespace (``data_prep.split_prompts``; kedro-viz collapses them into
one modular pipeline); dataset and parameter names are not prefixed, so the catalog's names hold.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import build_prompt_pool, extract_source_prompts, select_run_prompts, split_prompts


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            # `arena_conversations` is lazy: nothing is read unless prompts.source names an Arena source.
            Node(
                extract_source_prompts,
                ["arena_conversations", "params:prompts"],
                ["source_prompts", "prompt_filter_report"],
                name="extract_source_prompts",
            ),
            Node(build_prompt_pool, ["params:prompts", "source_prompts"], "prompt_pool", name="build_prompt_pool"),
            Node(select_run_prompts, ["prompt_pool", "params:prompts"], "run_prompts", name="select_run_prompts"),
            Node(split_prompts, ["run_prompts", "params:split"], "prompts", name="split_prompts"),
        ],
        namespace="data_prep",
        prefix_datasets_with_namespace=False,
    )
