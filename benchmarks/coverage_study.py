"""Monte Carlo coverage study of the CJE estimators on the project's simulated world (prints tables).

World and bank: ``tests/cje/sim_bank.py`` (``SimulatedBackend``, the policies of parameters.yml,
``pi_0`` logging and its own target). A bank of P pool prompts x D responses per policy is generated
once; each replication draws n prompts with replacement from the pool, one logged and one fresh
response per prompt and policy, and oracle labels (exact true quality Y) on round(fraction * n)
logged rows. Truth = V(pi) over the pool by ``true_value_detail``.

Per (oracle fraction, estimator, policy): share of 95% CIs covering the pool truth, bias, RMSE, mean
SE vs Monte Carlo SD of the estimates, share of rows refused, median t df. With ``--workers 2`` the
replications run in two forked processes.

Run: .venv/bin/python benchmarks/coverage_study.py --reps 200 --pool 6000 --calibrator two_stage
     .venv/bin/python benchmarks/coverage_study.py --world synthetic --reps 200 --estimators calibrated_ips snips
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cje"))
from cje_synthetic import simulate, true_value  # noqa: E402
from sim_bank import build_bank, draw  # noqa: E402

from arena_cje.cje import ALL_ESTIMATORS, CJEDataset, EstimationConfig, estimate_policies  # noqa: E402

_BANK = None
_ARGS = None
SYNTHETIC_TARGETS = ("pi_hot", "pi_better", "pi_worse")
COVARIATES = ("response_length",)  # a column of both worlds (no response text to derive it from)


def _one(job: tuple[float, int]) -> pd.DataFrame:
    frac, r = job
    if _ARGS.world == "synthetic":
        d = simulate(n=_ARGS.n, oracle_fraction=frac, seed=50_000 + r, targets=SYNTHETIC_TARGETS)
        lg, fr = d.logged, d.fresh
    else:
        lg, fr = draw(_BANK, _ARGS.n, frac, seed=100_000 + r, label=_ARGS.label)
    cfg = EstimationConfig(estimators=tuple(_ARGS.estimators), calibrator=_ARGS.calibrator)
    res = estimate_policies(CJEDataset.from_frames(lg, fr, covariates=COVARIATES), cfg)
    e = res.estimates.copy()
    e["oracle_fraction"] = frac
    e["rep"] = r
    e["calibrator_chosen"] = res.calibration.calibrator if res.calibration is not None else None
    e["ttc"] = e.policy.map({p: w.ttc for p, w in res.weights.items()})
    return e


def main() -> None:
    global _BANK, _ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=12000)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--truth-draws", type=int, default=8)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25])
    ap.add_argument("--estimators", nargs="+", default=list(ALL_ESTIMATORS))
    ap.add_argument("--policies", nargs="+", default=["pi_0", "pi_hot", "pi_cot", "pi_concise"])
    ap.add_argument("--calibrator", default="auto")
    ap.add_argument("--label", default="exact", choices=["exact", "votes"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="optional CSV of every replication's rows")
    ap.add_argument("--world", default="simulated", choices=["simulated", "synthetic"],
                    help="synthetic: the closed-form DGP of tests/cje/cje_synthetic.py (good overlap, judge a sufficient surrogate)")
    _ARGS = a = ap.parse_args()
    if a.world == "synthetic":
        truth = {p: true_value(p) for p in SYNTHETIC_TARGETS}
    else:
        _BANK = bank = build_bank(a.pool, a.draws, tuple(a.policies), truth_draws=a.truth_draws, votes=a.label == "votes")
        print(f"bank: {a.pool} prompts x {a.draws} draws x {len(a.policies)} policies in {bank.build_seconds:.0f} s", file=sys.stderr)
        truth = {p: v for p, (v, _) in bank.truth.items()}
    jobs = [(f, r) for f in a.fractions for r in range(a.reps)]
    t0 = time.perf_counter()
    if a.workers > 1:
        with mp.get_context("fork").Pool(a.workers) as pool:
            parts = pool.map(_one, jobs, chunksize=8)
    else:
        parts = [_one(j) for j in jobs]
    print(f"{len(jobs)} replications in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    df = pd.concat(parts, ignore_index=True)
    if a.out:
        df.to_csv(a.out, index=False)
    df["truth"] = df.policy.map(truth)
    df["err"] = df.estimate - df.truth
    df["cover"] = (df.ci_lower <= df.truth) & (df.truth <= df.ci_upper)
    df["refused"] = df.status == "refused"
    tab = df.groupby(["oracle_fraction", "estimator", "policy"]).agg(
        coverage=("cover", "mean"), bias=("err", "mean"), rmse=("err", lambda x: float(np.sqrt(np.mean(x**2)))),
        mean_se=("std_error", "mean"), mc_sd=("estimate", "std"), refused=("refused", "mean"), median_df=("df", "median"))
    pd.set_option("display.width", 200)
    if a.world == "synthetic":
        print(f"synthetic world, n={a.n}, reps={a.reps}, truth (quadrature):", {p: round(v, 4) for p, v in truth.items()})
    else:
        print(f"n={a.n}, reps={a.reps}, pool={a.pool} prompts x {a.draws} draws, oracle label={a.label}, calibrator={a.calibrator}")
        print("truth (pool, true_value_detail):", {p: f"{v:.4f} (MC se {s:.4f})" for p, (v, s) in bank.truth.items()})
        print("bank means of Y:", {p: round(bank.bank_mean(p), 4) for p in a.policies})
    print("calibrator chosen:", df.drop_duplicates(["oracle_fraction", "rep"]).calibrator_chosen.value_counts().to_dict())
    print("median TTC:", df.groupby("policy").ttc.median().round(3).to_dict())
    print(tab.round(4).to_string())


if __name__ == "__main__":
    main()
