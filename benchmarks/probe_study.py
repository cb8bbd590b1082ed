"""Probe-resampling study on the Arena sample: today's reporting rule vs borrowed-only (issue 17, item 2).

Per draw (``--draws``, >= 200 for the record): a random 25% of the 480 labelled base prompts keep
their oracle labels (logged rows and base fresh draws, ``real_data.subset_labels``); per target
policy a 50-label probe is drawn from the 500 oracle-labelled rows of ``ground_truth/`` (the same
fresh draws the estimator sees, so the probe is a subsample of them). Two analyses per draw, both
``transport_rule="correct"``, calibrator ``auto`` with covariates response/prompt length:

* **borrowed only**: no probes; the estimator's own (borrowed) level and interval;
* **today's rule**: with the probes; ``combined`` (bias-aware precision weighting) when the audit
  passes, ``probe_corrected`` when it fails (``transport.py``).

Truth = mean of the 500 ground-truth labels per target (read only to score). Per target, estimator
and rule: RMSE, 95th percentile of |error|, max |error|, coverage of the 95% CI, share of draws
within 0.05 of the truth, and how often the audit passes / fails.

Run: .venv/bin/python benchmarks/probe_study.py --draws 200 [--estimators direct stacked_dr] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import TARGETS, _read, load, subset_labels  # noqa: E402

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies  # noqa: E402

_STATE: dict = {}
COVARIATES = ("response_length", "prompt_length")


def _one(d: int) -> list[dict]:
    s = _STATE
    rng = np.random.default_rng(10_000 + d)
    keep = set(rng.choice(s["labelled"], size=int(round(0.25 * len(s["labelled"]))), replace=False))
    lg, fr = subset_labels(s["logged"], s["fresh"], keep)
    probes = {}
    for p in TARGETS:
        g = s["gt"][p]
        probes[p] = g.iloc[rng.choice(len(g), size=s["probe_size"], replace=False)].reset_index(drop=True)
    cfg = EstimationConfig(estimators=tuple(s["estimators"]), calibrator="auto", transport_rule="correct")
    rows = []
    for rule, prb in (("borrowed_only", {}), ("today", probes)):
        res = estimate_policies(CJEDataset.from_frames(lg, fr, prb, covariates=COVARIATES), cfg)
        for r in res.estimates[res.estimates.policy.isin(TARGETS)].itertuples():
            audit = res.transport.get(r.policy)
            rows.append({"draw": d, "rule": rule, "policy": r.policy, "estimator": r.estimator,
                         "estimate": r.estimate, "ci_lower": r.ci_lower, "ci_upper": r.ci_upper, "status": r.status,
                         "level_source": r.level_source,
                         "audit": "not_checked" if audit is None else ("pass" if audit.passed else "fail")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arena_sample")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--probe-size", type=int, default=50)
    ap.add_argument("--estimators", nargs="+", default=["direct"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=None, help="optional CSV of every draw's rows")
    a = ap.parse_args()
    logged, fresh, _, truth = load(a.data)
    gt = {}
    for p in TARGETS:
        g = _read(a.data / "ground_truth" / f"{p}_responses.jsonl")
        g = g[g["oracle_label"].notna()].copy()
        g["prompt_length"] = g["prompt"].str.split().str.len().astype(float)
        gt[p] = g.reset_index(drop=True)
    labelled = logged.loc[logged["oracle_label"].notna(), "metadata"].map(lambda m: m["prompt_id"]).to_numpy()
    _STATE.update(logged=logged, fresh=fresh, gt=gt, labelled=labelled, probe_size=a.probe_size, estimators=a.estimators)
    t0 = time.perf_counter()
    if a.workers > 1:
        with mp.get_context("fork").Pool(a.workers) as pool:
            parts = pool.map(_one, range(a.draws), chunksize=4)
    else:
        parts = [_one(d) for d in range(a.draws)]
    print(f"{a.draws} draws in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    df = pd.DataFrame([r for p in parts for r in p])
    if a.out:
        df.to_csv(a.out, index=False)
    df["truth"] = df.policy.map(truth)
    df["abs_err"] = (df.estimate - df.truth).abs()
    df["cover"] = (df.ci_lower <= df.truth) & (df.truth <= df.ci_upper)
    tab = df.groupby(["estimator", "policy", "rule"]).agg(
        rmse=("abs_err", lambda e: float(np.sqrt(np.mean(e**2)))), p95=("abs_err", lambda e: float(np.quantile(e, 0.95))),
        max=("abs_err", "max"), coverage=("cover", "mean"), within_005=("abs_err", lambda e: float(np.mean(e <= 0.05))),
        audit_pass=("audit", lambda s: float(np.mean(s == "pass"))), audit_fail=("audit", lambda s: float(np.mean(s == "fail"))),
        refused=("status", lambda s: float(np.mean(s == "refused"))))
    print(f"draws={a.draws}, 25% of the base labels, {a.probe_size}-label probes; truth:",
          {p: round(truth[p], 4) for p in TARGETS})
    print("| estimator | policy | rule | RMSE | p95 abs error | max | coverage | within 0.05 | audit pass / fail | refused |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (e, p, r), x in tab.iterrows():
        print(f"| {e} | {p} | {r} | {x.rmse:.4f} | {x.p95:.4f} | {x['max']:.4f} | {x.coverage:.3f} | {x.within_005:.3f} "
              f"| {x.audit_pass:.2f} / {x.audit_fail:.2f} | {x.refused:.2f} |")


if __name__ == "__main__":
    main()
