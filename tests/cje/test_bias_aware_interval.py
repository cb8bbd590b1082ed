"""The bias-aware critical value of inference.py (Armstrong & Kolesar 2020) that sets the interval of levels
carrying an unremoved transport gap (levels.py, "Interval of the reported value")."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from arena_cje.cje.inference import bias_aware_critical_value
from arena_cje.cje.levels import bias_aware_half_width


@pytest.mark.parametrize("df", [4.0, 30.0, 400.0])
def test_no_bias_gives_the_t_quantile(df):
    assert bias_aware_critical_value(0.0, df, 0.05) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-12)


def test_infinite_df_is_the_folded_normal_quantile():
    for t_b in (0.3, 1.0, 4.0):
        cv = bias_aware_critical_value(t_b, float("inf"), 0.05)
        # P(|Z + t_b| <= cv) = 0.95 for Z ~ N(0, 1), written out with the normal cdf.
        assert stats.norm.cdf(cv - t_b) - stats.norm.cdf(-cv - t_b) == pytest.approx(0.95, abs=1e-9)


def test_folded_t_quantile():
    for t_b, df in ((0.5, 8.0), (3.0, 30.0)):
        cv = bias_aware_critical_value(t_b, df, 0.05)
        assert stats.t.cdf(cv - t_b, df) - stats.t.cdf(-cv - t_b, df) == pytest.approx(0.95, abs=1e-9)


@pytest.mark.parametrize(("bias", "df"), [(0.5, 5.0), (2.0, 5.0), (1.0, 30.0), (4.0, 30.0)])
def test_monte_carlo_coverage_at_the_bias_bound(bias, df):
    """theta_hat = theta + beta + s Z with the bound M = |beta| known in the estimate's units and s_hat^2 ~
    s^2 chi2_df / df: theta_hat +/- cv(M / s_hat, df) s_hat covers theta in 95% of 4,000 draws (3 MC SEs), for
    either sign of beta; with the bias at half its bound it covers more often."""
    rng = np.random.default_rng(11)
    n = 4_000
    z = rng.standard_normal(n)
    s_hat = np.sqrt(rng.chisquare(df, n) / df)  # s = 1
    s_hat = np.round(s_hat, 3)  # a few hundred distinct values: one root-find each
    grid, inverse = np.unique(s_hat, return_inverse=True)
    half = np.array([bias_aware_critical_value(bias / sh, df, 0.05) * sh for sh in grid])[inverse]
    tol = 3 * np.sqrt(0.95 * 0.05 / n)
    for sign in (1, -1):
        assert np.mean(np.abs(sign * bias + z) <= half) == pytest.approx(0.95, abs=tol)
    assert np.mean(np.abs(0.5 * bias + z) <= half) > 0.95 + tol


def test_shorter_than_root_sum_of_squares_and_monotone():
    df = 40.0
    q = stats.t.ppf(0.975, df)
    grid = [0.1, 0.5, 1.0, 2.0, 5.0, 20.0]
    cvs = [bias_aware_critical_value(t_b, df, 0.05) for t_b in grid]
    assert all(a < b for a, b in zip(cvs, cvs[1:], strict=False))
    for t_b, cv in zip(grid, cvs, strict=True):
        assert t_b + stats.t.ppf(0.95, df) * 0.99 < cv < q * np.sqrt(1 + t_b**2)


def test_half_width_edge_cases():
    assert bias_aware_half_width(0.02, 0.0, 30.0, 0.05) == 0.02  # no sampling noise: the bias bound itself
    assert np.isnan(bias_aware_half_width(0.02, float("nan"), 30.0, 0.05))
    s = 0.01
    assert bias_aware_half_width(0.0, s**2, 30.0, 0.05) == pytest.approx(stats.t.ppf(0.975, 30.0) * s)
