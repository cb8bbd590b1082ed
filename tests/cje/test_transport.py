"""The reporting rule for borrowed levels (arena_cje.cje.transport), end to end on the synthetic world.

The candidate levels and their combination: test_levels.py; the graded audit itself: test_audit.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies
from arena_cje.cje.calibration import fit_calibration
from arena_cje.cje.levels import bias_aware_half_width

sys.path.insert(0, str(Path(__file__).parent))
from cje_synthetic import simulate, true_value  # noqa: E402


def _run(d, rule="correct", estimators=("naive", "direct", "stacked_dr"), probes=None):
    data = CJEDataset.from_frames(d.logged, d.fresh, d.probes if probes is None else probes)
    return data, estimate_policies(data, EstimationConfig(estimators=estimators, transport_rule=rule))


def test_probe_corrected_equals_calibrated_mean_plus_probe_residual():
    d = simulate(n=800, oracle_fraction=0.25, seed=3, targets=("pi_hot", "pi_worse"), judge_bias={"pi_worse": 0.25}, probe_size=60)
    data, res = _run(d, estimators=("direct",))
    cal = fit_calibration(data.logged, 5, "isotonic", data.covariates)
    probe = data.probes["pi_worse"]
    fresh = data.fresh["pi_worse"]
    expected = cal.predict_oof(fresh).mean() + (probe["oracle_label"] - cal.predict_oof(probe)).mean()
    row = res.estimates.set_index(["policy", "estimator"]).loc[("pi_worse", "direct")]
    assert row.corrected_estimate == pytest.approx(expected, abs=1e-12)
    assert row.level_source == "probe_corrected" and row.estimate == pytest.approx(expected, abs=1e-12)
    assert row.borrowed_estimate == pytest.approx(cal.predict_oof(fresh).mean(), abs=1e-12)
    # The borrowed level is far off (the judge over-scores pi_worse); the corrected one is not.
    truth = true_value("pi_worse")
    assert row.borrowed_estimate - truth > 0.1 and row.ci_lower <= truth <= row.ci_upper


def test_reporting_rule_statuses_and_sources():
    d = simulate(n=800, oracle_fraction=0.25, seed=4, judge_bias={"pi_worse": 0.25}, probe_size=60)
    probes = {p: f for p, f in d.probes.items() if p != "pi_better"}  # pi_better has no probe
    _, res = _run(d, probes=probes)
    e = res.estimates.set_index(["policy", "estimator"])
    w = e.loc[("pi_worse", "direct")]
    assert w.status == "warning" and "transport audit failed" in w.reasons and w.probe_weight == 1.0
    assert e.loc[("pi_worse", "stacked_dr"), "level_source"] == "probe_corrected"
    h = e.loc[("pi_hot", "direct")]
    assert h.level_source == "combined" and h.status == "ok" and 0.0 <= h.probe_weight <= 1.0
    b = e.loc[("pi_better", "direct")]
    assert b.level_source == "borrowed" and b.status == "warning" and "no oracle-labelled probe" in b.reasons
    assert np.isnan(b.corrected_estimate) and b.estimate == b.borrowed_estimate
    assert e.loc[("pi_hot", "naive"), "level_source"] == "not_borrowed"
    # Legacy rule: the failing policy is refused, nothing is replaced.
    _, old = _run(d, rule="refuse", probes=probes)
    o = old.estimates.set_index(["policy", "estimator"])
    assert o.loc[("pi_worse", "direct"), "status"] == "refused"
    assert o.loc[("pi_worse", "direct"), "estimate"] == o.loc[("pi_worse", "direct"), "borrowed_estimate"]
    assert o.loc[("pi_better", "direct"), "status"] == "ok"


def test_differences_use_reported_levels():
    d = simulate(n=600, oracle_fraction=0.3, seed=5, targets=("pi_hot", "pi_worse"), judge_bias={"pi_worse": 0.25}, probe_size=60)
    _, res = _run(d, estimators=("direct",))
    lv = res.estimates.set_index("policy").estimate
    diff = res.differences.set_index(["policy", "baseline"]).loc[("pi_hot", "pi_worse")]
    assert diff.estimate == pytest.approx(lv["pi_hot"] - lv["pi_worse"], abs=1e-9)
    truth = true_value("pi_hot") - true_value("pi_worse")
    assert diff.ci_lower <= truth <= diff.ci_upper


@pytest.mark.slow
def test_monte_carlo_coverage_with_transport_violated():
    """200 replications: 95% CIs of the reported levels cover 92-98% of the time, including a policy whose
    judge bias differs from the logging policy's (pi_worse: +0.25, audit fails; pi_better: +0.04, the
    audit mostly passes and the combination has to carry the small gap) when probes are supplied."""
    reps = 200
    bias = {"pi_worse": 0.25, "pi_better": 0.04}
    truth = {p: true_value(p) for p in ("pi_hot", "pi_better", "pi_worse")}
    cover: dict[tuple[str, str], list[bool]] = {}
    for s in range(reps):
        d = simulate(n=800, oracle_fraction=0.25, seed=10_000 + s, judge_bias=bias, probe_size=60)
        _, res = _run(d, estimators=("direct", "stacked_dr"))
        for r in res.estimates.itertuples():
            cover.setdefault((r.policy, r.estimator), []).append(r.ci_lower <= truth[r.policy] <= r.ci_upper)
    rates = {k: float(np.mean(v)) for k, v in cover.items()}
    for k, rate in rates.items():
        assert 0.92 <= rate <= 0.98, (k, rate, rates)


def test_graded_rule_sources_per_state():
    d = simulate(n=800, oracle_fraction=0.25, seed=4, judge_bias={"pi_worse": 0.25}, probe_size=60)
    probes = {p: f for p, f in d.probes.items() if p != "pi_better"}  # pi_better: NOT_CHECKED
    data = CJEDataset.from_frames(d.logged, d.fresh, probes)
    res = estimate_policies(data, EstimationConfig(estimators=("direct", "stacked_dr"), transport_rule="graded"))
    a, e = res.transport, res.estimates.set_index(["policy", "estimator"])
    assert a["pi_worse"].state == "FAIL" and a["pi_better"].state == "NOT_CHECKED"
    assert a["pi_hot"].state in ("PASS", "INCONCLUSIVE")
    assert e.loc[("pi_worse", "direct"), "level_source"] == "probe_corrected"
    assert "transport audit failed (FAIL" in e.loc[("pi_worse", "direct"), "reasons"]
    assert e.loc[("pi_better", "direct"), "level_source"] == "borrowed"
    assert "NOT_CHECKED" in e.loc[("pi_better", "direct"), "reasons"]
    hot = e.loc[("pi_hot", "direct")]
    assert hot.level_source == ("combined" if a["pi_hot"].state == "PASS" else "shrunk")
    assert 0.0 <= hot.probe_weight <= 1.0 and hot.status == "ok"
    # The weight's bias term never exceeds the squared gap this policy's own probe shows; the interval's is
    # at least as large.
    assert hot.transport_bias_sq <= (hot.corrected_estimate - hot.borrowed_estimate) ** 2 + 1e-15
    bound = (1 - hot.probe_weight) * abs(hot.corrected_estimate - hot.borrowed_estimate)
    assert hot.ci_upper - hot.estimate >= bias_aware_half_width(bound, hot.var_if + hot.var_oua, hot.df, 0.05) - 1e-12
    assert hot.ci_lower <= true_value("pi_hot") <= hot.ci_upper
    # The report table: one row per policy with its state.
    assert set(res.transport_table["state"]) == {"FAIL", "NOT_CHECKED", a["pi_hot"].state}


def _interval_gap(row) -> float:
    """The gap G of a reported row's bias bound (1 - lam) G, recovered from its half-width (levels.py)."""
    half, var = row.ci_upper - row.estimate, row.var_if + row.var_oua
    if half <= bias_aware_half_width(0.0, var, row.df, 0.05) * (1 + 1e-12):
        return 0.0
    bound = optimize.brentq(lambda m: bias_aware_half_width(m, var, row.df, 0.05) - half, 0.0, half)
    return bound / (1 - row.probe_weight)


def test_precision_shrinkage_keeps_the_gap_out_of_the_weight_and_in_the_interval():
    # pi_better (+0.04 judge bias) is INCONCLUSIVE with a 40-label probe at this seed; pi_worse (+0.25) FAILs.
    d = simulate(n=800, oracle_fraction=0.25, seed=1, judge_bias={"pi_worse": 0.25, "pi_better": 0.04}, probe_size=40)
    data = CJEDataset.from_frames(d.logged, d.fresh, d.probes)
    res = {sh: estimate_policies(data, EstimationConfig(estimators=("direct",), transport_rule="graded", transport_shrinkage=sh))
           for sh in ("pooled", "precision")}
    pooled, prec = (res[sh].estimates.set_index("policy") for sh in ("pooled", "precision"))
    states = {p: a.state for p, a in res["precision"].transport.items()}
    assert states["pi_worse"] == "FAIL"  # FAIL is probe-corrected whatever the shrinkage
    assert prec.loc["pi_worse", "estimate"] == pytest.approx(pooled.loc["pi_worse", "estimate"], abs=1e-15)
    shrunk = [p for p, st in states.items() if st == "INCONCLUSIVE"]
    assert shrunk, states
    for p in shrunk:
        a, b = prec.loc[p], pooled.loc[p]
        assert a.level_source == "shrunk" and a.transport_bias_sq == 0.0  # no estimated gap in the weight
        assert 0.0 <= a.probe_weight <= b.probe_weight + 1e-12 < 1.0  # lam* grows with the squared gap
        assert a.estimate == pytest.approx(a.borrowed_estimate + a.probe_weight * (a.corrected_estimate - a.borrowed_estimate))
        # The same gap enters both intervals' bias bounds, scaled by the unremoved share (1 - lam).
        assert _interval_gap(a) == pytest.approx(_interval_gap(b), rel=1e-6)
        assert _interval_gap(a) >= abs(a.corrected_estimate - a.borrowed_estimate) - 1e-9
        assert a.ci_lower <= true_value(p) <= a.ci_upper


# ---------------------------------------------------------------------------------------------
# PPI++
# ---------------------------------------------------------------------------------------------


def test_ppi_level_interpolates_probe_mean_and_probe_corrected():
    from arena_cje.cje.audit import probe_residuals
    from arena_cje.cje.transport import probe_corrected

    d = simulate(n=600, oracle_fraction=0.3, seed=8, targets=("pi_hot",), probe_size=60)
    data = CJEDataset.from_frames(d.logged, d.fresh, d.probes)
    res = estimate_policies(data, EstimationConfig(estimators=("direct",), transport_rule="ppi"))
    row = res.estimates.set_index("policy").loc["pi_hot"]
    assert row.level_source == "ppi" and row.probe_weight == 1.0 and 0.0 <= row.correction_weight <= 1.0
    from arena_cje.cje.context import EstimationContext
    from arena_cje.cje.estimators import run_estimator

    cal = fit_calibration(data.logged, 5, "isotonic", data.covariates)
    ctx = EstimationContext(data, EstimationConfig(estimators=("direct",)), cal)
    direct, probe = run_estimator(ctx, "pi_hot", "direct"), data.probes["pi_hot"]
    r, rk = probe_residuals(ctx, probe)
    y = probe["oracle_label"].to_numpy(dtype=float)
    lam = row.correction_weight
    assert row.corrected_estimate == pytest.approx(row.estimate, abs=1e-12)
    assert row.estimate == pytest.approx(lam * direct.estimate + np.mean(y - lam * (y - r)), abs=1e-12)
    assert probe_corrected(direct, probe, r, rk, weight=0.0).estimate == pytest.approx(y.mean(), abs=1e-12)
    assert probe_corrected(direct, probe, r, rk, weight=1.0).estimate == pytest.approx(direct.estimate + r.mean(), abs=1e-12)
    assert row.ci_lower <= true_value("pi_hot") <= row.ci_upper


@pytest.mark.slow
@pytest.mark.parametrize("shrinkage", ["pooled", "precision"])
def test_monte_carlo_coverage_of_the_graded_rule(shrinkage):
    """200 replications of the synthetic world with a small transport gap on pi_better (+0.04 judge bias) and
    a large one on pi_worse (+0.25): under ``graded`` (each INCONCLUSIVE shrinkage) the reported levels cover 92-98%,
    every probe weight is in [0, 1], and each state the world can produce occurs. (~80 s of CPU; 510 s wall on
    the shared 2-core box under load 8.)"""
    reps = 200
    bias = {"pi_worse": 0.25, "pi_better": 0.04}
    truth = {p: true_value(p) for p in ("pi_hot", "pi_better", "pi_worse")}
    cover: dict[tuple[str, str], list[bool]] = {}
    states: set[str] = set()
    for s in range(reps):
        d = simulate(n=800, oracle_fraction=0.25, seed=20_000 + s, judge_bias=bias, probe_size=60)
        data = CJEDataset.from_frames(d.logged, d.fresh, d.probes)
        res = estimate_policies(data, EstimationConfig(estimators=("direct",), transport_rule="graded",
                                                       transport_shrinkage=shrinkage))
        states |= {a.state for a in res.transport.values()}
        for r in res.estimates.itertuples():
            assert 0.0 <= r.probe_weight <= 1.0
            cover.setdefault((r.policy, r.estimator), []).append(r.ci_lower <= truth[r.policy] <= r.ci_upper)
    rates = {k: float(np.mean(v)) for k, v in cover.items()}
    for k, rate in rates.items():
        assert 0.92 <= rate <= 0.98, (k, rate, rates)
    assert {"FAIL", "INCONCLUSIVE"} <= states
