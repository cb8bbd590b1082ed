"""Does the planner's predicted half-width match the realised one? (issue 17, item 7; prints tables)

World and bank: ``tests/cje/sim_bank.py`` (the project's simulated world: ``pi_0`` logs and is its own
target, the targets' fresh draws are borrowed-calibration levels). Steps:

1. Pilot: ``--pilots`` replications at n0 prompts with a 25% oracle slice; ``fit_variance_model`` on
   their ``EstimationResult``s (the coefficients are averaged).
2. Plan: ``plan_evaluation`` for each budget and comparison with the cost model below.
3. Realise: ``--reps`` fresh replications at the planned (prompts, labels); the realised half-width is
   the mean of the reported CI half-widths (ci_upper - ci_lower) / 2 of that comparison (the level row
   or the paired difference); also 1.96 x the Monte Carlo SD of the estimates and the coverage.
4. What-if (the old planner, ``report.budget``): on every pilot, predict the half-width with half the
   labels by var_if + var_oua m0 / m (z quantile) and by the new model fitted to that one pilot, and
   compare with the mean realised half-width at half the labels.

``tests/cje/test_planning.py::test_planner_predicts_realised_half_widths`` is the small, asserted version.

Run: .venv/bin/python benchmarks/planner_study.py --reps 50 --pool 3000 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cje"))
from sim_bank import build_bank, draw  # noqa: E402

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies  # noqa: E402
from arena_cje.cje.planning import Comparison, CostModel, fit_variance_model, minimum_detectable_effect, pilot_results  # noqa: E402

_BANK = None
_ARGS = None


def draw_data(bank, n: int, labels: int, seed: int, estimators: tuple[str, ...]) -> CJEDataset:
    """One replication's data: n prompts with ``labels`` oracle labels."""
    lg, fr = draw(bank, n, labels / n, seed=seed)
    if not any(e not in ("naive", "direct") for e in estimators):
        lg = lg.drop(columns="target_policy_logprobs")
    return CJEDataset.from_frames(lg, fr, covariates=("response_length",))


def run_once(bank, n: int, labels: int, seed: int, estimators: tuple[str, ...], calibrator: str):
    """One replication: draw n prompts with ``labels`` oracle labels and estimate."""
    cfg = EstimationConfig(estimators=estimators, calibrator=calibrator)
    return estimate_policies(draw_data(bank, n, labels, seed, estimators), cfg)


def realised_rows(res, comparison: Comparison, estimator: str) -> dict:
    """Estimate and reported half-width of one comparison in one result."""
    if comparison.baseline is None:
        e = res.estimates
        r = e[(e.policy == comparison.policy) & (e.estimator == estimator)].iloc[0]
    else:
        d = res.comparisons
        hit = d[(d.estimator == estimator) & (d.policy_a == comparison.policy) & (d.policy_b == comparison.baseline)]
        sign = 1.0
        if not len(hit):
            hit = d[(d.estimator == estimator) & (d.policy_a == comparison.baseline) & (d.policy_b == comparison.policy)]
            sign = -1.0
        r = hit.iloc[0].copy()
        r["estimate"] = sign * r["estimate"]
        if sign < 0:
            r["ci_lower"], r["ci_upper"] = -hit.iloc[0]["ci_upper"], -hit.iloc[0]["ci_lower"]
    return {"estimate": float(r["estimate"]), "half_width": float(r["ci_upper"] - r["ci_lower"]) / 2,
            "lo": float(r["ci_lower"]), "hi": float(r["ci_upper"])}


def _job(job: tuple) -> dict:
    key, n, m, seed = job
    res = run_once(_BANK, n, m, seed, tuple(_ARGS.estimators), _ARGS.calibrator)
    out = {}
    for c in _ARGS.comparisons:
        comp = Comparison.parse(c)
        out[c] = realised_rows(res, comp, _ARGS.estimators[-1])
    return {"key": key, "seed": seed, "rows": out, "estimates": res.estimates}


def _map(jobs: list) -> list:
    if _ARGS.workers > 1:
        with mp.get_context("fork").Pool(_ARGS.workers) as pool:
            return pool.map(_job, jobs, chunksize=4)
    return [_job(j) for j in jobs]


def old_planner_half_width(row: pd.Series, m: int, alpha: float = 0.05) -> float:
    """``report.budget.predicted_half_width``: z sqrt(var_if + var_oua m0 / m)."""
    z = stats.norm.ppf(1 - alpha / 2)
    return float(z * np.sqrt(row.var_if + row.var_oua * row.oracle_n / m))


def main() -> None:
    global _BANK, _ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--pilots", type=int, default=10, help="independent pilot draws")
    ap.add_argument("--partitions", type=int, default=3, help="fold partitions per pilot (pilot_results)")
    ap.add_argument("--pilot-n", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--truth-draws", type=int, default=4)
    ap.add_argument("--budgets", type=float, nargs="+", default=[50.0, 100.0, 200.0])
    ap.add_argument("--prompt-cost", type=float, default=0.01, help="API cost per prompt (all policies)")
    ap.add_argument("--label-price", type=float, default=0.10, help="price per vote")
    ap.add_argument("--votes", type=int, default=3)
    ap.add_argument("--comparisons", nargs="+", default=["pi_cot", "pi_cot-pi_concise", "pi_cot-pi_0"])
    ap.add_argument("--estimators", nargs="+", default=["direct"])
    ap.add_argument("--policies", nargs="+", default=["pi_0", "pi_cot", "pi_concise"])
    ap.add_argument("--calibrator", default="two_stage")
    ap.add_argument("--workers", type=int, default=2)
    _ARGS = a = ap.parse_args()
    est = a.estimators[-1]
    _BANK = bank = build_bank(a.pool, 2, tuple(a.policies), truth_draws=a.truth_draws)
    truth = {p: v for p, (v, _) in bank.truth.items()}
    print(f"bank: {a.pool} prompts x 2 draws x {len(a.policies)} policies in {bank.build_seconds:.0f} s", file=sys.stderr)
    t0 = time.perf_counter()
    m0 = round(0.25 * a.pilot_n)
    cfg = EstimationConfig(estimators=tuple(a.estimators), calibrator=a.calibrator)
    pilot_sets = [pilot_results(draw_data(bank, a.pilot_n, m0, 900_000 + i, tuple(a.estimators)), cfg, a.partitions)
                  for i in range(a.pilots)]
    pilots = [r for s in pilot_sets for r in s]
    model = fit_variance_model(pilots, comparisons=a.comparisons, estimators=[est])
    cm = CostModel(prompt_cost=a.prompt_cost, label_price=a.label_price, votes_per_label=a.votes)
    plans = {(c, b): minimum_detectable_effect(b, cm, model, c, est) for c in a.comparisons for b in a.budgets}

    # Realise every plan, plus half the pilot labels for the what-if.
    jobs = [((c, b), p.n_prompts, p.calibration_labels, 500_000 + 1000 * i + r)
            for i, ((c, b), p) in enumerate(plans.items()) for r in range(a.reps)]
    jobs += [(("half", 0), a.pilot_n, m0 // 2, 700_000 + r) for r in range(a.reps)]
    done = _map(jobs)
    print(f"{a.pilots} pilots + {len(jobs)} replications in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    rows = []
    for (c, b), p in plans.items():
        got = pd.DataFrame([d["rows"][c] for d in done if d["key"] == (c, b)])
        comp = Comparison.parse(c)
        tv = truth[comp.policy] - (truth[comp.baseline] if comp.baseline else 0.0)
        rows.append({"comparison": c, "budget": b, "prompts": p.n_prompts, "labels": p.calibration_labels,
                     "cost": round(p.cost, 2), "predicted": p.half_width, "realised": got.half_width.mean(),
                     "ratio": got.half_width.mean() / p.half_width,
                     "1.96 x MC SD": 1.96 * got.estimate.std(ddof=1),
                     "coverage": float(np.mean((got.lo <= tv) & (tv <= got.hi))), "mde (80% power)": p.mde, "reps": len(got)})
    tab = pd.DataFrame(rows)
    pd.set_option("display.width", 220)
    print(f"pilot: {a.pilots} x {a.partitions} partitions x n={a.pilot_n}, m={m0}; cost: ${a.prompt_cost}/prompt, ${a.label_price} x {a.votes} votes "
          f"per label; estimator {est}, calibrator {a.calibrator}; {a.reps} replications per plan")
    print("variance model:")
    print(model.table().round(6).to_string(index=False))
    print(tab.round(4).to_string(index=False))
    print(f"max |ratio - 1| = {np.abs(tab.ratio - 1).max():.3f}")

    # What-if: half the labels, old planner (one pilot) vs new (one pilot, and all pilots) vs realised.
    half = [d for d in done if d["key"] == ("half", 0)]
    wi = []
    for c in a.comparisons:
        comp = Comparison.parse(c)
        realised = np.mean([d["rows"][c]["half_width"] for d in half])
        old, new1 = [], []
        for sets in pilot_sets:
            res = sets[0]  # one pilot as the run saw it (its own fold partition)
            if comp.baseline is None:
                r = res.estimates[(res.estimates.policy == comp.policy) & (res.estimates.estimator == est)].iloc[0]
                old.append(old_planner_half_width(r, m0 // 2))
            new1.append(fit_variance_model(sets, comparisons=[c], estimators=[est]).get(comp, est).half_width(a.pilot_n, m0 // 2))
        wi.append({"comparison": c, "labels": f"{m0} -> {m0 // 2}", "realised": realised,
                   "old planner (1 pilot)": np.mean(old) if old else np.nan,
                   "new (1 pilot, partitions)": np.mean(new1), "new (all pilots)": model.get(comp, est).half_width(a.pilot_n, m0 // 2)})
    w = pd.DataFrame(wi)
    w["realised / old"] = w["realised"] / w["old planner (1 pilot)"]
    w["realised / new(1 pilot)"] = w["realised"] / w["new (1 pilot, partitions)"]
    print("what-if with half the labels (old planner = levels only):")
    print(w.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
