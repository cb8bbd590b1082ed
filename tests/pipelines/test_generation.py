import math

import numpy as np
import pandas as pd
import pytest

from arena_cje.pipelines.generation.nodes import (
    check_teacher_forcing,
    compute_true_values,
    generate_responses,
    teacher_force_logged_responses,
)
from arena_cje.pipelines.generation.pipeline import create_pipeline

from .helpers import run_in_memory


@pytest.fixture
def prompts() -> pd.DataFrame:
    from arena_cje.backends.simulated import synthetic_prompts

    return synthetic_prompts(60, seed=3).assign(split="evaluation")


def test_pipeline_slice_produces_responses_logprobs_and_truth(prompts, parameters):
    out = run_in_memory(create_pipeline(), {"prompts": prompts}, parameters)
    policies = set(parameters["policies"])
    responses = out["responses"]
    assert set(responses["policy"]) == policies
    assert len(responses) == len(prompts) * len(policies)
    assert responses["error"].isna().all()
    logprobs = out["logprobs"]
    assert set(logprobs["policy"]) == policies
    assert (logprobs["logprob"] < 0).all(), "log-probs of real responses are negative"
    assert out["teacher_forcing_check"]["passed"]
    assert out["teacher_forcing_check"]["max_abs_diff"] == 0.0  # deterministic backend: exact
    truth = out["policy_truth"].set_index("policy")["truth"]
    assert set(truth.index) == policies and truth.between(0, 1).all()


def test_clone_policy_gets_weight_exactly_one(prompts, parameters):
    policies = dict(parameters["policies"])
    policies["pi_clone"] = dict(policies["pi_0"])
    args = (parameters["backend"], policies, parameters["policy_defaults"])
    responses = generate_responses(prompts, *args, parameters["generation"])
    logprobs = teacher_force_logged_responses(prompts, responses, *args, "pi_0")
    wide = logprobs.pivot(index="prompt_id", columns="policy", values="logprob")
    assert (np.exp(wide["pi_clone"] - wide["pi_0"]) == 1.0).all()
    # ...while a genuinely different policy moves the weights.
    assert (wide["pi_hot"] != wide["pi_0"]).mean() > 0.9


def test_responses_are_reproducible_and_prefix_stable(prompts, parameters):
    args = (parameters["backend"], parameters["policies"], parameters["policy_defaults"], parameters["generation"])
    full = generate_responses(prompts, *args)
    head = generate_responses(prompts.iloc[:20], *args)
    merged = head.merge(full, on=["prompt_id", "policy"], suffixes=("_head", "_full"))
    assert len(merged) == len(head)
    assert (merged["response_head"] == merged["response_full"]).all()


def test_missing_logprob_stays_missing_and_is_counted():
    responses = pd.DataFrame({"prompt_id": ["a", "b", "c"], "policy": "pi_0", "logprob": [-3.0, -5.0, np.nan]})
    logprobs = pd.DataFrame({"prompt_id": ["a", "b", "c"], "policy": "pi_0", "logprob": [-3.0, np.nan, -7.0]})
    report = check_teacher_forcing(responses, logprobs, "pi_0")
    assert report["n_compared"] == 1 and report["n_missing"] == 2
    assert report["max_abs_diff"] == 0.0


def test_teacher_forcing_mismatch_fails_the_check():
    responses = pd.DataFrame({"prompt_id": ["a", "b"], "policy": "pi_0", "logprob": [-3.0, -5.0]})
    logprobs = pd.DataFrame({"prompt_id": ["a", "b"], "policy": "pi_0", "logprob": [-3.0, -5.5]})
    report = check_teacher_forcing(responses, logprobs, "pi_0")
    assert not report["passed"] and math.isclose(report["max_abs_diff"], 0.5)


def test_unknown_logging_policy_is_a_clear_error(prompts, parameters):
    responses = generate_responses(
        prompts.iloc[:3], parameters["backend"], parameters["policies"], parameters["policy_defaults"], parameters["generation"]
    )
    with pytest.raises(ValueError, match="logging_policy='pi_x' is not one of the policies"):
        teacher_force_logged_responses(
            prompts, responses, parameters["backend"], parameters["policies"], parameters["policy_defaults"], "pi_x"
        )


def test_unknown_policy_field_names_the_policy(prompts, parameters):
    policies = {"pi_0": {"temprature": 0.5}}
    with pytest.raises(ValueError, match=r"policies.pi_0: unknown field\(s\) \['temprature'\]"):
        compute_true_values(prompts, parameters["backend"], policies, parameters["policy_defaults"])


def test_backend_without_generation_logprobs_is_reported_not_failed():
    responses = pd.DataFrame({"prompt_id": ["a", "b"], "policy": "pi_0", "logprob": [np.nan, np.nan]})
    logprobs = pd.DataFrame({"prompt_id": ["a", "b"], "policy": "pi_0", "logprob": [-3.0, -4.0]})
    report = check_teacher_forcing(responses, logprobs, "pi_0")
    assert report["passed"] is None and "check-models" in report["note"]


def test_truncated_responses_are_flagged(prompts, parameters):
    defaults = {**parameters["policy_defaults"], "max_tokens": 8}
    responses = generate_responses(prompts, parameters["backend"], parameters["policies"], defaults, parameters["generation"])
    assert responses["truncated"].any()
    assert (responses.loc[responses["truncated"], "n_tokens"] >= 8).all()
