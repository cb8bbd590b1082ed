"""Monte Carlo coverage study of the CJE estimators (prints a coverage table).

World: the synthetic DGP of tests/cje/cje_synthetic.py (closed-form truth; the judge is a sufficient
surrogate, so calibration transports). For each oracle fraction and replication a fresh dataset of
n prompts is drawn; the table reports, per estimator and policy, the share of 95% CIs covering the
truth, bias, RMSE, mean SE vs the Monte Carlo SD of the estimates, and median t df.

Run: .venv/bin/python benchmarks/coverage_study.py --reps 500 --n 1000 --fractions 0.1 0.25 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cje"))
from cje_synthetic import simulate, true_value  # noqa: E402

from arena_cje.cje import ALL_ESTIMATORS, CJEDataset, EstimationConfig, estimate_policies  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    ap.add_argument("--estimators", nargs="+", default=list(ALL_ESTIMATORS))
    a = ap.parse_args()
    targets = ("pi_hot", "pi_better", "pi_worse")
    truth = {p: true_value(p) for p in targets}
    cfg = EstimationConfig(estimators=tuple(a.estimators))
    out = []
    for frac in a.fractions:
        t0 = time.perf_counter()
        for r in range(a.reps):
            d = simulate(n=a.n, oracle_fraction=frac, seed=50_000 + r, targets=targets)
            e = estimate_policies(CJEDataset.from_frames(d.logged, d.fresh), cfg).estimates
            e["oracle_fraction"] = frac
            out.append(e)
        print(f"oracle fraction {frac}: {a.reps} reps in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    df = pd.concat(out)
    df["truth"] = df.policy.map(truth)
    df["err"] = df.estimate - df.truth
    df["cover"] = (df.ci_lower <= df.truth) & (df.truth <= df.ci_upper)
    tab = df.groupby(["oracle_fraction", "estimator", "policy"]).agg(
        coverage=("cover", "mean"), bias=("err", "mean"), rmse=("err", lambda x: float(np.sqrt(np.mean(x**2)))),
        mean_se=("std_error", "mean"), mc_sd=("estimate", "std"), median_df=("df", "median"))
    pd.set_option("display.width", 200)
    print(f"n={a.n}, reps={a.reps}, truth={ {k: round(v, 4) for k, v in truth.items()} }")
    print(tab.round(4).to_string())


if __name__ == "__main__":
    main()
