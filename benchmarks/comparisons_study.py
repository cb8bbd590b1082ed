"""Monte Carlo study of the pairwise comparisons on the project's simulated world (prints tables).

World and bank: ``tests/cje/sim_bank.py`` (``SimulatedBackend``; ``pi_0`` logs and is its own
target; ``pi_warm`` (T = 0.55) is a near twin of ``pi_0``). Each replication draws n prompts with
replacement, 25% oracle labels (exact Y), runs ``estimate_policies`` and keeps ``comparisons`` and
``decisions``. Per (estimator, pair): true difference, coverage of the 95% CI, mean SE vs Monte Carlo
SD, share significant after BH / Bonferroni / raw, share 'significant in the wrong direction'; per
estimator: how often the best policy is the true best and how often the decision is ready (and
right). ``tests/cje/test_comparisons.py`` is the small, asserted version.

Run: .venv/bin/python benchmarks/comparisons_study.py --reps 400 --pool 4000 --workers 2
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
from sim_bank import build_bank, draw  # noqa: E402

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies  # noqa: E402

_BANK = None
_ARGS = None


def _one(r: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    lg, fr = draw(_BANK, _ARGS.n, _ARGS.fraction, seed=300_000 + r)
    if not _ARGS.weights:
        lg = lg.drop(columns="target_policy_logprobs")
    cfg = EstimationConfig(estimators=tuple(_ARGS.estimators), calibrator=_ARGS.calibrator)
    res = estimate_policies(CJEDataset.from_frames(lg, fr, covariates=("response_length",)), cfg)
    return res.comparisons.assign(rep=r), res.decisions.assign(rep=r)


def main() -> None:
    global _BANK, _ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=4000)
    ap.add_argument("--truth-draws", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--estimators", nargs="+", default=["direct", "stacked_dr"])
    ap.add_argument("--policies", nargs="+", default=["pi_0", "pi_warm", "pi_hot", "pi_cot", "pi_concise"])
    ap.add_argument("--calibrator", default="two_stage")
    ap.add_argument("--weights", action="store_true", help="keep target log-probs (needed for DR estimators)")
    ap.add_argument("--workers", type=int, default=2)
    _ARGS = a = ap.parse_args()
    if any(e != "direct" for e in a.estimators):
        a.weights = True
    _BANK = bank = build_bank(a.pool, 2, tuple(a.policies), truth_draws=a.truth_draws)
    truth = {p: v for p, (v, _) in bank.truth.items()}
    print(f"bank: {a.pool} prompts x 2 draws x {len(a.policies)} policies in {bank.build_seconds:.0f} s", file=sys.stderr)
    t0 = time.perf_counter()
    if a.workers > 1:
        with mp.get_context("fork").Pool(a.workers) as pool:
            parts = pool.map(_one, range(a.reps), chunksize=8)
    else:
        parts = [_one(r) for r in range(a.reps)]
    print(f"{a.reps} replications in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    t = pd.concat([p[0] for p in parts], ignore_index=True)
    dec = pd.concat([p[1] for p in parts], ignore_index=True)
    t["truth"] = t.policy_a.map(truth) - t.policy_b.map(truth)
    t["cover"] = (t.ci_lower <= t.truth) & (t.truth <= t.ci_upper)
    wrong = np.sign(t.estimate) != np.sign(t.truth)
    t["wrong_bh"] = t.significant & wrong
    t["wrong_raw"] = (t.p_value < 0.05) & wrong
    t["sig_raw"] = t.p_value < 0.05
    tab = t.groupby(["estimator", "policy_a", "policy_b"]).agg(
        truth=("truth", "first"), coverage=("cover", "mean"), mean_se=("std_error", "mean"), mc_sd=("estimate", "std"),
        sig_raw=("sig_raw", "mean"), sig_bh=("significant", "mean"), sig_bonf=("significant_bonferroni", "mean"),
        wrong_raw=("wrong_raw", "mean"), wrong_bh=("wrong_bh", "mean"))
    pd.set_option("display.width", 220)
    print(f"n={a.n}, reps={a.reps}, pool={a.pool}, oracle fraction={a.fraction}, calibrator={a.calibrator}")
    print("truth:", {p: f"{v:.4f} (MC se {s:.4f})" for p, (v, s) in bank.truth.items()})
    print(tab.round(4).to_string())
    pooled = t.groupby("estimator").agg(coverage=("cover", "mean"))
    near = t[t.truth.abs() <= 0.01].groupby("estimator").agg(near_pairs=("cover", "size"), wrong_raw=("wrong_raw", "mean"),
                                                             wrong_bh=("wrong_bh", "mean"))
    print(pooled.join(near).round(4).to_string())
    best = max(truth, key=truth.get)
    d = dec.groupby("estimator").agg(best_right=("best", lambda b: float(np.mean(b == best))),
                                     ready=("decision_ready", "mean"))
    d["ready_and_wrong"] = dec.groupby("estimator").apply(lambda g: float(np.mean(g.decision_ready & (g.best != best))))
    print(f"true best {best}:")
    print(d.round(4).to_string())


if __name__ == "__main__":
    main()
