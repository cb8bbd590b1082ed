"""Estimators, inference and diagnostics against closed-form cases and a synthetic world with known truth."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from cje_synthetic import simulate, true_value  # noqa: E402

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies, fit_calibration  # noqa: E402
from arena_cje.cje.inference import jackknife_variance, satterthwaite_df, t_interval  # noqa: E402
from arena_cje.cje.weights import ess_fraction, hajek_weights, hill_tail_index, simcal_weights  # noqa: E402


def _identity_world(n: int = 400, seed: int = 0) -> tuple[CJEDataset, dict]:
    """Every logged row labelled with Y = S on a 0.1 grid: every fold's isotonic fit is the identity there."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 11, n) / 10
    lp0 = rng.uniform(-5, -2, n)
    lpt = np.minimum(lp0 + rng.normal(0, 0.5, n), 0.0)
    pids = [f"q{i}" for i in range(n)]
    logged = pd.DataFrame({"prompt_id": pids, "judge_score": s, "oracle_label": s, "base_policy_logprob": lp0,
                           "target_policy_logprobs": [{"t": v} for v in lpt], "response_length": 10.0})
    fs = rng.integers(0, 11, (n, 2)) / 10
    fresh = pd.DataFrame({"prompt_id": np.repeat(pids, 2), "judge_score": fs.ravel(), "draw_idx": np.tile([0, 1], n),
                          "response_length": 10.0})
    return CJEDataset.from_frames(logged, {"t": fresh}), {"s": s, "w": np.exp(lpt - lp0), "fs": fs}


def _est(res, policy, name):
    return res.estimates.set_index(["policy", "estimator"]).loc[(policy, name)]


def test_closed_forms_under_identity_calibration():
    data, raw = _identity_world()
    cfg = EstimationConfig(estimators=("naive", "snips", "direct", "dr_cpo", "tmle", "mrdr", "stacked_dr"), var_cap=None)
    res = estimate_policies(data, cfg)
    w, s, fs = raw["w"], raw["s"], raw["fs"]
    snips = np.sum(w * s) / np.sum(w)
    assert _est(res, "t", "snips").estimate == pytest.approx(snips, abs=1e-12)
    # naive = direct = prompt-mean of fresh judge scores; cluster SE = sd(prompt means)/sqrt(G).
    pm = fs.mean(axis=1)
    for name in ("naive", "direct"):
        row = _est(res, "t", name)
        assert row.estimate == pytest.approx(pm.mean(), abs=1e-12)
        assert row.std_error == pytest.approx(pm.std(ddof=1) / np.sqrt(len(pm)), rel=1e-9)  # no OUA at 100% labels
        assert row.ci_upper - row.estimate == pytest.approx(stats.t.ppf(0.975, len(pm) - 1) * row.std_error, rel=1e-9)
    # Residuals Y - f(S) are zero, so every DR estimator reduces to the direct method.
    for name in ("dr_cpo", "tmle", "mrdr", "stacked_dr"):
        # (TMLE clips q to [1e-4, 1-1e-4] on the logit scale, hence 1e-5 rather than exact)
        assert _est(res, "t", name).estimate == pytest.approx(pm.mean(), abs=1e-5)
    assert (res.estimates.var_oua.fillna(0) == 0).all()


def test_snips_influence_function_variance_matches_delta_method():
    data, raw = _identity_world(n=300, seed=3)
    res = estimate_policies(data, EstimationConfig(estimators=("snips",)))
    w, s = raw["w"], raw["s"]
    wn = w / w.mean()
    theta = np.sum(w * s) / np.sum(w)
    se = np.sqrt(np.var(wn * (s - theta), ddof=1) / len(s))
    assert _est(res, "t", "snips").std_error == pytest.approx(se, rel=1e-9)


def test_inference_helpers_closed_form():
    assert jackknife_variance(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.75 * 5.0)
    assert jackknife_variance(None) == 0.0
    assert satterthwaite_df(1.0, 99, 1.0, 4) == pytest.approx(4.0 / (1 / 99 + 1 / 4))
    assert satterthwaite_df(1.0, 99, 0.0, 4) == 99
    psi = np.array([0.0, 1.0, 0.0, 1.0])
    iv = t_interval(0.5, psi, np.array([0.4, 0.6]), 0.05)
    assert iv.var_if == pytest.approx(np.var(psi, ddof=1) / 4) and iv.var_oua == pytest.approx(0.5 * 0.02)
    assert iv.ci_upper - 0.5 == pytest.approx(stats.t.ppf(0.975, iv.df) * np.sqrt(iv.var_if + iv.var_oua))


def test_weight_diagnostics():
    w = np.array([1.0, 1.0, 2.0, 4.0])
    assert ess_fraction(w) == pytest.approx(64 / (4 * 22))
    # log space: huge log-prob gaps do not overflow
    mask, logw, wn = hajek_weights(np.array([-10.0, -5000.0, np.nan]), np.array([-5000.0, -10.0, -1.0]))
    assert mask.tolist() == [True, True, False] and np.isfinite(wn).all() and wn.mean() == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    pareto = (1 - rng.random(20000)) ** (-1 / 1.5)  # Pareto tail index 1.5
    assert hill_tail_index(pareto) == pytest.approx(1.5, abs=0.15)


def test_simcal_mean_one_variance_cap_and_ess_gain():
    rng = np.random.default_rng(1)
    n = 2000
    s = rng.random(n)
    logw = 2.0 * s + rng.normal(0, 1.5, n)  # heavy-ish tail, increasing in S on average
    w = np.exp(logw) / np.exp(logw).mean()
    folds = rng.integers(0, 5, n)
    res = simcal_weights(w, s, s, folds, var_cap=1.0)
    assert res.weights.mean() == pytest.approx(1.0)
    assert np.var(res.weights) <= 1.0 + 1e-9
    assert ess_fraction(res.weights) > ess_fraction(w)
    assert sum(res.stack_weights.values()) == pytest.approx(1.0) and min(res.stack_weights.values()) >= 0


def test_calibration_mean_preserving_clipped_and_cross_fitted():
    d = simulate(n=800, oracle_fraction=0.5, seed=5)
    data = CJEDataset.from_frames(d.logged, d.fresh)
    cal = fit_calibration(data.logged, 5)
    lab = data.logged[data.logged.oracle_label.notna()]
    y = lab.oracle_label.to_numpy()
    assert cal.predict_full(lab).mean() == pytest.approx(y.mean(), abs=1e-9)  # PAV is mean-preserving
    grid = pd.DataFrame({"prompt_id": "z", "judge_score": [0.0, 1.0]})
    assert cal.predict_full(grid).min() >= y.min() and cal.predict_full(grid).max() <= y.max()
    # Out-of-fold: corrupting the labels of fold-0 prompts does not change fold-0 predictions.
    folds = cal.diagnostics.points.fold.to_numpy()
    corrupted = data.logged.copy()
    hit = corrupted.oracle_label.notna() & corrupted.prompt_id.isin(lab.prompt_id[folds == 0])
    corrupted.loc[hit, "oracle_label"] = 1.0 - corrupted.loc[hit, "oracle_label"]
    cal2 = fit_calibration(corrupted, 5)
    f0 = data.logged[data.logged.prompt_id.isin(lab.prompt_id[folds == 0])]
    np.testing.assert_allclose(cal.predict_oof(f0), cal2.predict_oof(f0))
    assert cal.diagnostics.oof_rmse < 0.1 and len(cal.diagnostics.reliability) > 3


def test_auto_calibrator_uses_covariate_only_when_it_helps():
    d = simulate(n=1500, oracle_fraction=0.5, seed=6)
    logged = d.logged.copy()
    data = CJEDataset.from_frames(logged, d.fresh)
    assert fit_calibration(data.logged, 5, "auto", ("response_length",)).diagnostics.calibrator == "isotonic"
    # Make the label depend strongly on length given the judge score: two-stage must win.
    ln = logged.response_length.to_numpy()
    logged["oracle_label"] = np.where(logged.oracle_label.notna(), np.clip(0.3 * logged.judge_score + 0.5 * (ln > 120), 0, 1), np.nan)
    data2 = CJEDataset.from_frames(logged, d.fresh)
    cal = fit_calibration(data2.logged, 5, "auto", ("response_length",))
    assert cal.diagnostics.calibrator == "two_stage"
    sel = cal.diagnostics.selection.set_index("calibrator").oof_mse
    assert sel["two_stage"] < sel["isotonic"]


def test_estimators_recover_synthetic_truth_and_naive_does_not():
    d = simulate(n=3000, oracle_fraction=0.25, seed=11)
    res = estimate_policies(CJEDataset.from_frames(d.logged, d.fresh),
                            EstimationConfig(estimators=("naive", "snips", "calibrated_ips", "direct", "dr_cpo", "mrdr", "tmle", "stacked_dr")))
    e = res.estimates
    e["truth"] = e.policy.map({p: true_value(p) for p in e.policy.unique()})
    z = (e.estimate - e.truth).abs() / e.std_error
    assert (z[e.estimator != "naive"] < 3.5).all(), e[["policy", "estimator", "estimate", "truth", "std_error"]]
    assert (z[e.estimator == "naive"] > 10).all()
    assert (e.loc[e.estimator == "direct", "var_oua"] > 0).all()  # 25% oracle -> OUA on
    st = res.outputs[("pi_hot", "stacked_dr")]
    betas = np.array(list(st.extras["stack_weights"].values()))
    assert betas.min() >= 0 and betas.sum() == pytest.approx(1.0)
    comp_var = [res.outputs[("pi_hot", c)].psi.var() for c in ("dr_cpo", "tmle", "mrdr")]
    assert st.psi.var() <= min(comp_var) + 1e-12


def test_paired_differences_share_prompts():
    d = simulate(n=600, oracle_fraction=0.3, seed=2)
    res = estimate_policies(CJEDataset.from_frames(d.logged, d.fresh), EstimationConfig(estimators=("direct",), baseline="pi_hot"))
    diff = res.differences.set_index("policy")
    lv = res.estimates.set_index("policy").estimate
    for p in ("pi_better", "pi_worse"):
        assert diff.loc[p, "estimate"] == pytest.approx(lv[p] - lv["pi_hot"], abs=1e-12)
        assert diff.loc[p, "n"] == 600
    truth = true_value("pi_better") - true_value("pi_hot")
    assert diff.loc["pi_better", "ci_lower"] <= truth <= diff.loc["pi_better", "ci_upper"]


def test_transport_audit_refuses_biased_policy_only():
    d = simulate(n=1000, oracle_fraction=0.25, seed=4, judge_bias={"pi_worse": 0.25}, probe_size=60)
    res = estimate_policies(CJEDataset.from_frames(d.logged, d.fresh, d.probes),
                            EstimationConfig(estimators=("naive", "direct", "stacked_dr"), transport_rule="refuse"))
    assert res.transport["pi_worse"].state == "FAIL"
    assert res.transport["pi_hot"].state != "FAIL" and res.transport["pi_better"].state != "FAIL"
    e = res.estimates.set_index(["policy", "estimator"])
    assert e.loc[("pi_worse", "direct"), "status"] == "refused" and "transport audit failed" in e.loc[("pi_worse", "direct"), "reasons"]
    assert e.loc[("pi_worse", "naive"), "status"] == "warning"
    assert e.loc[("pi_hot", "direct"), "status"] == "ok"


def test_missing_logprobs_flagged_in_rows():
    d = simulate(n=500, oracle_fraction=0.3, seed=8)
    lg = d.logged.copy()
    lg.loc[:9, "target_policy_logprobs"] = [{"pi_hot": None, "pi_better": -1.0, "pi_worse": -1.0}] * 10
    res = estimate_policies(CJEDataset.from_frames(lg, d.fresh), EstimationConfig(estimators=("snips", "dr_cpo")))
    assert res.weights["pi_hot"].n_missing_logprob == 10 and res.weights["pi_hot"].n == 490
    row = res.estimates.set_index(["policy", "estimator"]).loc[("pi_hot", "snips")]
    assert row.n == 490 and "10 logged row(s) without log-probs excluded" in row.reasons


def test_bootstrap_option_gives_comparable_se():
    d = simulate(n=400, oracle_fraction=0.5, seed=9, targets=("pi_hot",))
    data = CJEDataset.from_frames(d.logged, d.fresh)
    a = estimate_policies(data, EstimationConfig(estimators=("direct",))).estimates.iloc[0]
    b = estimate_policies(data, EstimationConfig(estimators=("direct",), n_bootstrap=60, seed=1)).estimates.iloc[0]
    assert b.estimate == a.estimate and 0.5 < b.std_error / a.std_error < 2.0


def test_arena_sample_flags_unhelpful(arena_sample):
    logged = pd.read_json(arena_sample / "logged_data.jsonl", lines=True)
    fresh = {p.name.removesuffix("_responses.jsonl"): pd.read_json(p, lines=True) for p in (arena_sample / "fresh_draws").glob("*.jsonl")}
    probes = {p.name.removesuffix("_probe.jsonl"): pd.read_json(p, lines=True) for p in (arena_sample / "probe_slice").glob("*.jsonl")}
    res = estimate_policies(CJEDataset.from_frames(logged, fresh, probes),
                            EstimationConfig(estimators=("naive", "snips", "calibrated_ips", "direct", "stacked_dr"),
                                             transport_rule="refuse"))
    assert res.transport["unhelpful"].state == "FAIL"
    assert res.transport["clone"].state != "FAIL" and res.transport["parallel_universe_prompt"].state != "FAIL"
    e = res.estimates
    assert (e.loc[(e.policy == "unhelpful") & (e.estimator != "naive"), "status"] == "refused").all()
    ok = e[(e.policy.isin(["clone", "parallel_universe_prompt"])) & e.estimator.isin(["direct", "stacked_dr"])]
    assert ok.estimate.between(0.7, 0.82).all()
    # The sample's two logged rows with a log-prob of exactly 0.0 (lines 351 and 574: the base and the
    # clone score "SolidGoldMagikarp" 0.0) are the only warning of the rows that use the weights.
    assert (ok[ok.estimator == "direct"].status == "ok").all()
    dr = ok[ok.estimator == "stacked_dr"].set_index("policy")
    assert (dr.status == "warning").all()
    assert dr.loc["parallel_universe_prompt", "reasons"].startswith("2 logged row(s) with a log-prob of exactly 0.0")
    assert dr.loc["clone", "reasons"].startswith("1 logged row(s) with a log-prob of exactly 0.0")
    assert "; " not in dr.loc["clone", "reasons"] and "; " not in dr.loc["parallel_universe_prompt", "reasons"]
    assert res.weights["parallel_universe_prompt"].n_zero_logprob == 2 and res.weights["clone"].n_zero_logprob == 1
    assert res.weights["parallel_universe_prompt"].ess_raw < 0.01 < res.weights["parallel_universe_prompt"].ess_simcal


def test_logging_policy_as_its_own_target_gives_unit_weights_and_sensible_rows():
    """The pipeline lists the logging policy in target_policy_logprobs: weights are exactly 1, rows are ok."""
    d = simulate(n=800, oracle_fraction=0.3, seed=21, targets=("pi_0", "pi_hot"), fresh_labels_for_logging=True)
    names = ("naive", "snips", "calibrated_ips", "direct", "dr_cpo", "mrdr", "tmle", "stacked_dr")
    res = estimate_policies(CJEDataset.from_frames(d.logged, d.fresh), EstimationConfig(estimators=names))
    w = res.weights["pi_0"]
    assert w.ess_raw == 1.0 and w.max_weight == 1.0 and w.ess_simcal == pytest.approx(1.0) and w.n_missing_logprob == 0
    e = res.estimates.set_index(["policy", "estimator"])
    truth = true_value("pi_0")
    for name in names[1:]:
        row = e.loc[("pi_0", name)]
        assert row.status == "ok", (name, row.reasons)
        assert abs(row.estimate - truth) < 3.5 * row.std_error, (name, row.estimate, truth)
    # Unit weights: SNIPS and calibrated IPS are both the mean cross-fitted reward of the logged rows.
    assert e.loc[("pi_0", "snips"), "estimate"] == pytest.approx(e.loc[("pi_0", "calibrated_ips"), "estimate"], abs=1e-12)


def test_target_typicality_coverage_closed_form_and_missing_data():
    from arena_cje.cje.weights import target_typicality_coverage

    fresh_u = np.linspace(0.0, 1.0, 1001)  # the target's own per-token surprisal: 90% quantile = 0.9
    logged_u = np.linspace(0.0, 2.0, 201)
    ttc, how = target_typicality_coverage(-logged_u * 10, np.full(201, 10.0), None, -fresh_u * 4, np.full(1001, 4.0))
    assert how == "fresh" and ttc == pytest.approx(np.mean(logged_u <= 0.9))
    # No token counts: NaN, not an error.
    assert np.isnan(target_typicality_coverage(-logged_u, np.full(201, np.nan))[0])
    # Target = logger: the weighted threshold is the logger's own 90% quantile, TTC ~ 0.9.
    rng = np.random.default_rng(0)
    lp = -rng.gamma(4, 5, 5000)
    ttc_same, how_same = target_typicality_coverage(lp, np.full(5000, 20.0), base_logprob=lp)
    assert how_same == "weighted" and ttc_same == pytest.approx(0.9, abs=0.01)


def test_low_target_typicality_refuses_weights_only_rows():
    d = simulate(n=600, oracle_fraction=0.3, seed=23, targets=("pi_hot",))
    lg = d.logged.copy()
    rng = np.random.default_rng(1)
    lg["n_tokens"] = 10.0
    fr = {p: f.assign(n_tokens=10.0) for p, f in d.fresh.items()}
    # The target's own responses are far more typical (lower surprisal) than any logged response.
    lp_hot = np.array([v["pi_hot"] for v in lg.target_policy_logprobs])
    fr["pi_hot"]["logprob"] = np.quantile(lp_hot, 0.999) + rng.uniform(0, 1, len(fr["pi_hot"]))
    res = estimate_policies(CJEDataset.from_frames(lg, fr), EstimationConfig(estimators=("snips", "calibrated_ips", "direct")))
    assert res.weights["pi_hot"].ttc < 0.05 and res.weights["pi_hot"].ttc_method == "fresh"
    e = res.estimates.set_index("estimator")
    assert (e.loc[["snips", "calibrated_ips"], "status"] == "refused").all()
    assert "target-typicality coverage" in e.loc["snips", "reasons"] and e.loc["direct", "status"] != "refused"
    # Without token counts the diagnostic is NaN and nothing is refused for it.
    res2 = estimate_policies(CJEDataset.from_frames(d.logged, d.fresh), EstimationConfig(estimators=("snips",)))
    assert np.isnan(res2.weights["pi_hot"].ttc) and "typicality" not in res2.estimates.reasons.iloc[0]


def test_sampling_jackknife_replaces_smaller_if_variance_with_its_df():
    psi = np.array([0.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    v_if = np.var(psi, ddof=1) / len(psi)
    bigger = t_interval(0.5, psi, None, 0.05, sampling_jackknife=(4 * v_if, 20))
    assert bigger.var_if == pytest.approx(4 * v_if) and bigger.df == 19
    assert bigger.ci_upper - 0.5 == pytest.approx(stats.t.ppf(0.975, 19) * 2 * np.sqrt(v_if))
    smaller = t_interval(0.5, psi, None, 0.05, sampling_jackknife=(v_if / 4, 20))
    assert smaller.var_if == pytest.approx(v_if) and smaller.df == len(psi) - 1


def test_calibrated_ips_se_includes_simcal_refit_variance():
    d = simulate(n=800, oracle_fraction=0.3, seed=31, targets=("pi_worse",))
    res = estimate_policies(CJEDataset.from_frames(d.logged, d.fresh), EstimationConfig(estimators=("calibrated_ips",)))
    out = res.outputs[("pi_worse", "calibrated_ips")]
    v_jk, groups = out.extras["sampling_jackknife"]
    assert groups == 20 and v_jk > 0
    row = res.estimates.iloc[0]
    assert row.var_if == pytest.approx(max(v_jk, out.psi.var(ddof=1) / out.n))


def test_calibrators_predict_nothing_for_no_rows():
    """Small runs leave cross-fitting folds empty; prediction on them must not fail."""
    from arena_cje.cje.calibration import make_calibrator

    rng = np.random.default_rng(0)
    s, x = rng.random(60), rng.integers(5, 50, size=(60, 1)).astype(float)
    y = np.clip(s + rng.normal(0, 0.1, 60), 0, 1)
    for name in ("isotonic", "two_stage"):
        model = make_calibrator(name).fit(s, x, y)
        assert model.predict(np.empty(0), np.empty((0, 1))).shape == (0,)


def test_constant_oracle_labels_refuse_every_calibrated_row():
    d = simulate(n=300, oracle_fraction=0.5, seed=5)
    logged = d.logged.copy()
    logged.loc[logged["oracle_label"].notna(), "oracle_label"] = 0.5
    res = estimate_policies(CJEDataset.from_frames(logged, d.fresh, d.probes),
                            EstimationConfig(estimators=("naive", "snips", "direct", "dr_cpo")))
    calibrated = res.estimates[res.estimates["estimator"] != "naive"]
    assert (calibrated["status"] == "refused").all()
    assert calibrated["reasons"].str.contains("oracle labels equal 0.5").all()
    assert (res.estimates.loc[res.estimates["estimator"] == "naive", "status"] == "warning").all()
