"""Candidate levels and their combination (arena_cje.cje.levels): the bias-aware combination of the borrowed
and probe-corrected levels, its interval, the pooled prior of the gaps and the PPI++ weight.

The reporting rule that chooses among them: test_transport.py; the critical value: test_bias_aware_interval.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from arena_cje.cje.inference import bias_aware_critical_value
from arena_cje.cje.levels import (
    Contributions,
    bias_aware_half_width,
    combine_levels,
    level_moments,
    optimal_weight,
    pooled_bias_sq,
    ppi_weight,
)


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


def test_pooled_shrinkage_weight_and_variance():
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


def test_ppi_weight_formula_and_fallbacks():
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


def test_old_import_path_reexports_the_levels():
    """``arena_cje.cje.transport`` kept the names that moved to ``levels`` (session 5's split)."""
    import arena_cje.cje.levels as levels
    import arena_cje.cje.transport as transport

    for name in ("Contributions", "combine_levels", "level_moments", "optimal_weight", "pooled_bias_sq", "ppi_weight"):
        assert getattr(transport, name) is getattr(levels, name)
