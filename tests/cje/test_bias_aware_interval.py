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


@pytest.mark.parametrize(("t_b", "df"), [(0.5, 8.0), (1.5, 30.0), (6.0, 12.0)])
def test_monte_carlo_coverage_at_the_bias_bound(t_b, df):
    """(theta_hat - theta) / s_hat with bias t_b s and s_hat^2 ~ s^2 chi2_df / df: the interval theta_hat +/- cv s_hat
    covers theta in 95% of 200,000 draws when the bias sits at its bound, and more when it is smaller."""
    rng = np.random.default_rng(7)
    n = 200_000
    z = rng.standard_normal(n)
    s_hat = np.sqrt(rng.chisquare(df, n) / df)
    cv = bias_aware_critical_value(t_b, df, 0.05)
    at_bound = np.mean(np.abs(z + t_b) <= cv * s_hat)
    assert at_bound == pytest.approx(0.95, abs=3 * np.sqrt(0.95 * 0.05 / n))
    assert np.mean(np.abs(z + 0.5 * t_b) <= cv * s_hat) > at_bound
    assert np.mean(np.abs(z - t_b) <= cv * s_hat) == pytest.approx(at_bound, abs=0.005)  # either sign of the bias


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
