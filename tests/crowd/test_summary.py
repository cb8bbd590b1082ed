"""The labeling summary (crowd.summarise_labeling) on hand-made votes with known figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from arena_cje.crowd import SummarySettings, krippendorff_alpha, summarise_labeling

SETTINGS = SummarySettings(votes_per_item=2, price_per_label=0.5, currency="EUR", rating_min=0, rating_max=10,
                           min_gold_accuracy=0.6)


def _round():
    mapping = pd.DataFrame({
        "task_id": ["t1", "t2", "t3", "t4", "t5", "t6"],
        "kind": ["item", "item", "item", "item", "gold", "duplicate"],
        "purpose": ["calibration", "calibration", "probe", "probe", None, "calibration"],
        "policy": ["pi_0", "pi_0", "pi_a", "pi_b", "pi_0", "pi_0"],
        "prompt_id": ["p1", "p2", "p3", "p4", "p5", "p1"], "draw_idx": 0,
    })
    # w1 and w2 agree closely; w3 is a spammer dropped by quality control.
    votes = [("t1", "w1", 8), ("t1", "w2", 9), ("t2", "w1", 2), ("t2", "w2", 2), ("t3", "w1", 5), ("t3", "w2", 6),
             ("t5", "w1", 1), ("t5", "w2", 0), ("t6", "w1", 8), ("t6", "w2", 7), ("t1", "w3", 0), ("t3", "w3", 10)]
    valid = pd.DataFrame(votes, columns=["task_id", "worker_id", "rating"])
    quality = pd.DataFrame({"worker_id": ["w1", "w2", "w3"], "gold_accuracy": [1.0, 1.0, float("nan")],
                            "dropped": [False, False, True]})
    labels = pd.DataFrame({"prompt_id": ["p1", "p2", "p3"], "policy": ["pi_0", "pi_0", "pi_a"], "draw_idx": 0,
                           "oracle_label": [0.85, 0.2, 0.55], "n_votes": [2, 2, 2],
                           "purpose": ["calibration", "calibration", "probe"]})
    report = {"rows": 13, "valid_rows": 12, "quarantined_rows": 1, "reasons": {"unknown task_id": 1},
              "file": "crowd_ratings.csv", "bytes": 200, "sha256": "ab" * 32, "encoding": "utf-8", "format": "csv",
              "separator": ",", "file_problems": []}
    return mapping, valid, quality, labels, report


def test_summary_counts_labels_votes_workers_and_cost():
    mapping, valid, quality, labels, report = _round()
    s = summarise_labeling(mapping, valid, quality, labels, report, SETTINGS)
    json.dumps(s, allow_nan=False)  # JSON-able: no NaN, no numpy scalars
    assert s["labels"]["needed"] == 4 and s["labels"]["collected"] == 3
    assert s["labels"]["by_purpose"] == {"calibration": {"needed": 2, "collected": 2}, "probe": {"needed": 2, "collected": 1}}
    assert s["labels"]["probe_by_policy"] == {"pi_a": {"needed": 1, "collected": 1}, "pi_b": {"needed": 1, "collected": 0}}
    assert s["labels"]["mean_votes_per_label"] == 2.0
    assert s["votes"] == {"expected": 12, "received": 13, "valid": 12, "quarantined": 1, "from_dropped_workers": 2,
                          "quarantine_reasons": {"unknown task_id": 1}}
    assert s["workers"] == {"n": 3, "dropped": ["w3"], "min_gold_accuracy": 0.6, "mean_gold_accuracy": 1.0}
    assert s["cost"] == {"currency": "EUR", "price_per_label": 0.5, "expected": 6.0, "received_votes": 6.5}
    assert s["file"]["sha256"] == "ab" * 32 and s["file"]["format"] == "csv"


def test_summary_agreement_excludes_dropped_workers_and_gold_items():
    mapping, valid, quality, labels, report = _round()
    s = summarise_labeling(mapping, valid, quality, labels, report, SETTINGS)["agreement"]
    kept = valid[valid["worker_id"] != "w3"]
    assert s["overall"] == pytest.approx(krippendorff_alpha(kept, mapping))
    assert s["overall_before_qc"] == pytest.approx(krippendorff_alpha(valid, mapping))
    assert s["overall"] > 0.9 > s["overall_before_qc"]  # the spammer's votes pull agreement down
    # Duplicate t6 (mean 7.5) vs its original t1 (mean 8.5, kept votes): |8.5 - 7.5| / 10.
    assert s["duplicate_mean_abs_diff"] == pytest.approx(0.1)


def test_summary_with_no_labels_and_no_gold_answers_says_none_not_nan():
    mapping, valid, quality, labels, report = _round()
    s = summarise_labeling(mapping, valid.iloc[:0], quality.assign(gold_accuracy=float("nan")), labels.iloc[:0],
                           report, SETTINGS)
    json.dumps(s, allow_nan=False)
    assert s["labels"]["collected"] == 0 and s["labels"]["mean_votes_per_label"] is None
    assert s["workers"]["mean_gold_accuracy"] is None and s["agreement"]["overall"] is None


def test_settings_read_the_labeling_parameter_block():
    block = {"votes_per_item": 3, "price_per_label": 0.1, "currency": "USD", "rating_min": 0, "rating_max": 10,
             "min_gold_accuracy": 0.6, "seed": 11}
    assert SummarySettings.from_params(block) == SummarySettings(3, 0.1, "USD", 0.0, 10.0, 0.6)
