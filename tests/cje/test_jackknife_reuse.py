"""The fast paths of the estimator sweep compute exactly what the plain formulas compute.

The calibrated-IPS jackknife refits SIMCal in sorted order and reuses the full fit's out-of-fold
projections where a refit leaves their training rows intact; the context hashes and factorizes
prompt ids once. Each is checked here against the plain computation it replaces.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cje_synthetic import simulate

from arena_cje.cje import CJEDataset, EstimationConfig, fold_of
from arena_cje.cje.calibration import fit_calibration
from arena_cje.cje.context import EstimationContext
from arena_cje.cje.estimators.ips import SIMCAL_JACKKNIFE_GROUPS, simcal_jackknife_variance
from arena_cje.cje.weights import JudgeOrder, simcal_weights


def _context(n: int = 1500, seed: int = 3) -> EstimationContext:
    d = simulate(n=n, seed=seed)
    data = CJEDataset.from_frames(d.logged, d.fresh)
    cfg = EstimationConfig(estimators=("calibrated_ips",))
    return EstimationContext(data, cfg, fit_calibration(data.logged, cfg.n_folds, "isotonic"))


def _plain_jackknife(ctx: EstimationContext, policy: str) -> float:
    """Delete-a-group jackknife with every SIMCal refit done from scratch in the rows' own order."""
    pw = ctx.weights(policy)
    m = pw.mask
    r, judge, folds = ctx.rewards[m], ctx.judge[m], ctx.folds[m]
    grp = fold_of(ctx.prompt_ids[m], SIMCAL_JACKKNIFE_GROUPS)
    thetas = []
    for g in range(SIMCAL_JACKKNIFE_GROUPS):
        keep = grp != g
        wk = pw.raw[keep] / pw.raw[keep].mean()
        wj = simcal_weights(wk, judge[keep], r[keep], folds[keep], ctx.config.var_cap).weights
        thetas.append(np.sum(wj * r[keep]) / np.sum(wj))
    t = np.asarray(thetas)
    return float((t.size - 1) / t.size * np.sum((t - t.mean()) ** 2))


@pytest.mark.parametrize("policy", ["pi_hot", "pi_better"])
def test_jackknife_equals_refits_from_scratch(policy: str) -> None:
    ctx = _context()
    pw = ctx.weights(policy)
    fast = simcal_jackknife_variance(ctx, pw, ctx.rewards[pw.mask])
    plain = _plain_jackknife(ctx, policy)
    assert fast > 0
    assert fast == pytest.approx(plain, rel=1e-10, abs=1e-16)


def test_sorted_subset_matches_subset_in_original_order() -> None:
    judge = np.random.default_rng(0).choice(np.linspace(0, 1, 40), 300)  # many ties
    order = JudgeOrder(judge)
    keep = np.random.default_rng(1).random(300) < 0.7
    a, b = order.subset(keep), order.sorted_subset(keep[order.order])
    y = np.random.default_rng(2).random(300)
    np.testing.assert_array_equal(a.x_sorted, b.x_sorted)
    np.testing.assert_array_equal(a.group_sorted, b.group_sorted)
    np.testing.assert_allclose(a.monotone(y[keep][a.order], True), b.monotone(y[order.order][keep[order.order]], True), rtol=1e-13)


def test_prompt_groups_equal_factorize_and_share_the_index() -> None:
    ctx = _context(400)
    codes, index = pd.factorize(ctx.prompt_ids)
    all_codes, all_index = ctx.prompt_groups(np.ones(len(ctx.prompt_ids), dtype=bool))
    np.testing.assert_array_equal(all_codes, codes)
    assert all_index is ctx.prompt_codes[1]  # shared: per-prompt sums align without comparing ids
    rows = np.flatnonzero(np.arange(len(codes)) % 3 != 1)[::-1]  # a subset in another order
    sub_codes, sub_index = ctx.prompt_groups(rows)
    want_codes, want_uniq = pd.factorize(ctx.prompt_ids[rows])
    np.testing.assert_array_equal(sub_codes, want_codes)
    assert list(sub_index) == list(want_uniq)


def test_fresh_folds_equal_hashing_the_fresh_ids() -> None:
    ctx = _context(400)
    f = ctx.fresh("pi_hot")
    np.testing.assert_array_equal(f.folds, fold_of(f.prompt_ids, ctx.K))
    np.testing.assert_array_equal(ctx.fresh_positions("pi_hot"), f.prompts.get_indexer(ctx.prompt_ids))
