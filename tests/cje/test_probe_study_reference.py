"""benchmarks/probe_study_reference.py: the reference library gets exactly the probe study's draws.

The draw test reads the shared arena sample and skips when it is absent (one load, a few draws: seconds).
Neither test builds or runs the cje-eval venv.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "arena_sample"


@pytest.fixture(scope="module")
def ref():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("probe_study_reference", BENCH / "probe_study_reference.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def test_reference_draw_is_the_probe_study_draw(ref):
    if not (SAMPLE / "logged_data.jsonl").exists():
        pytest.skip(f"arena sample not found at {SAMPLE}")
    study = ref.probe_study
    study.prepare(SAMPLE, "coverage", 0.25, 50, ["direct"])
    gt = study._STATE["gt"]
    for d in (0, 7):
        got = ref.reference_draw(d)
        lg, _, probes = study._draw(d)
        pid = lg["metadata"].map(lambda m: m["prompt_id"])
        assert got["keep"] == sorted(pid[lg["oracle_label"].notna()]) and len(got["keep"]) == 250
        for p in study.TARGETS:
            rows = pd.DataFrame(got["probes"][p])
            pd.testing.assert_frame_equal(rows, probes[p][["prompt_id", "judge_score", "oracle_label"]])
            # Each probe row is a labelled ground-truth row of that policy (same prompt, score and label).
            assert len(rows.merge(gt[p], on=["prompt_id", "judge_score", "oracle_label"])) == 50
    assert ref.reference_draw(0)["keep"] != ref.reference_draw(7)["keep"]


def test_summarise_scores_against_truth(ref):
    truth = {"a": 0.5}
    df = pd.DataFrame({"policy": "a", "estimate": [0.52, 0.44, 0.50, 0.60], "ci_lower": [0.49, 0.40, 0.51, 0.55],
                       "ci_upper": [0.55, 0.48, 0.52, 0.65], "refuse_level": [False, False, False, True],
                       "boundary_gate": [False, False, True, False], "delta_hat": [0.0, 0.1, 0.0, -0.1],
                       "audit": ["INCONCLUSIVE", "INCONCLUSIVE", "PASS", "FAIL"]})
    x = ref.summarise(df, truth).loc["a"]
    err = np.array([0.02, -0.06, 0.0, 0.10])
    assert x.bias == pytest.approx(err.mean()) and x.rmse == pytest.approx(np.sqrt(np.mean(err**2)))
    assert x.coverage == 0.25  # only the first interval holds 0.5 (the third is [0.51, 0.52])
    assert x.within_005 == 0.5 and x.refuse_level == 0.25 and x.boundary_gate == 0.25
    assert x.n_kept == 3 and x.within_005_kept == pytest.approx(2 / 3)
    assert (x.FAIL, x.INCONCLUSIVE, x.PASS, x.NOT_CHECKED) == (0.25, 0.5, 0.25, 0.0)
    assert x.half_width == pytest.approx(np.mean([0.03, 0.04, 0.005, 0.05]))
