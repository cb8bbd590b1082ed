"""Planner vs realised half-widths on the project's simulated world (shared by the slow test and
``benchmarks/planner_study.py``).

1. Pilot: ``pilots`` draws of ``pilot_n`` prompts with a 25% oracle slice from a ``sim_bank`` bank,
   each re-estimated under ``partitions`` fold partitions (``planning.pilot_results``);
   ``fit_variance_model`` averages them.
2. Plan: ``minimum_detectable_effect`` (the half-width-minimising allocation) per budget and comparison.
3. Realise: ``reps`` new draws at the planned (prompts, labels); realised half-width = mean of the
   reported (ci_upper - ci_lower) / 2 of that comparison (level row, or the paired difference of
   ``comparisons``); also 1.96 x the Monte Carlo SD of the estimates and the coverage of the truth.
4. What-if (optional): half the pilot's labels: the first planner (``report.budget``:
   z sqrt(var_if + var_oua m0 / m), levels only, one pilot) and the new model vs realised.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sim_bank import build_bank, draw

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies
from arena_cje.cje.planning import (
    Comparison,
    CostModel,
    VarianceModel,
    fit_variance_model,
    minimum_detectable_effect,
    pilot_results,
)

_STATE: dict = {}


def draw_data(bank, n: int, labels: int, seed: int, estimators: tuple[str, ...]) -> CJEDataset:
    """One replication's data: n prompts with ``labels`` oracle labels."""
    lg, fr = draw(bank, n, labels / n, seed=seed)
    if not any(e not in ("naive", "direct") for e in estimators):
        lg = lg.drop(columns="target_policy_logprobs")
    return CJEDataset.from_frames(lg, fr, covariates=("response_length",))


def realised_row(res, comparison: Comparison, estimator: str) -> dict:
    """Estimate, interval and reported half-width of one comparison in one result."""
    if comparison.baseline is None:
        e = res.estimates
        r = e[(e.policy == comparison.policy) & (e.estimator == estimator)].iloc[0]
        lo, hi, est = r["ci_lower"], r["ci_upper"], r["estimate"]
    else:
        d = res.comparisons[res.comparisons.estimator == estimator]
        hit = d[(d.policy_a == comparison.policy) & (d.policy_b == comparison.baseline)]
        if len(hit):
            r = hit.iloc[0]
            lo, hi, est = r["ci_lower"], r["ci_upper"], r["estimate"]
        else:  # stored as baseline - policy
            r = d[(d.policy_a == comparison.baseline) & (d.policy_b == comparison.policy)].iloc[0]
            lo, hi, est = -r["ci_upper"], -r["ci_lower"], -r["estimate"]
    return {"estimate": float(est), "half_width": float(hi - lo) / 2, "lo": float(lo), "hi": float(hi)}


def _job(job: tuple) -> dict:
    key, n, m, seed = job
    s = _STATE
    cfg = EstimationConfig(estimators=s["estimators"], calibrator=s["calibrator"])
    res = estimate_policies(draw_data(s["bank"], n, m, seed, s["estimators"]), cfg)
    return {"key": key, "rows": {c: realised_row(res, Comparison.parse(c), s["estimators"][-1]) for c in s["comparisons"]}}


@dataclass
class PlannerStudy:
    """What ``realise_plans`` measured."""

    table: pd.DataFrame
    model: VarianceModel
    what_if: pd.DataFrame
    truth: dict[str, float]


def realise_plans(pool: int = 3000, pilots: int = 10, partitions: int = 3, reps: int = 50,
                  budgets: tuple[float, ...] = (50.0, 100.0, 200.0),
                  comparisons: tuple[str, ...] = ("pi_cot", "pi_cot-pi_concise", "pi_cot-pi_0"),
                  policies: tuple[str, ...] = ("pi_0", "pi_cot", "pi_concise"), pilot_n: int = 1000,
                  prompt_cost: float = 0.01, label_price: float = 0.10, votes: int = 3,
                  estimators: tuple[str, ...] = ("direct",), calibrator: str = "two_stage", workers: int = 1,
                  truth_draws: int = 2, what_if: bool = False) -> PlannerStudy:
    """Run the study (module docstring); the planned comparisons' table has one row per (comparison, budget)."""
    bank = build_bank(pool, 2, tuple(policies), truth_draws=truth_draws)
    truth = {p: v for p, (v, _) in bank.truth.items()}
    est = estimators[-1]
    _STATE.update(bank=bank, estimators=tuple(estimators), calibrator=calibrator, comparisons=tuple(comparisons))
    cfg = EstimationConfig(estimators=tuple(estimators), calibrator=calibrator)
    m0 = round(0.25 * pilot_n)
    pilot_sets = [pilot_results(draw_data(bank, pilot_n, m0, 900_000 + i, tuple(estimators)), cfg, partitions)
                  for i in range(pilots)]
    model = fit_variance_model([r for s in pilot_sets for r in s], comparisons=comparisons, estimators=[est])
    cm = CostModel(prompt_cost=prompt_cost, label_price=label_price, votes_per_label=votes)
    plans = {(c, b): minimum_detectable_effect(b, cm, model, c, est) for c in comparisons for b in budgets}
    jobs = [((c, b), p.n_prompts, p.calibration_labels, 500_000 + 1000 * i + r)
            for i, ((c, b), p) in enumerate(plans.items()) for r in range(reps)]
    if what_if:
        jobs += [(("half", 0), pilot_n, m0 // 2, 700_000 + r) for r in range(reps)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool_:
            done = pool_.map(_job, jobs, chunksize=4)
    else:
        done = [_job(j) for j in jobs]
    rows = []
    for (c, b), p in plans.items():
        got = pd.DataFrame([d["rows"][c] for d in done if d["key"] == (c, b)])
        comp = Comparison.parse(c)
        tv = truth[comp.policy] - (truth[comp.baseline] if comp.baseline else 0.0)
        rows.append({"comparison": c, "budget": b, "prompts": p.n_prompts, "labels": p.calibration_labels,
                     "cost": round(p.cost, 2), "predicted": p.half_width, "realised": got.half_width.mean(),
                     "ratio": got.half_width.mean() / p.half_width, "1.96 x MC SD": 1.96 * got.estimate.std(ddof=1),
                     "coverage": float(np.mean((got.lo <= tv) & (tv <= got.hi))), "mde (80% power)": p.mde,
                     "reps": len(got)})
    wi = pd.DataFrame()
    if what_if:
        half = [d for d in done if d["key"] == ("half", 0)]
        z = stats.norm.ppf(0.975)
        out = []
        for c in comparisons:
            comp = Comparison.parse(c)
            old, new1 = [], []
            for sets in pilot_sets:
                res = sets[0]  # the pilot as its run saw it (its own fold partition)
                if comp.baseline is None:
                    r = res.estimates[(res.estimates.policy == comp.policy) & (res.estimates.estimator == est)].iloc[0]
                    old.append(z * np.sqrt(r.var_if + r.var_oua * r.oracle_n / (m0 // 2)))
                new1.append(fit_variance_model(sets, comparisons=[c], estimators=[est]).get(comp, est).half_width(pilot_n, m0 // 2))
            realised = float(np.mean([d["rows"][c]["half_width"] for d in half]))
            out.append({"comparison": c, "labels": f"{m0} -> {m0 // 2}", "realised": realised,
                        "old planner (1 pilot)": np.mean(old) if old else np.nan,
                        "new (1 pilot x partitions)": np.mean(new1),
                        "new (all pilots)": model.get(comp, est).half_width(pilot_n, m0 // 2)})
        wi = pd.DataFrame(out)
        wi["realised / old"] = wi["realised"] / wi["old planner (1 pilot)"]
        wi["realised / new (1 pilot)"] = wi["realised"] / wi["new (1 pilot x partitions)"]
        wi["realised / new (all)"] = wi["realised"] / wi["new (all pilots)"]
    return PlannerStudy(pd.DataFrame(rows), model, wi, truth)
