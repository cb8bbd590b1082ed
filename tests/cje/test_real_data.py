"""The reporting rule on the shared arena sample (skips when ../shared/data/arena_sample is absent).

Only logged_data, fresh_draws and probe_slice are read; ground_truth/ is never opened. The true
values checked below are the ones the sample's README documents (clone 0.743,
parallel_universe_prompt 0.777, unhelpful 0.146).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "arena_sample"
README_TRUTH = {"clone": 0.743, "parallel_universe_prompt": 0.777, "unhelpful": 0.146}


def _estimate(rule: str):
    if not (SAMPLE / "logged_data.jsonl").exists():
        pytest.skip(f"arena sample not found at {SAMPLE}")
    rd = lambda p: pd.read_json(p, lines=True, dtype=False)  # noqa: E731
    logged = rd(SAMPLE / "logged_data.jsonl")
    fresh = {p.name.removesuffix("_responses.jsonl"): rd(p) for p in (SAMPLE / "fresh_draws").glob("*.jsonl")}
    probes = {p.name.removesuffix("_probe.jsonl"): rd(p) for p in (SAMPLE / "probe_slice").glob("*.jsonl")}
    for df in (logged, *fresh.values(), *probes.values()):
        df["prompt_length"] = df["prompt"].str.split().str.len().astype(float)
    data = CJEDataset.from_frames(logged, fresh, probes, covariates=("response_length", "prompt_length"))
    cfg = EstimationConfig(estimators=("naive", "calibrated_ips", "direct", "stacked_dr"), calibrator="auto", transport_rule=rule)
    return estimate_policies(data, cfg)


@pytest.fixture(scope="module")
def result():
    return _estimate("correct")


def test_graded_audit_and_rule_on_the_sample():
    res = _estimate("graded")
    a = res.transport
    # unhelpful's residual (about -0.17 on its 50 probe rows) is far beyond +/-0.05; the benign policies'
    # 50-row probes cannot establish equivalence at +/-0.05 after Holm, nor a gap beyond it.
    assert a["unhelpful"].state == "FAIL" and a["unhelpful"].p_beyond_margin_adj < 0.05
    e = res.estimates.set_index(["policy", "estimator"])
    for name in ("direct", "stacked_dr"):
        assert e.loc[("unhelpful", name), "level_source"] == "probe_corrected"
        for p in ("clone", "parallel_universe_prompt"):
            r = e.loc[(p, name)]
            assert a[p].state in ("PASS", "INCONCLUSIVE")
            assert r.level_source == ("combined" if a[p].state == "PASS" else "shrunk")
            assert 0.0 <= r.probe_weight <= 1.0 and r.ci_lower <= README_TRUTH[p] <= r.ci_upper


def test_unhelpful_is_probe_corrected_and_covers(result):
    e = result.estimates.set_index(["policy", "estimator"])
    for name in ("direct", "stacked_dr"):
        r = e.loc[("unhelpful", name)]
        assert r.level_source == "probe_corrected" and r.status == "warning" and "transport audit failed" in r.reasons
        # The borrowed level is off by far more than the corrected one.
        assert r.borrowed_estimate - README_TRUTH["unhelpful"] > 0.15
        assert abs(r.estimate - README_TRUTH["unhelpful"]) < 0.05 and r.ci_lower <= README_TRUTH["unhelpful"] <= r.ci_upper
    assert e.loc[("unhelpful", "calibrated_ips"), "status"] == "refused"


def test_audited_policies_are_combined_and_cover(result):
    e = result.estimates.set_index(["policy", "estimator"])
    for p in ("clone", "parallel_universe_prompt"):
        for name in ("direct", "stacked_dr"):
            r = e.loc[(p, name)]
            assert r.level_source == "combined"
            # stacked_dr uses the weights, and two logged rows have a log-prob of exactly 0.0 (counted).
            expected = "ok" if name == "direct" else "warning"
            assert r.status == expected and (expected == "ok" or "exactly 0.0" in r.reasons)
            assert r.ci_lower <= README_TRUTH[p] <= r.ci_upper
    # The auto calibrator picks the two-stage calibrator on response length here (paired 1-SE rule).
    sel = result.calibration.selection
    assert sel.loc[sel.chosen, "calibrator"].item() == "two_stage"
