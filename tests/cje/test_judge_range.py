"""REFUSE-LEVEL (judge scores outside the calibrated range) and judges on any bounded scale."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cje_synthetic import simulate  # noqa: E402

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies  # noqa: E402
from arena_cje.cje.api import out_of_range_share  # noqa: E402


def test_out_of_range_share_closed_form():
    assert out_of_range_share(np.array([0.1, 0.2, 0.5, 0.9, np.nan]), 0.2, 0.8) == pytest.approx(2 / 4)
    assert np.isnan(out_of_range_share(np.array([np.nan]), 0.0, 1.0))
    # A score equal to a bound after rescaling (0.35 * 10 / 10 != 0.35 in floating point) is inside.
    assert out_of_range_share(np.array([0.35 * 10 / 10]), 0.35, 0.6) == 0.0


def test_refuse_level_when_fresh_scores_leave_the_calibrated_range():
    d = simulate(n=1000, oracle_fraction=0.3, seed=3)
    lg = d.logged.copy()
    s = lg["judge_score"].astype(float)
    lg.loc[s > s.quantile(0.95), "oracle_label"] = np.nan  # no labels at the top of the judge scale
    res = estimate_policies(CJEDataset.from_frames(lg, d.fresh),
                            EstimationConfig(estimators=("naive", "direct", "dr_cpo", "snips")))
    lab = s[lg["oracle_label"].notna()]
    lo, hi = lab.min(), lab.max()
    assert res.calibration.judge_range == (lo, hi)
    e = res.estimates.set_index(["policy", "estimator"])
    shares = {p: float(np.mean((f["judge_score"] < lo) | (f["judge_score"] > hi))) for p, f in d.fresh.items()}
    assert shares["pi_better"] >= 0.05 > shares["pi_hot"]  # the world gives one policy of each kind
    for p, share in shares.items():
        for est in ("direct", "dr_cpo"):
            refused = "REFUSE-LEVEL" in e.loc[(p, est), "reasons"]
            assert refused == (share >= 0.05), (p, est, share)
            if refused:
                assert e.loc[(p, est), "status"] == "refused"
                assert f"REFUSE-LEVEL: {share:.1%} of the fresh-draw judge scores" in e.loc[(p, est), "reasons"]
        assert "REFUSE-LEVEL" not in e.loc[(p, "naive"), "reasons"]  # naive does not use the calibration
    # IPS applies the calibration to the logged rows: 5% of them are above the cut.
    logged_share = float(np.mean((s < lo) | (s > hi)))
    assert ("REFUSE-LEVEL" in e.loc[("pi_hot", "snips"), "reasons"]) == (logged_share >= 0.05)
    # The refused policy is not ranked, so no decision is ready.
    dec = res.decisions.set_index("estimator").loc["direct"]
    assert dec.best != "pi_better" and dec.gate_failed and not dec.decision_ready

    # The threshold is a gate parameter.
    loose = estimate_policies(CJEDataset.from_frames(lg, d.fresh),
                              EstimationConfig.from_params({"estimators": ["direct"],
                                                            "gates": {"out_of_range_refuse": 0.5}}))
    assert not loose.estimates["reasons"].str.contains("REFUSE-LEVEL").any()


def test_out_of_range_borrowed_level_with_a_probe_reports_the_probe_corrected_value():
    d = simulate(n=1000, oracle_fraction=0.3, seed=3, probe_size=60)
    lg = d.logged.copy()
    s = lg["judge_score"].astype(float)
    lg.loc[s > s.quantile(0.95), "oracle_label"] = np.nan
    res = estimate_policies(CJEDataset.from_frames(lg, d.fresh, d.probes), EstimationConfig(estimators=("direct",)))
    row = res.estimates.set_index(["policy", "estimator"]).loc[("pi_better", "direct")]
    a = res.transport["pi_better"]
    assert not a.failed and not a.legacy_failed  # the audit alone would have combined borrowed and probe
    assert row.status == "warning" and row.level_source == "probe_corrected" and row.probe_weight == 1.0
    assert "REFUSE-LEVEL" in row.reasons and "the borrowed level is not reported" in row.reasons
    assert row.estimate == pytest.approx(row.corrected_estimate)


def test_judge_scale_validation_and_rescaling():
    from arena_cje.backends.judge_parsing import parse_judge_score
    from arena_cje.cje.scale import judge_scale, to_unit_scale

    assert judge_scale([0, 10]) == (0.0, 10.0) and judge_scale(None) == (0.0, 1.0)
    for bad in ([1, 1], [5, 1], "0-10", [0], [0, float("inf")]):
        with pytest.raises(ValueError, match="judge.scale"):
            judge_scale(bad)
    f = pd.DataFrame({"judge_score": [1.0, 3.0, None, 5.0]}, index=[10, 11, 12, 13])
    out = to_unit_scale(f, (1, 5), "fresh_draws[pi_a]")
    assert np.allclose(out["judge_score"].to_numpy(), [0.0, 0.5, np.nan, 1.0], equal_nan=True)
    with pytest.raises(ValueError, match=r"frame 'logged', row 11, field 'judge_score': value 7.0 outside judge.scale \[1, 5\]"):
        to_unit_scale(pd.DataFrame({"judge_score": [2.0, 7.0]}, index=[10, 11]), (1, 5), "logged")
    # Parsing on the judge's own scale: in-range numbers kept, out-of-range refused, fractions are shares of the scale.
    assert parse_judge_score('{"score": 7, "reason": "ok"}', (0, 10)) == (7.0, None)
    assert parse_judge_score('{"score": 7}')[0] is None  # on the default 0-1 scale 7 is out of range
    assert parse_judge_score("I give it 4/5", (1, 5)) == (1 + 0.8 * 4, None)
    assert "outside [1, 5]" in parse_judge_score('{"score": 0}', (1, 5))[1]


def test_a_zero_to_ten_judge_gives_the_same_estimates_as_the_unit_judge():
    from arena_cje.pipelines.estimation.nodes import estimate_policy_values

    d = simulate(n=600, oracle_fraction=0.3, seed=6, probe_size=40)
    ten = lambda f: f.assign(judge_score=10 * f["judge_score"].astype(float))  # noqa: E731
    params = {"estimators": ["naive", "direct", "dr_cpo"]}
    unit = estimate_policy_values(d.logged, d.fresh, d.probes, params, {"scale": [0, 1]})
    scaled = estimate_policy_values(ten(d.logged), {p: ten(f) for p, f in d.fresh.items()},
                                    {p: ten(f) for p, f in d.probes.items()}, params, {"scale": [0, 10]})
    cols = ["estimate", "std_error", "ci_lower", "ci_upper"]
    pd.testing.assert_frame_equal(unit.estimates[cols], scaled.estimates[cols], rtol=1e-9, atol=1e-12)
    assert unit.estimates["status"].tolist() == scaled.estimates["status"].tolist()
    assert unit.decisions.equals(scaled.decisions) or unit.decisions[["best", "runner_up", "decision_ready"]].equals(
        scaled.decisions[["best", "runner_up", "decision_ready"]])
    with pytest.raises(ValueError, match="outside judge.scale"):
        estimate_policy_values(ten(d.logged), d.fresh, {}, params, {"scale": [0, 5]})
