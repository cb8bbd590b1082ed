"""Fixed-seed Monte Carlo coverage (slow): 200 replications, n = 1000, 25% oracle labels.

Uses the synthetic world of ``cje_synthetic.py`` (closed-form truth); the project's simulated
backend was not committed when this was written. A larger study: ``benchmarks/coverage_study.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cje_synthetic import simulate, true_value  # noqa: E402

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies  # noqa: E402


@pytest.mark.slow
def test_direct_and_stacked_dr_cover_naive_does_not():
    truth = {p: true_value(p) for p in ("pi_hot", "pi_better")}
    cfg = EstimationConfig(estimators=("naive", "direct", "stacked_dr"))
    rows = []
    for r in range(200):
        d = simulate(n=1000, oracle_fraction=0.25, seed=10_000 + r, targets=("pi_hot", "pi_better"))
        e = estimate_policies(CJEDataset.from_frames(d.logged, d.fresh), cfg).estimates
        rows.append(e[["policy", "estimator", "ci_lower", "ci_upper"]])
    df = pd.concat(rows)
    t = df.policy.map(truth)
    df["cover"] = (df.ci_lower <= t) & (t <= df.ci_upper)
    cov = df.groupby(["estimator", "policy"]).cover.mean()
    for est in ("direct", "stacked_dr"):
        assert cov[est].between(0.92, 0.98).all(), cov
    assert (cov["naive"] < 0.5).all(), cov
