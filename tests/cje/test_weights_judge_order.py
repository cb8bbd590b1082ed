"""``JudgeOrder`` (one sort, isotonic fits on subsets) reproduces sklearn's ``IsotonicRegression``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from arena_cje.cje.weights import JudgeOrder


def sklearn_monotone(x_train, y_train, x_new, increasing):
    iso = IsotonicRegression(increasing=increasing, out_of_bounds="clip", y_min=0.0).fit(x_train, y_train)
    return np.clip(iso.predict(x_new), 0.0, None)


@pytest.mark.parametrize("gridded", [False, True])
@pytest.mark.parametrize("increasing", [True, False])
def test_fits_on_subsets_match_sklearn(gridded, increasing):
    rng = np.random.default_rng(4)
    n = 3000
    judge = rng.beta(4, 2, n)
    if gridded:  # a judge on a 0.05 grid: many ties, pooled into their mean
        judge = np.round(judge * 20) / 20
    w = rng.lognormal(0.0, 1.0, n) * (0.5 + judge)
    order = JudgeOrder(judge)
    ws = w[order.order]
    in_sample = np.empty(n)
    in_sample[order.order] = order.monotone(ws, increasing)
    np.testing.assert_allclose(in_sample, sklearn_monotone(judge, w, judge, increasing), rtol=0, atol=1e-12)
    folds = rng.integers(0, 5, n)
    for k in range(5):
        te = folds == k
        got = np.empty(n)
        both = order.monotone_out_of_fold(ws, te[order.order])
        got[order.order[te[order.order]]] = both[0] if increasing else both[1]
        want = sklearn_monotone(judge[~te], w[~te], judge[te], increasing)
        np.testing.assert_allclose(got[te], want, rtol=0, atol=1e-12)
    keep = rng.random(n) < 0.9  # a jackknife subset keeps the sort of the full set
    sub = order.subset(keep)
    np.testing.assert_array_equal(sub.x_sorted, np.sort(judge[keep]))
    got = np.empty(keep.sum())
    got[sub.order] = sub.monotone(w[keep][sub.order], increasing)
    np.testing.assert_allclose(got, sklearn_monotone(judge[keep], w[keep], judge[keep], increasing), rtol=0, atol=1e-12)
