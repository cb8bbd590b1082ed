"""The label mask of the probe study (benchmarks/probe_study.py): coverage vs share of the labelled prompts.

The draw test reads the shared arena sample and skips when it is absent (seconds: one load, one draw).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "arena_sample"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("probe_study", BENCH / "probe_study.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def test_mask_size_coverage_counts_prompts_labelled_counts_labels(study):
    # The "25% oracle mask" on 1,000 prompts of which 480 are labelled: 250 labels, not 120.
    assert study.mask_size("coverage", 0.25, 1000, 480) == 250
    assert study.mask_size("labelled", 0.25, 1000, 480) == 120
    assert study.mask_size("coverage", 0.48, 1000, 480) == 480
    with pytest.raises(ValueError, match="only 480 prompts carry one"):
        study.mask_size("coverage", 0.5, 1000, 480)
    with pytest.raises(ValueError, match="mask must be one of"):
        study.mask_size("labels", 0.25, 1000, 480)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        study.mask_size("labelled", 0.0, 1000, 480)


@pytest.mark.parametrize("mask,expected", [("coverage", 250), ("labelled", 120)])
def test_draw_keeps_that_many_labels_of_labelled_prompts(study, mask, expected):
    if not (SAMPLE / "logged_data.jsonl").exists():
        pytest.skip(f"arena sample not found at {SAMPLE}")
    study.prepare(SAMPLE, mask, 0.25, 50, ["direct"])
    lg, fr, probes = study._draw(3)
    pid = lg["metadata"].map(lambda m: m["prompt_id"])
    kept = set(pid[lg["oracle_label"].notna()])
    assert len(kept) == expected == lg["oracle_label"].notna().sum()
    assert kept <= set(study._STATE["labelled"])
    assert set(fr["base"].loc[fr["base"]["oracle_label"].notna(), "prompt_id"]) == kept
    assert {p: len(x) for p, x in probes.items()} == {p: 50 for p in study.TARGETS}
