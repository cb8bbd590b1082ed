"""Every fallback of the statistical core reaches its estimate row: a reason and status ``warning``.

TMLE's eps = 0 when its score has no root in the bracket; the cluster bootstrap dropping replicates
(or having too few to use); SIMCal's fixed stacking weights when its covariance is not finite.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import arena_cje.cje.context as context_module
from arena_cje.cje import CJEDataset, EstimationConfig, Gates, estimate_policies
from arena_cje.cje.weights import SIMCAL_FALLBACK_STACK, simcal_weights


def _world(n: int, label_rows: range, fresh_prompts: range | None = None, seed: int = 0,
           labels: dict[int, float] | None = None) -> CJEDataset:
    """Logged rows with judge scores on a 0.25 grid, one target ``t`` with log-probs and two fresh draws per prompt.

    Rows in ``label_rows`` get the oracle label Y = S, except those in ``labels`` (row -> label);
    every other row is unlabelled. ``fresh_prompts``: the prompts with fresh draws of ``t`` (default all).
    """
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 5, n) / 4
    s[:2] = [0.0, 1.0]  # the labelled range covers every score, so no REFUSE-LEVEL
    lp0 = rng.uniform(-5, -2, n)
    lpt = np.minimum(lp0 + rng.normal(0, 0.3, n), 0.0)
    pids = np.array([f"q{i}" for i in range(n)], dtype=object)
    y = np.full(n, np.nan)
    y[list(label_rows)] = s[list(label_rows)]
    for i, v in (labels or {}).items():
        y[i] = v
    logged = pd.DataFrame({"prompt_id": pids, "judge_score": s, "oracle_label": y, "base_policy_logprob": lp0,
                           "target_policy_logprobs": [{"t": v} for v in lpt], "response_length": 10.0})
    keep = np.arange(n) if fresh_prompts is None else np.asarray(fresh_prompts)
    fs = rng.integers(0, 5, (keep.size, 2)) / 4
    fresh = pd.DataFrame({"prompt_id": np.repeat(pids[keep], 2), "judge_score": fs.ravel(),
                          "draw_idx": np.tile([0, 1], keep.size), "response_length": 10.0})
    return CJEDataset.from_frames(logged, {"t": fresh})


def _row(res, policy: str, name: str) -> pd.Series:
    return res.estimates.set_index(["policy", "estimator"]).loc[(policy, name)]


TMLE_REASON = "TMLE fluctuation: no root of the weighted score"


@pytest.mark.parametrize("edge_labels", [True, False])
def test_tmle_without_a_root_sets_eps_zero_and_says_so(edge_labels):
    # Prompts 0-99: labels Y = S (the calibration's range is [0, 1]). Fresh draws of t exist only for
    # prompts 100-199, so the DR rows are those; 40 of them are labelled. With every such label at
    # the bottom of the label range the fluctuation's score sum W (Y~ - expit(.)) < 0 for every eps:
    # no root, eps = 0. With Y = S there is one (control).
    edge = {i: 0.0 for i in range(100, 140)} if edge_labels else None
    data = _world(200, range(140), range(100, 200), labels=edge)
    res = estimate_policies(data, EstimationConfig(estimators=("dr_cpo", "tmle"), gates=Gates(min_labels=4)))
    row = _row(res, "t", "tmle")
    assert (TMLE_REASON in row.reasons) is edge_labels
    if edge_labels:
        assert row.status == "warning" and np.isfinite(row.estimate)
        assert res.outputs[("t", "tmle")].extras["epsilon"] == 0.0
        assert "in 5 of 5 OUA replicates" in row.reasons  # every replicate has the same edge labels
        assert TMLE_REASON not in _row(res, "t", "dr_cpo").reasons
    else:
        assert res.outputs[("t", "tmle")].extras["epsilon"] != 0.0


def test_bootstrap_counts_the_replicates_it_drops():
    # 6 labels on 80 prompts: the full sample calibrates (>= 4 labels, 2 folds), but resamples that
    # draw fewer than 4 labelled prompts (or leave a fold without 2 training labels) cannot.
    data = _world(80, range(6))
    cfg = EstimationConfig(estimators=("direct",), n_folds=2, seed=3, gates=Gates(min_labels=4), transport_rule="refuse")
    assert _row(estimate_policies(data, cfg), "t", "direct").status == "ok"
    res = estimate_policies(data, replace(cfg, n_bootstrap=30))
    row = _row(res, "t", "direct")
    reasons = [r for r in row.reasons.split("; ") if r.startswith("bootstrap:")]
    assert len(reasons) == 1 and row.status == "warning", row.reasons
    dropped = int(reasons[0].split()[1])
    assert reasons[0].startswith(f"bootstrap: {dropped} of 30 replicates dropped: {dropped} without a calibration "
                                 "(calibration: ")
    assert 0 < dropped < 20
    assert res.outputs[("t", "direct")].extras["bootstrap_replicates"] == 30 - dropped


def test_too_few_bootstrap_replicates_keep_the_if_interval_and_say_so():
    data = _world(80, range(40))
    base = EstimationConfig(estimators=("direct",), gates=Gates(min_labels=4), transport_rule="refuse")
    plain = _row(estimate_policies(data, base), "t", "direct")
    assert plain.status == "ok"
    res = estimate_policies(data, replace(base, n_bootstrap=5))
    row = _row(res, "t", "direct")
    assert "bootstrap: only 5 usable replicates (< 10): the influence-function/OUA interval is reported instead" in row.reasons
    assert row.status == "warning"
    assert row.std_error == plain.std_error and row.ci_lower == plain.ci_lower  # the IF/OUA interval, unchanged
    assert "bootstrap_replicates" not in res.outputs[("t", "direct")].extras


def test_simcal_with_a_non_finite_covariance_uses_fixed_stacking_weights():
    rng = np.random.default_rng(0)
    n = 300
    judge = rng.random(n)
    w = np.exp(judge + rng.normal(0, 1, n))
    w /= w.mean()
    folds = rng.integers(0, 5, n)
    fine = simcal_weights(w, judge, judge, folds, 1.0)
    assert fine.fallback == ""
    reward = judge.copy()
    reward[0] = np.nan  # no finite influence values to take a covariance of
    res = simcal_weights(w, judge, reward, folds, 1.0)
    assert tuple(res.stack_weights.values()) == SIMCAL_FALLBACK_STACK
    assert "not finite" in res.fallback and np.isfinite(res.weights).all()


def test_simcal_fallback_reaches_every_row_that_uses_simcal_weights(monkeypatch):
    # With validated data SIMCal's inputs are finite, so the fallback is forced: one reward that
    # SIMCal sees is made NaN (the weights it returns stay finite; only the stacking falls back).
    real = context_module.simcal_weights

    def nan_reward(w, judge, reward, folds, var_cap):
        reward = reward.copy()
        reward[0] = np.nan
        return real(w, judge, reward, folds, var_cap)

    data = _world(300, range(0, 300, 3), seed=1)
    cfg = EstimationConfig(estimators=("snips", "calibrated_ips", "dr_cpo", "stacked_dr"), transport_rule="refuse")
    assert (estimate_policies(data, cfg).estimates.status == "ok").all()  # without the fallback
    monkeypatch.setattr(context_module, "simcal_weights", nan_reward)
    res = estimate_policies(data, cfg)
    assert tuple(res.weights["t"].simcal_stack.values()) == SIMCAL_FALLBACK_STACK
    for name in ("calibrated_ips", "dr_cpo", "stacked_dr"):
        row = _row(res, "t", name)
        assert "SIMCal: the covariance of its candidates' influence values is not finite" in row.reasons, name
        assert row.status == "warning", (name, row.reasons)
    assert "SIMCal" not in _row(res, "t", "snips").reasons  # raw weights: SIMCal not used
