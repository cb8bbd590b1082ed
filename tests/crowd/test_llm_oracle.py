import pandas as pd
import pytest

from arena_cje.backends import Judgement
from arena_cje.crowd import llm_oracle_ratings, parse_ratings, ratings_csv_bytes, validate_ratings
from arena_cje.crowd.parse import RawFile
from arena_cje.pipelines.labeling import nodes

TASKS = pd.DataFrame({"task_id": ["t1", "t2", "t3"], "prompt": ["p1", "p2", "p3"], "response": ["a", "b", "c"]})
MAPPING = pd.DataFrame({"task_id": ["t1", "t2", "t3"]})


def test_llm_oracle_rates_every_task_and_unscored_ones_are_quarantined():
    ratings = llm_oracle_ratings(TASKS, lambda p, r: [0.0, 0.73, None], 0, 10)
    assert list(ratings["rating"]) == ["0", "7", ""]
    parsed = parse_ratings(RawFile("oracle.csv", ratings_csv_bytes(ratings)))
    valid, quarantined = validate_ratings(parsed.rows, MAPPING, 0, 10, source="oracle.csv")
    assert sorted(valid["task_id"]) == ["t1", "t2"]
    assert list(quarantined["task_id"]) == ["t3"] and quarantined["reason"].str.len().gt(0).all()


class _ModelBackend:
    """A real-model-like backend: a judge, no simulated raters."""

    def __init__(self):
        self.specs = []

    def judge_batch(self, prompts, responses, judge):
        self.specs.append(judge)
        return [Judgement(score=0.5) for _ in prompts]


def test_collect_ratings_uses_the_llm_oracle_spec(monkeypatch):
    backend = _ModelBackend()
    monkeypatch.setattr(nodes, "backend_from_params", lambda _: backend)
    labeling = {"oracle": "llm", "rating_min": 0, "rating_max": 10,
                "llm_oracle": {"model": "big-model", "temperature": 0.0, "rubric": "Rate 0-1."}}
    raw = nodes.collect_ratings(TASKS, MAPPING, {"name": "x"}, labeling)
    assert backend.specs[0].model == "big-model" and backend.specs[0].rubric == "Rate 0-1."
    assert parse_ratings(raw).rows["rating"].tolist() == ["5", "5", "5"]


def test_crowd_oracle_without_simulated_raters_says_how_to_label(monkeypatch):
    monkeypatch.setattr(nodes, "backend_from_params", lambda _: _ModelBackend())
    with pytest.raises(RuntimeError, match="labeling_import"):
        nodes.collect_ratings(TASKS, MAPPING, {"name": "x"}, {"oracle": "crowd", "rating_min": 0, "rating_max": 10})
