import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from arena_cje.crowd import (
    CrowdConfig,
    RawFile,
    add_quality_items,
    aggregate_ratings,
    horvitz_thompson_mean,
    instructions_markdown,
    krippendorff_alpha,
    label_studio_config,
    label_studio_tasks,
    make_label_tasks,
    parse_ratings,
    ratings_csv_bytes,
    simulate_platform_ratings,
    stratified_sample,
    validate_ratings,
    worker_quality,
)

from .fakes import FakeWorld


def _items(n=40):
    return pd.DataFrame(
        {"prompt_id": [f"p{i}" for i in range(n)], "policy": "pi_0", "draw_idx": 0,
         "prompt": [f"prompt {i}" for i in range(n)], "response": [f"response {i}" for i in range(n)],
         "purpose": "calibration", "inclusion_prob": 0.25}
    )


def test_simple_random_sample_inclusion_probability():
    frame = _items(40).assign(judge_score=np.linspace(0, 1, 40))
    sample = stratified_sample(frame, 10, seed=1)
    assert len(sample) == 10 and sample["prompt_id"].is_unique
    assert np.allclose(sample["inclusion_prob"], 10 / 40)


def test_stratified_inclusion_probabilities_make_horvitz_thompson_unbiased():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.random(90) * 0.3, 0.7 + rng.random(10) * 0.3, [np.nan] * 5])
    frame = pd.DataFrame({"prompt_id": range(105), "judge_score": scores, "y": np.nan_to_num(scores, nan=0.5) ** 2})
    sample = stratified_sample(frame, 20, seed=3, n_strata=4)
    sizes = sample.groupby("stratum").size()
    # pi_h = n_h / N_h, so sum over the sample of 1/pi is exactly the population size.
    assert (1 / sample["inclusion_prob"]).sum() == pytest.approx(105)
    assert set(sample["stratum"]) == {-1, 0, 1, 2, 3} and sizes.sum() == 20
    estimates = [horvitz_thompson_mean(s["y"], s["inclusion_prob"], 105)
                 for s in (stratified_sample(frame, 20, seed=k, n_strata=4) for k in range(200))]
    # Unbiased: the average estimate is within 3 Monte Carlo standard errors of the truth.
    assert abs(np.mean(estimates) - frame["y"].mean()) < 3 * np.std(estimates) / np.sqrt(200)


def test_tasks_are_opaque_and_quality_items_are_right():
    items = _items()
    with_qc = add_quality_items(items, n_gold=5, n_duplicates=4, gold_max_rating=3, seed=0)
    tasks, mapping = make_label_tasks(with_qc, seed=1)
    assert mapping["kind"].value_counts().to_dict() == {"item": 40, "gold": 5, "duplicate": 4}
    assert all(re.fullmatch(r"t[0-9a-f]{12}", t) for t in tasks["task_id"]) and tasks["task_id"].is_unique
    joined = tasks.merge(mapping, on="task_id")
    gold = joined[joined["kind"] == "gold"]
    # A gold item shows the response to another prompt.
    assert (gold["response"].str.replace("response ", "") != gold["prompt_id"].str.lstrip("p")).all()
    assert (gold["gold_max_rating"] == 3).all() and (joined.loc[joined["kind"] != "gold", "gold_max_rating"].isna()).all()
    dup = joined[joined["kind"] == "duplicate"]
    assert set(dup["prompt_id"]) <= set(items["prompt_id"])


def test_label_studio_config_matches_tasks_and_instructions_have_anchors():
    tasks, _ = make_label_tasks(_items(3), seed=0)
    config = ET.fromstring(label_studio_config(0, 10))
    variables = {e.get("value")[1:] for e in config.iter("Text")}
    assert variables <= set(label_studio_tasks(tasks)[0]["data"])
    number = next(config.iter("Number"))
    assert (number.get("name"), number.get("min"), number.get("max")) == ("rating", "0", "10")
    text = instructions_markdown(0, 10)
    for aspect in ("Helpfulness", "Correctness", "Safety"):
        section = text.split(f"## {aspect}")[1].split("##")[0]
        assert all(f"**{a}**" in section for a in ("0", "5", "10"))


def test_aggregate_normalises_merges_duplicates_and_skips_gold():
    mapping = pd.DataFrame(
        {"task_id": ["a", "b", "g"], "prompt_id": ["p1", "p1", "p2"], "policy": "pi_0", "draw_idx": 0,
         "purpose": ["calibration", "calibration", "gold"], "kind": ["item", "duplicate", "gold"],
         "inclusion_prob": 0.25, "gold_max_rating": [np.nan, np.nan, 3]}
    )
    votes = pd.DataFrame({"task_id": ["a", "a", "a", "b", "g"], "worker_id": list("xyzxx"), "rating": [2.0, 4, 9, 5, 0]})
    labels = aggregate_ratings(votes, mapping, 0, 10)
    assert len(labels) == 1
    row = labels.iloc[0]
    assert row["n_votes"] == 4 and row["oracle_label"] == pytest.approx(0.5)
    assert row["oracle_median"] == pytest.approx(0.45)
    assert row["oracle_std"] == pytest.approx(np.std([2, 4, 9, 5], ddof=1) / 10)


def test_krippendorff_alpha_limits():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 11, 200)
    same = pd.DataFrame([(f"t{i}", w, float(v)) for i, v in enumerate(truth) for w in "abc"], columns=["task_id", "worker_id", "rating"])
    assert krippendorff_alpha(same) == pytest.approx(1.0)
    noise = same.assign(rating=rng.integers(0, 11, len(same)).astype(float))
    assert abs(krippendorff_alpha(noise)) < 0.1
    assert krippendorff_alpha(same.iloc[:1]) is None


def test_gold_accuracy_drops_only_workers_with_enough_evidence():
    mapping = pd.DataFrame({"task_id": [f"g{i}" for i in range(4)], "kind": "gold", "gold_max_rating": 3.0})
    votes = pd.DataFrame(
        [(f"g{i}", "good", 1.0) for i in range(4)] + [(f"g{i}", "bad", 9.0) for i in range(4)] + [("g0", "new", 9.0)],
        columns=["task_id", "worker_id", "rating"],
    )
    quality = worker_quality(votes, mapping, min_gold_accuracy=0.6, min_gold_answers=3).set_index("worker_id")
    assert quality.loc["good", "gold_accuracy"] == 1.0 and not quality.loc["good", "dropped"]
    assert quality.loc["bad", "gold_accuracy"] == 0.0 and quality.loc["bad", "dropped"]
    assert not quality.loc["new", "dropped"]  # one gold answer is too little evidence


def test_simulated_crowd_spammers_are_found_and_the_file_imports():
    items = _items(150)
    tasks, mapping = make_label_tasks(add_quality_items(items, 60, 10, 3, seed=0), seed=0)
    config = CrowdConfig(n_workers=10, noisy_fraction=0.0, spammer_fraction=0.2, duplicate_rate=0.02)
    ratings = simulate_platform_ratings(tasks, mapping, FakeWorld().rate, 3, 0, 10, config, seed=5)
    assert ratings["worker_id"].str.fullmatch(r"A[A-Z0-9]{13}").all()
    parsed = parse_ratings(RawFile("sim.csv", ratings_csv_bytes(ratings)))
    valid, bad = validate_ratings(parsed.rows, mapping, 0, 10, min_votes=2)
    assert len(valid) + len(bad) == len(ratings)
    assert len(bad) and bad["reason"].str.startswith("duplicate vote").all()  # the double submissions
    quality = worker_quality(valid, mapping, 0.6, 3).set_index("worker_id")
    kinds = pd.Series(ratings.attrs["worker_kinds"]).reindex(quality.index)
    assert (kinds == "spammer").sum() == 2
    assert (quality.loc[kinds == "honest", "gold_accuracy"] == 1.0).all()
    # Spammers pass a gold item with chance 4/11; only spammers are dropped, and some are.
    assert set(quality.index[quality["dropped"]]) <= set(kinds.index[kinds == "spammer"])
    assert quality["dropped"].any()
    kept = valid[~valid["worker_id"].isin(quality.index[quality["dropped"]])]
    assert krippendorff_alpha(kept, mapping) > krippendorff_alpha(valid, mapping)
