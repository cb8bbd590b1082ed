"""Does the planner's predicted half-width match the realised one? (issue 17, item 7; prints tables)

The study is ``tests/cje/sim_planning.py::realise_plans`` on the project's simulated world
(``tests/cje/sim_bank.py``): pilots -> variance model -> ``minimum_detectable_effect`` allocation per
budget and comparison -> ``--reps`` new replications at each planned (prompts, labels); realised
half-width = mean of the reported CI half-widths. Also a what-if with half the pilot's labels: the
first planner (``report.budget``) vs the new variance model vs realised.
``tests/cje/test_planning.py::test_planner_predicts_realised_half_widths`` is the small, asserted version.

Run: .venv/bin/python benchmarks/planner_study.py --reps 50 --pool 3000 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cje"))
from sim_planning import realise_plans  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--pilots", type=int, default=10, help="independent pilot draws")
    ap.add_argument("--partitions", type=int, default=3, help="fold partitions per pilot (pilot_results)")
    ap.add_argument("--pilot-n", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--truth-draws", type=int, default=2)
    ap.add_argument("--budgets", type=float, nargs="+", default=[50.0, 100.0, 200.0])
    ap.add_argument("--prompt-cost", type=float, default=0.01, help="API cost per prompt (all policies)")
    ap.add_argument("--label-price", type=float, default=0.10, help="price per vote")
    ap.add_argument("--votes", type=int, default=3)
    ap.add_argument("--comparisons", nargs="+", default=["pi_cot", "pi_cot-pi_concise", "pi_cot-pi_0"])
    ap.add_argument("--estimators", nargs="+", default=["direct"])
    ap.add_argument("--policies", nargs="+", default=["pi_0", "pi_cot", "pi_concise"])
    ap.add_argument("--calibrator", default="two_stage")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    t0 = time.perf_counter()
    s = realise_plans(pool=a.pool, pilots=a.pilots, partitions=a.partitions, reps=a.reps, budgets=tuple(a.budgets),
                      comparisons=tuple(a.comparisons), policies=tuple(a.policies), pilot_n=a.pilot_n,
                      prompt_cost=a.prompt_cost, label_price=a.label_price, votes=a.votes,
                      estimators=tuple(a.estimators), calibrator=a.calibrator, workers=a.workers,
                      truth_draws=a.truth_draws, what_if=True)
    print(f"study in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    pd.set_option("display.width", 220)
    print(f"pilot: {a.pilots} x {a.partitions} fold partitions x n={a.pilot_n}, 25% labels; cost: ${a.prompt_cost}/prompt, "
          f"${a.label_price} x {a.votes} votes per label; estimator {a.estimators[-1]}, calibrator {a.calibrator}; "
          f"{a.reps} replications per plan")
    print("truth:", {p: round(v, 4) for p, v in s.truth.items()})
    print("variance model:")
    print(s.model.table().round(6).to_string(index=False))
    print(s.table.round(4).to_string(index=False))
    print(f"max |realised/predicted - 1| = {np.abs(s.table.ratio - 1).max():.3f}")
    print("what-if with half the pilot's labels (the old planner plans levels only):")
    print(s.what_if.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
