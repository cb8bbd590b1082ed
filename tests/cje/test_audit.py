"""The graded transport audit (arena_cje.cje.audit): five states, clustered SE, Holm family, the 20-cluster floor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


class _FixedCalibration:
    """Stands in for ``CrossFitCalibration`` in the audit: f(S) = the frame's ``pred`` column."""

    def predict_full(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["pred"].to_numpy(dtype=float)


def _probe(residuals, prompts=None) -> pd.DataFrame:
    r = np.asarray(residuals, dtype=float)
    prompts = [f"p{i}" for i in range(len(r))] if prompts is None else prompts
    return pd.DataFrame({"prompt_id": prompts, "pred": 0.5, "oracle_label": 0.5 + r})


def _residuals(rng, n, mean, sd):
    """n residuals with exactly this mean and sample SD (so the states do not depend on luck)."""
    z = rng.normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + sd * z


def test_each_audit_state_is_reachable():
    from arena_cje.cje.audit import grade_audits

    rng = np.random.default_rng(0)
    probes = {
        "fine": _probe(_residuals(rng, 60, 0.0, 0.05)),  # SE 0.0065: well inside +/-0.05
        "broken": _probe(_residuals(rng, 60, 0.20, 0.05)),  # well beyond
        "unclear": _probe(_residuals(rng, 60, 0.04, 0.10)),  # CI ~ [0.014, 0.066] straddles 0.05
        "tiny": _probe(_residuals(rng, 10, 0.0, 0.01)),  # would pass, but 10 prompts < 20
        "tiny_broken": _probe(_residuals(rng, 10, 0.30, 0.01)),  # beyond the margin is decisive even on 10
    }
    a = grade_audits(probes, _FixedCalibration(), margin=0.05, alpha=0.05, min_clusters=20, unprobed=["unprobed"])
    assert {p: x.state for p, x in a.items()} == {
        "fine": "PASS", "broken": "FAIL", "unclear": "INCONCLUSIVE", "tiny": "NOT_GRADED", "tiny_broken": "FAIL",
        "unprobed": "NOT_CHECKED"}
    assert a["fine"].passed and a["broken"].failed and not a["unclear"].passed and not a["unclear"].failed
    assert a["fine"].mean_residual == pytest.approx(0.0, abs=1e-12) and a["fine"].effective_clusters == pytest.approx(60)
    assert a["tiny"].effective_clusters == pytest.approx(10) and a["tiny"].p_equivalence_adj < 0.05
    assert "NOT_CHECKED" in a["unprobed"].describe()


def test_clustered_se_matches_the_cluster_robust_sandwich():
    from arena_cje.cje.audit import clustered_mean, probe_design

    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 5, size=40)
    prompts = np.repeat([f"p{g}" for g in range(40)], sizes)
    effect = np.repeat(rng.normal(0, 0.1, 40), sizes)  # shared within a prompt: rows are not independent
    r = effect + rng.normal(0, 0.05, len(prompts))
    d, se, g, eff = clustered_mean(r, prompts, probe_design(_probe(r, prompts)))
    # CR1 sandwich of the intercept-only regression r = delta + e, clustered by prompt:
    # (X'X)^-1 [G/(G-1) sum_g (X_g' e_g)^2] (X'X)^-1 with X = 1.
    e = r - r.mean()
    meat = sum(e[prompts == p].sum() ** 2 for p in np.unique(prompts))
    v = (1 / len(r)) * (40 / 39 * meat) * (1 / len(r))
    assert d == pytest.approx(r.mean(), abs=1e-14) and se == pytest.approx(np.sqrt(v), rel=1e-12) and g == 40
    # Kish effective prompts: (sum_g n_g)^2 / sum_g n_g^2 with equal row weights.
    assert eff == pytest.approx(sizes.sum() ** 2 / np.sum(sizes**2), rel=1e-12)
    # One row per prompt: the plain s / sqrt(m).
    r1 = rng.normal(0, 0.1, 30)
    _, se1, _, _ = clustered_mean(r1, np.array([f"q{i}" for i in range(30)]), probe_design(_probe(r1)))
    assert se1 == pytest.approx(r1.std(ddof=1) / np.sqrt(30), rel=1e-12)


def test_clustered_se_tracks_the_monte_carlo_sd_where_the_row_se_does_not():
    from arena_cje.cje.audit import clustered_mean, probe_design

    rng = np.random.default_rng(2)
    prompts = np.repeat([f"p{g}" for g in range(30)], 3)
    means, ses, naive = [], [], []
    for _ in range(400):
        r = np.repeat(rng.normal(0, 0.1, 30), 3) + rng.normal(0, 0.03, 90)
        d, se, _, _ = clustered_mean(r, prompts, probe_design(_probe(r, prompts)))
        means.append(d), ses.append(se), naive.append(r.std(ddof=1) / np.sqrt(90))
    sd = np.std(means, ddof=1)
    assert 0.9 < np.mean(ses) / sd < 1.1  # the clustered SE is right
    assert np.mean(naive) / sd < 0.7  # treating the 90 rows as independent is not


def test_holm_adjustment_and_the_audit_family():
    from arena_cje.cje import adjust_p_values
    from arena_cje.cje.audit import grade_audits

    assert adjust_p_values(np.array([0.01, 0.04, 0.03, 0.2, np.nan]), "holm") == pytest.approx(
        [0.04, 0.09, 0.09, 0.2, np.nan], nan_ok=True)
    rng = np.random.default_rng(3)
    # Alone the "edge" probe passes (TOST p in (alpha/3, alpha)); three such policies form a family in
    # which Holm multiplies the smallest p by 3, so none of them passes; with two clear passes in the
    # family the edge keeps its PASS (its p is the largest: Holm's factor 1).
    edge = _probe(_residuals(rng, 40, 0.02, 0.095))
    alone = grade_audits({"edge": edge}, _FixedCalibration(), 0.05, 0.05)["edge"]
    assert alone.state == "PASS" and 0.05 / 3 < alone.p_equivalence < 0.05 and alone.p_equivalence_adj == alone.p_equivalence
    fam = grade_audits({"e1": edge, "e2": edge.copy(), "e3": edge.copy()}, _FixedCalibration(), 0.05, 0.05)
    for a in fam.values():
        assert a.state == "INCONCLUSIVE" and a.p_equivalence_adj == pytest.approx(3 * alone.p_equivalence)
    mixed = grade_audits({"edge": edge, "a": _probe(_residuals(rng, 60, 0.0, 0.02)), "b": _probe(_residuals(rng, 60, 0.0, 0.02))},
                         _FixedCalibration(), 0.05, 0.05)
    assert {a.state for a in mixed.values()} == {"PASS"}


def test_twenty_cluster_floor():
    from arena_cje.cje.audit import grade_audits

    rng = np.random.default_rng(4)
    r = _residuals(rng, 40, 0.0, 0.03)
    for n_prompts, state in ((19, "NOT_GRADED"), (20, "PASS")):
        prompts = [f"p{i % n_prompts}" for i in range(40)]
        a = grade_audits({"x": _probe(r, prompts)}, _FixedCalibration(), 0.05, 0.05, min_clusters=20)["x"]
        assert a.n_clusters == n_prompts and a.state == state, (n_prompts, a)
    # 40 rows, but one prompt holds 21 of them: 20 prompts, Kish-effective only ~ 4.
    prompts = ["big"] * 21 + [f"p{i}" for i in range(19)]
    a = grade_audits({"x": _probe(r, prompts)}, _FixedCalibration(), 0.05, 0.05)["x"]
    assert a.n_clusters == 20 and a.effective_clusters < 5 and a.state == "NOT_GRADED"
