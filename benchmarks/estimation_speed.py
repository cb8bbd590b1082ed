"""Speed of the CJE estimator sweep.

1. All estimators (+ OUA, diagnostics, transport audit, differences) on ../shared/data/arena_sample
   (skipped when absent); target < 5 s wall on 2 cores.
2. The scaling curve: N logged rows x 4 target policies (synthetic, one fresh draw per prompt), all
   eight estimators with the auto calibrator, OUA, the calibrated-IPS jackknife, diagnostics and
   differences; each size in its own process so its peak RSS (``resource.getrusage``) is its own.
   Target (issue 13): 1,000,000 rows under 60 s and 4 GB on 2 cores.

Run: .venv/bin/python benchmarks/estimation_speed.py [--rows 10000 100000 1000000] [--no-arena]
Prints the load average before each size: the machine is shared, so report it with the figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from arena_cje.cje import ALL_ESTIMATORS, CJEDataset, EstimationConfig, estimate_policies

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arena_sample"


def arena() -> None:
    if not SAMPLE.is_dir():
        print(f"arena sample not found at {SAMPLE}; skipped")
        return
    t0 = time.perf_counter()
    logged = pd.read_json(SAMPLE / "logged_data.jsonl", lines=True)
    fresh = {p.name.removesuffix("_responses.jsonl"): pd.read_json(p, lines=True) for p in (SAMPLE / "fresh_draws").glob("*.jsonl")}
    probes = {p.name.removesuffix("_probe.jsonl"): pd.read_json(p, lines=True) for p in (SAMPLE / "probe_slice").glob("*.jsonl")}
    t1 = time.perf_counter()
    data = CJEDataset.from_frames(logged, fresh, probes)
    res = estimate_policies(data, EstimationConfig(estimators=ALL_ESTIMATORS, calibrator="auto"))
    t2 = time.perf_counter()
    print(f"arena sample: read JSONL {t1 - t0:.2f} s; validate + full sweep ({len(ALL_ESTIMATORS)} estimators x "
          f"{len(data.policies)} policies, OUA, diagnostics, audit, differences) {t2 - t1:.2f} s")
    cols = ["policy", "estimator", "estimate", "std_error", "ci_lower", "ci_upper", "status"]
    print(res.estimates[cols].round(4).to_string(index=False))


def synthetic_frames(n: int, policies: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    rng = np.random.default_rng(seed)
    names = [f"pi_{k}" for k in range(policies)]
    s = rng.beta(4, 2, n)
    lp0 = -rng.gamma(5, 4, n)
    lps = {p: np.minimum(lp0 + rng.normal(0, 1.0, n), 0) for p in names}
    pids = np.char.add("p", np.arange(n).astype(str)).astype(object)
    lab = rng.random(n) < 0.25
    logged = pd.DataFrame({
        "prompt_id": pids, "judge_score": s, "base_policy_logprob": lp0,
        "target_policy_logprobs": [dict(zip(names, v)) for v in zip(*(lps[p].tolist() for p in names))],
        "oracle_label": np.where(lab, np.clip(s**2 + rng.normal(0, 0.1, n), 0, 1), np.nan),
        "response_length": rng.integers(5, 400, n).astype(float),
    })
    fresh = {p: pd.DataFrame({"prompt_id": pids, "judge_score": rng.beta(4, 2, n), "draw_idx": 0,
                              "response_length": rng.integers(5, 400, n).astype(float)}) for p in names}
    return logged, fresh


def big(n: int) -> None:
    logged, fresh = synthetic_frames(n, 4)
    t0 = time.perf_counter()
    data = CJEDataset.from_frames(logged, fresh, covariates=("response_length",))  # a column here, no text to derive it from
    t1 = time.perf_counter()
    estimate_policies(data, EstimationConfig(estimators=ALL_ESTIMATORS, calibrator="auto"))
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n:,} logged rows x 4 policies: validate {t1 - t0:.1f} s, full sweep {t2 - t1:.1f} s, "
          f"total {t2 - t0:.1f} s; peak RSS {rss:.0f} MB (process, includes the input frames)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--no-arena", action="store_true", help="skip the arena-sample sweep")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size in this process
    a = ap.parse_args()
    if a.one:
        big(a.one)
        raise SystemExit(0)
    if not a.no_arena:
        arena()
    for n in a.rows:
        print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores", flush=True)
        subprocess.run([sys.executable, __file__, "--one", str(n)], check=True)
