import json

import pandas as pd
import pytest

from arena_cje.pipelines.data_prep.nodes import (
    build_prompt_pool,
    extract_source_prompts,
    select_run_prompts,
    split_prompts,
)
from arena_cje.pipelines.data_prep.pipeline import create_pipeline

from ..conftest import copy_project
from ..prompts.arena_fixture import arena_frame, expected_kept_ids, expected_removed, write_arena_fixture


def run_in_memory(pipeline, inputs: dict, parameters: dict) -> dict:
    """Run ``pipeline`` node by node in memory and return every dataset, intermediates included.

    (``helpers.run_in_memory`` reads outputs back after a ``SequentialRunner`` run, which has by
    then released intermediate memory datasets such as ``prompt_pool``.)
    """
    data = dict(inputs)
    for name in pipeline.inputs():
        if name.startswith("params:"):
            data[name] = parameters[name.removeprefix("params:")]
    for node in pipeline.nodes:  # topologically sorted
        data.update(node.run({name: data[name] for name in node.inputs}))
    return data


def _untouchable_loaders() -> dict:
    def fail():
        raise AssertionError("the simulated source must not read the raw Arena input")

    return {"arena_local": fail, "arena_hf": fail}


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
    with pytest.raises(ValueError, match="output_samples=5000 exceeds the pool of 1000"):
        select_run_prompts(pool, {**parameters["prompts"], "output_samples": 5000})


def test_split_fraction_and_stability(parameters):
    pool = build_prompt_pool(parameters["prompts"])
    split = split_prompts(pool, parameters["split"])
    share = (split["split"] == "calibration").mean()
    assert 0.21 < share < 0.29  # Bernoulli(0.25) on 1,000 prompts: sd 0.014
    # A prompt keeps its split when the run grows.
    head = split_prompts(pool.iloc[:100], parameters["split"])
    assert (head["split"].to_numpy() == split["split"].iloc[:100].to_numpy()).all()
    everything = split_prompts(pool, {**parameters["split"], "calibration_fraction": 1.0})
    assert (everything["split"] == "calibration").all()


def test_unknown_source_is_a_clear_error(parameters):
    with pytest.raises(ValueError, match="unknown source 'arena'.*arena_local"):
        extract_source_prompts({}, {**parameters["prompts"], "source": "arena"})


def test_simulated_slice_runs_in_memory_without_reading_raw_input(parameters):
    out = run_in_memory(create_pipeline(), {"arena_conversations": _untouchable_loaders()}, parameters)
    prompts = out["prompts"]
    assert len(prompts) == parameters["prompts"]["output_samples"]
    assert set(prompts.columns) >= {"prompt_id", "prompt", "split"}
    assert out["prompt_filter_report"]["source"] == "simulated"


def test_arena_slice_in_memory_reports_every_filter(parameters):
    params = {**parameters, "prompts": {**parameters["prompts"], "source": "arena_local", "pool_size": 100,
                                        "output_samples": 5}}
    loaders = {"arena_local": arena_frame, "arena_hf": _untouchable_loaders()["arena_hf"]}
    out = run_in_memory(create_pipeline(), {"arena_conversations": loaders}, params)
    report = out["prompt_filter_report"]
    assert {s["name"]: s["removed"] for s in report["steps"] if s["removed"]} == dict(expected_removed())
    assert report["input_rows"] == len(arena_frame()) and report["eligible"] == len(expected_kept_ids())
    pool = out["prompt_pool"]
    assert set(pool["prompt_id"]) == expected_kept_ids()  # pool_size > eligible: all kept
    assert list(out["prompts"]["prompt_id"]) == list(pool["prompt_id"].iloc[:5])
    assert {"model_a", "model_b", "winner", "tstamp", "split"} <= set(out["prompts"].columns)


def test_kedro_run_data_prep_on_a_local_arena_export(tmp_path):
    """`kedro run --pipelines data_prep --params prompts.source=arena_local` (in-process)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path)
    write_arena_fixture(project / "data/01_raw/arena_conversations/chatbot_arena_conversations.jsonl")
    bootstrap_project(project)
    # Nested, as the CLI's --params "prompts.source=arena_local,..." becomes (dotted keys are not split here).
    params = {"prompts": {"source": "arena_local", "pool_size": 6, "output_samples": 4}}
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["data_prep"])

    report = json.loads((project / "data/08_reporting/prompt_filter_report.json").read_text())
    assert {s["name"]: s["removed"] for s in report["steps"] if s["removed"]} == dict(expected_removed())
    pool = pd.read_parquet(project / "data/02_intermediate/prompt_pool.parquet")
    assert len(pool) == 6 and set(pool["prompt_id"]) < expected_kept_ids()
    prompts = pd.read_parquet(project / "data/03_primary/prompts.parquet")
    assert list(prompts["prompt_id"]) == list(pool["prompt_id"].iloc[:4])
    assert set(prompts["split"]) <= {"calibration", "evaluation"}
    assert prompts["winner"].notna().all() and prompts["prompt"].str.len().between(10, 2000).all()
