from arena_cje.pipelines.data_prep.nodes import build_prompt_pool, select_run_prompts, split_prompts
from arena_cje.pipelines.data_prep.pipeline import create_pipeline

from .helpers import run_in_memory


def test_pool_is_seeded_and_prefix_stable(parameters):
    prompts = parameters["prompts"]
    pool_a = build_prompt_pool(prompts)
    pool_b = build_prompt_pool(prompts)
    assert pool_a.equals(pool_b)
    assert len(pool_a) == prompts["pool_size"]
    assert pool_a["prompt_id"].is_unique
    small = select_run_prompts(pool_a, {**prompts, "output_samples": 50})
    large = select_run_prompts(pool_a, {**prompts, "output_samples": 100})
    assert small.equals(large.iloc[:50])


def test_select_more_than_pool_is_a_clear_error(parameters):
    pool = build_prompt_pool(parameters["prompts"])
    import pytest

    with pytest.raises(ValueError, match="output_samples=5000 exceeds the pool of 1000"):
        select_run_prompts(pool, {**parameters["prompts"], "output_samples": 5000})


def test_split_fraction_and_stability(parameters):
    pool = build_prompt_pool(parameters["prompts"])
    split = split_prompts(pool, parameters["split"])
    share = (split["split"] == "calibration").mean()
    assert 0.21 < share < 0.29  # Bernoulli(0.25) on 1,000 prompts
    # A prompt keeps its split when the run grows.
    head = split_prompts(pool.iloc[:100], parameters["split"])
    assert (head["split"].to_numpy() == split["split"].iloc[:100].to_numpy()).all()


def test_pipeline_slice_runs_in_memory(parameters):
    out = run_in_memory(create_pipeline(), {}, parameters)
    prompts = out["prompts"]
    assert len(prompts) == parameters["prompts"]["output_samples"]
    assert set(prompts.columns) >= {"prompt_id", "prompt", "split"}
