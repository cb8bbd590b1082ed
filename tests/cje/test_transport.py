"""Probe-corrected levels, the bias-aware combination (arena_cje.cje.levels, imported through its old path
arena_cje.cje.transport) and the reporting rule (arena_cje.cje.transport).

The graded audit itself: test_audit.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies
from arena_cje.cje.calibration import fit_calibration
from arena_cje.cje.inference import bias_aware_critical_value
from arena_cje.cje.levels import bias_aware_half_width
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
    # Bias-aware interval: half-width cv_alpha((1 - lam) |d_hat| / s, df) s with s^2 the variance of
    # B + lam d_hat (here the cluster variance of its contributions; no replicates), df = G - 1 without a
    # probe-term split (probe_var is attributed to the probe's m - 1 df below).
    s2 = np.var(base + lam * probe, ddof=1) / g
    assert rep.var_if == pytest.approx(s2, rel=1e-12) and rep.var_oua == 0.0
    half = bias_aware_critical_value((1 - lam) * abs(dhat) / np.sqrt(s2), rep.df, 0.05) * np.sqrt(s2)
    assert rep.ci_upper - rep.estimate == pytest.approx(half, rel=1e-9)
    assert rep.estimate - rep.ci_lower == pytest.approx(half, rel=1e-9)
    # std_error is the effective SE (interval = estimate +/- t se) and the variance parts add up to it.
    assert rep.std_error * stats.t.ppf(0.975, rep.df) == pytest.approx(half, rel=1e-9)
    assert rep.var_if + rep.var_oua + rep.var_transport == pytest.approx(rep.std_error**2, rel=1e-12)
    assert rep.var_transport > 0  # the gap d_hat is nonzero, so the interval carries a bias allowance
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


def test_pooled_shrinkage_weight_and_variance():
    from arena_cje.cje.transport import level_moments, optimal_weight, pooled_bias_sq

    rng = np.random.default_rng(5)
    g = 300
    moments = []
    for gap in (0.0, 0.02, -0.01):
        base = rng.normal(0.6, 0.2, g)
        probe = np.zeros(g)
        probe[:50] = (rng.normal(gap, 0.2, 50)) * g / 50
        moments.append(level_moments(_contrib(base), _contrib(base + probe)))
    tau2 = pooled_bias_sq(moments)
    assert tau2 == pytest.approx(max(0.0, np.mean([mo.d**2 - mo.vd for mo in moments])), abs=1e-15)
    for mo in moments:
        lam = optimal_weight(mo, tau2)
        assert 0.0 <= lam <= 1.0
        rep = combine_levels(mo.b, mo.c, 50, 0.0, 5, 0.05, bias_sq=tau2, source="shrunk", moments=mo)
        assert rep.weight == pytest.approx(lam) and rep.source == "shrunk"
        bound = (1 - lam) * np.sqrt(max(mo.d**2, tau2))
        assert rep.ci_upper - rep.estimate == pytest.approx(
            bias_aware_half_width(bound, rep.var_if + rep.var_oua, rep.df, 0.05), rel=1e-9)
        assert rep.estimate == pytest.approx(mo.b.estimate + lam * mo.d, abs=1e-12)
    # No revealed gap anywhere: tau^2 = 0 and the weight is the minimum-variance one (< 1).
    assert pooled_bias_sq([]) == 0.0


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


def test_ppi_weight_formula_and_fallbacks():
    from arena_cje.cje.transport import ppi_weight

    rng = np.random.default_rng(6)
    n = 60
    f = rng.uniform(0.2, 0.9, n)
    y = np.clip(0.1 + 0.6 * f + rng.normal(0, 0.1, n), 0, 1)
    w = np.full(n, 1 / n)
    cl = np.array([f"p{i}" for i in range(n)])
    slope = np.cov(f, y, ddof=0)[0, 1] / np.var(f)
    lam, why = ppi_weight(y, f, w, cl, n_fresh=600, n_independent=0)  # probe drawn from the fresh draws
    assert why == "tuned" and lam == pytest.approx(slope, rel=1e-10) and 0 < lam < 1
    lam_ind, _ = ppi_weight(y, f, w, cl, n_fresh=600, n_independent=n)  # an independent labelled sample
    assert lam_ind == pytest.approx(slope / (1 + n / 600), rel=1e-10)
    assert ppi_weight(y, 2 * f, w, cl, 600, 0)[0] == pytest.approx(slope / 2, rel=1e-10)
    assert ppi_weight(y, -f, w, cl, 600, 0)[0] == 0.0  # clipped at 0
    assert ppi_weight(3 * f, f, w, cl, 600, 0)[0] == 1.0  # clipped at 1
    assert ppi_weight(y[:15], f[:15], w[:15], cl[:15], 600, 0) == (1.0, "too_few_clusters")
    assert ppi_weight(y, np.full(n, 0.5), w, cl, 600, 0) == (1.0, "constant_predictions")
    rare = np.where(np.arange(n) < 3, 1.0, 0.0)
    assert ppi_weight(rare, f, w, cl, 600, 0) == (1.0, "rare_outcome")


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
