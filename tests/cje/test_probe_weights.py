"""Horvitz-Thompson weighting of stratified probes (``inclusion_prob``), checked for unbiasedness by simulation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cje_synthetic import simulate  # noqa: E402

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies, fit_calibration  # noqa: E402
from arena_cje.cje.audit import probe_design, with_inclusion_probs  # noqa: E402
from arena_cje.crowd.select import horvitz_thompson_mean  # noqa: E402


def test_probe_design_closed_form():
    probe = pd.DataFrame({"inclusion_prob": [0.5, 0.5, 0.1, 0.1, 0.1]})
    d = probe_design(probe)
    assert d.n_strata == 2 and d.df == 3
    r = np.array([1.0, 3.0, 0.0, 1.0, 2.0])
    # HT with N = sum 1/pi = 2 + 2 + 30 = 34: (1/0.5 + 3/0.5 + 3/0.1) / 34
    assert d.mean(r) == pytest.approx((2 + 6 + 30) / 34)
    assert d.mean(r) == pytest.approx(horvitz_thompson_mean(r, probe["inclusion_prob"], 34))
    # Stratified variance sum_h W_h^2 s_h^2 / n_h with W = (4/34, 30/34), s^2 = (2, 1), n = (2, 3).
    assert d.variance(r) == pytest.approx((4 / 34) ** 2 * 2 / 2 + (30 / 34) ** 2 * 1 / 3)
    srs = probe_design(pd.DataFrame({"x": range(4)}))
    assert not srs.stratified and np.allclose(srs.weights, 0.25)
    with pytest.raises(ValueError, match=r"frame 'probes\[p\]', row 1, field 'inclusion_prob'"):
        probe_design(pd.DataFrame({"inclusion_prob": [0.5, np.nan]}), "probes[p]")


def _stratified_rows(judge: np.ndarray, cut: float, n_per_stratum: int, rng: np.random.Generator):
    """Equal allocation over two judge-score strata of unequal size: row indices and their inclusion probabilities."""
    rows, pis = [], []
    for top in (False, True):
        members = np.flatnonzero((judge >= cut) == top)
        rows.append(rng.choice(members, size=n_per_stratum, replace=False))
        pis.append(np.full(n_per_stratum, n_per_stratum / len(members)))
    return np.concatenate(rows), np.concatenate(pis)


def test_ht_weighted_stratified_probe_is_unbiased_and_the_unweighted_mean_is_not():
    """A fixed world, probes drawn again and again from pi_worse's fresh draws with unequal inclusion probabilities.

    (1) Estimation implements the HT mean: for 15 probes, the probe-corrected level C minus C with the
    whole population as probe equals sum_j r_j/pi_j / sum_j 1/pi_j of the population residuals
    (exactly), and the audit's SE is the design's stratified SE. (2) That estimator, over 2,000
    probes: mean error within 2 Monte Carlo SEs of 0; the unweighted mean is biased; the stratified SE
    matches the Monte Carlo SD.
    """
    n = 1000
    d = simulate(n=n, oracle_fraction=0.25, seed=11, targets=("pi_worse",), judge_bias={"pi_worse": 0.15}, probe_size=n)
    pop = d.probes["pi_worse"].reset_index(drop=True)  # a labelled response of pi_worse per prompt: the population
    fresh = {"pi_worse": pop.drop(columns="oracle_label")}
    cfg = EstimationConfig(estimators=("direct",))

    def run(probe: pd.DataFrame):
        data = with_inclusion_probs(CJEDataset.from_frames(d.logged, fresh, {"pi_worse": probe}), {"pi_worse": probe})
        res = estimate_policies(data, cfg)
        return float(res.estimates.iloc[0].corrected_estimate), res.transport["pi_worse"]

    c_pop, _ = run(pop)
    cal = fit_calibration(CJEDataset.from_frames(d.logged, fresh).logged, cfg.n_folds, cfg.calibrator, ("response_length",))
    r_pop = pop["oracle_label"].to_numpy() - cal.predict_oof(pop)
    r_full = pop["oracle_label"].to_numpy() - cal.predict_full(pop)
    judge = pop["judge_score"].to_numpy()
    cut = float(np.quantile(judge, 0.8))
    assert abs(r_pop[judge >= cut].mean() - r_pop[judge < cut].mean()) > 0.03  # residuals differ by stratum

    rng = np.random.default_rng(2024)
    for _ in range(15):
        rows, pi = _stratified_rows(judge, cut, 25, rng)
        probe = pop.iloc[rows].assign(inclusion_prob=pi)
        c, audit = run(probe)
        design = probe_design(probe)
        assert design.n_strata == 2
        assert c - c_pop == pytest.approx(np.sum(r_pop[rows] / pi) / np.sum(1 / pi) - r_pop.mean(), abs=1e-12)
        assert audit.mean_residual == pytest.approx(design.mean(r_full[rows]), abs=1e-12)
        assert audit.std_error == pytest.approx(np.sqrt(design.variance(r_full[rows])), rel=1e-9)

    ht, plain, var = [], [], []
    for _ in range(2000):
        rows, pi = _stratified_rows(judge, cut, 25, rng)
        design = probe_design(pd.DataFrame({"inclusion_prob": pi}))
        ht.append(design.mean(r_pop[rows]))
        var.append(design.variance(r_pop[rows]))
        plain.append(r_pop[rows].mean())
    err, perr = np.array(ht) - r_pop.mean(), np.array(plain) - r_pop.mean()
    mc_se = err.std(ddof=1) / np.sqrt(len(err))
    assert abs(err.mean()) <= 2 * mc_se, (err.mean(), mc_se)
    # The unweighted probe mean over-represents the small top stratum: biased by many Monte Carlo SEs.
    assert abs(perr.mean()) > 10 * perr.std(ddof=1) / np.sqrt(len(perr)), perr.mean()
    # Stratified SE vs Monte Carlo SD (no finite-population correction: slightly conservative).
    ratio = np.sqrt(np.mean(var)) / err.std(ddof=1)
    assert 0.95 < ratio < 1.15, ratio
    print(f"HT error {err.mean():+.5f} (MC se {mc_se:.5f}); unweighted {perr.mean():+.5f}; SE/SD {ratio:.3f}")


def test_stratified_probe_inclusion_probs_reach_estimation():
    """labeling writes inclusion_prob into the probe slices; the estimation node weights by it."""
    from arena_cje.pipelines.estimation.nodes import estimate_policy_values
    from arena_cje.pipelines.labeling.nodes import assemble_cje_dataset

    d = simulate(n=400, oracle_fraction=0.3, seed=5, targets=("pi_hot",), probe_size=40)
    pids = d.fresh["pi_hot"]["prompt_id"].tolist()
    n = len(pids)
    key = lambda pol, idx: pd.DataFrame({"prompt_id": pids, "policy": pol, "draw_idx": idx})  # noqa: E731
    responses = pd.concat([key("pi_0", 0).assign(response="r", logprob=-1.0, n_tokens=5, error=None),
                           key("pi_hot", 0).assign(response="r", logprob=-1.0, n_tokens=5, error=None)])
    judge = pd.concat([key("pi_0", 0).assign(judge_score=d.logged["judge_score"].to_numpy()),
                       key("pi_hot", 0).assign(judge_score=d.fresh["pi_hot"]["judge_score"].to_numpy())])
    rng = np.random.default_rng(0)
    probe_rows = rng.choice(n, 40, replace=False)
    pi = np.where(np.arange(40) < 20, 0.2, 0.05)
    labels = pd.concat([
        key("pi_0", 0).assign(oracle_label=d.logged["oracle_label"].to_numpy(), purpose="calibration", inclusion_prob=0.3),
        key("pi_hot", 0).iloc[probe_rows].assign(oracle_label=rng.uniform(0, 1, 40), purpose="probe", inclusion_prob=pi),
    ]).dropna(subset=["oracle_label"])
    logged, fresh, probes = assemble_cje_dataset(
        pd.DataFrame({"prompt_id": pids, "prompt": "p", "split": "x"}), responses,
        pd.concat([key("pi_0", 0), key("pi_hot", 0)]).assign(logprob=-1.0)[["prompt_id", "policy", "logprob"]],
        judge, labels, "pi_0")
    assert np.allclose(np.sort(probes["pi_hot"]["inclusion_prob"]), np.sort(pi))
    res = estimate_policy_values(logged, fresh, probes, {"estimators": ["direct"]})
    data = with_inclusion_probs(CJEDataset.from_frames(logged, fresh, probes), probes)
    probe = data.probes["pi_hot"]
    r = probe["oracle_label"].to_numpy() - fit_calibration(data.logged, 5, "isotonic", data.covariates).predict_full(probe)
    w = 1 / probe["inclusion_prob"].to_numpy()
    audit = res.transport["pi_hot"]
    assert audit.n_probe == 40 and audit.mean_residual == pytest.approx(np.sum(w * r) / np.sum(w), abs=1e-12)
    assert abs(audit.mean_residual - r.mean()) > 1e-4  # the weights changed the mean
