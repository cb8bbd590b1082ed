import numpy as np
import pandas as pd

from arena_cje.backends import Judgement
from arena_cje.pipelines.judging.nodes import judge_responses
from arena_cje.pipelines.judging.pipeline import create_pipeline

from .helpers import run_in_memory


def _items():
    prompts = pd.DataFrame({"prompt_id": ["p1", "p2"], "prompt": ["What is 2+2?", "Name a colour."]})
    responses = pd.DataFrame(
        {
            "prompt_id": ["p1", "p2", "p2"],
            "policy": ["pi_0", "pi_0", "pi_hot"],
            "draw_idx": 0,
            "response": ["four", "blue", ""],
            "error": [None, None, "generation failed: timeout"],
        }
    )
    return prompts, responses


def test_failed_generations_are_not_judged_and_scores_are_in_range(parameters):
    from arena_cje.backends.simulated import synthetic_prompts

    prompts = synthetic_prompts(20, seed=1)
    from arena_cje.pipelines.generation.nodes import generate_responses

    responses = generate_responses(
        prompts, parameters["backend"], parameters["policies"], parameters["policy_defaults"], parameters["generation"]
    )
    responses.loc[0, "error"] = "injected failure"
    out = run_in_memory(create_pipeline(), {"prompts": prompts, "responses": responses}, parameters)
    scores = out["judge_scores"]
    assert len(scores) == len(responses) - 1
    assert scores["judge_score"].between(0, 1).all()


class _RefusingJudge:
    def judge_batch(self, prompts, responses, judge):
        return [Judgement(score=None, raw="I cannot rate this.", error="unparseable judge reply") for _ in prompts]


def test_unparseable_judgement_is_missing_with_raw_text(monkeypatch, parameters):
    import arena_cje.pipelines.judging.nodes as nodes

    monkeypatch.setattr(nodes, "backend_from_params", lambda _: _RefusingJudge())
    prompts, responses = _items()
    scores = judge_responses(prompts, responses, parameters["backend"], parameters["judge"])
    assert len(scores) == 2
    assert scores["judge_score"].isna().all()  # never a default score
    assert (scores["judge_raw"] == "I cannot rate this.").all()
    assert (scores["error"] == "unparseable judge reply").all()
    assert not np.isin(scores["judge_score"].to_numpy(), [0.0, 0.5]).any()
