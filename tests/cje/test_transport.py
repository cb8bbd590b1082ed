"""Probe-corrected levels, the bias-aware combination and the reporting rule (arena_cje.cje.transport)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies
from arena_cje.cje.calibration import fit_calibration
from arena_cje.cje.transport import Contributions, combine_levels

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


def _contrib(psi: np.ndarray, reps=None) -> Contributions:
    return Contributions(float(psi.mean()), pd.Series(psi, index=[f"p{i}" for i in range(len(psi))]), reps)


def test_combination_closed_form():
    rng = np.random.default_rng(0)
    g = 400
    base = rng.normal(0.5, 0.2, g)
    probe = np.zeros(g)
    probe[:40] = rng.normal(0.0, 0.2, 40) * g / 40  # probe residual term: mean ~ N(0, 0.2^2/40)
    b, c = _contrib(base), _contrib(base + probe)
    rep = combine_levels(b, c, 40, float(np.var(probe[:40] * 40 / g, ddof=1) / 40), 5, 0.05, force_corrected=False)
    # Without replicates: V_B = var(b)/G, Cov_BC, V_d as sample moments; lambda* = (b2 + V_B - Cov_BC)/(V_d + b2).
    vb = np.var(base, ddof=1) / g
    cbc = np.cov(base, base + probe)[0, 1] / g
    vd = np.var(probe, ddof=1) / g
    dhat = probe.mean()
    b2 = max(0.0, dhat**2 - vd)
    lam = np.clip((b2 + vb - cbc) / (vd + b2), 0, 1)
    assert rep.weight == pytest.approx(lam, abs=1e-9)
    assert rep.estimate == pytest.approx(base.mean() + lam * dhat, abs=1e-12)
    assert rep.var_transport == pytest.approx((1 - lam) ** 2 * b2, abs=1e-15)
    # A gap far beyond the probe's noise: b2 ~ d^2 dominates and the weight goes to the corrected value.
    far = combine_levels(b, _contrib(base + probe + 0.3), 40, 0.001, 5, 0.05, force_corrected=False)
    assert far.weight > 0.95 and far.bias_sq > 0.08
    forced = combine_levels(b, c, 40, 0.001, 5, 0.05, force_corrected=True)
    assert forced.weight == 1.0 and forced.estimate == pytest.approx(c.estimate)


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
