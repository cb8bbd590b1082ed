"""Probe-resampling study on the Arena sample: which transport reporting rule to adopt (issue 17, items 1, 2, 4).

Per draw (``--draws``, >= 200 for the record): a random subset of the labelled base prompts keeps
its oracle labels (logged rows and base fresh draws, ``real_data.subset_labels``); per target
policy a 50-label probe is drawn from the 500 oracle-labelled rows of ``ground_truth/`` (the same
fresh draws the estimator sees, so the probe is a subsample of them).

The label mask (how many base prompts keep a label; ``mask_size``), one of:

* ``--oracle-coverage F`` (default 0.25): round(F x the number of PROMPTS in the sample) keep a
  label, i.e. the oracle coverage F in the usual CJE sense (share of the prompts with an oracle
  label), drawn from the prompts that carry one. The issue's figures ("993 Arena prompts, 25% oracle
  mask") use this definition: on the 1,000-prompt sample, 250 labels drawn from the 480 labelled
  prompts (the sample itself has 48% coverage, so F above 0.48 is impossible and an error).
* ``--labelled-share F``: round(F x the number of LABELLED prompts) keep their label. The record of
  session 4 (``--labelled-share 0.25``) kept 120 of the 480 labels, i.e. 12% oracle coverage, half
  the issue's setting.

Both draw the subset with the same generator (seed 10,000 + draw), so ``--labelled-share 0.25``
reproduces the earlier draws. Calibrator ``auto`` with covariates response/prompt length. One fit per draw (``api.borrowed_estimates``: calibration,
graded audits, every estimator, gates), then every rule applied to that same fit
(``transport.apply_transport_rule`` with the rule swapped in), so the rules differ only in the rule:

* ``borrowed_only``: the estimator's own (borrowed) level and interval, as without probes
  (refused where REFUSE-LEVEL fires, since without a probe nothing replaces the level);
* ``today``: ``transport_rule: correct`` (combined unless |mean residual| > 0.05 and its t test rejects);
* ``graded_mse`` / ``graded_pooled``: ``transport_rule: graded`` (FAIL -> probe-corrected, PASS ->
  combined, INCONCLUSIVE / NOT_GRADED -> shrinkage with the policy's own MSE-optimal weight, or the
  empirical-Bayes weight pooled over the audited policies);
* ``graded_precision``: ``transport_shrinkage: precision`` (INCONCLUSIVE / NOT_GRADED -> the
  minimum-variance weight, the gap in the interval only);
* ``graded_pooled_tuned``: ``graded_pooled`` with the PPI++ weight inside the probe correction
  (``transport_correction_weight: tuned``);
* ``ppi``: ``transport_rule: ppi`` (the PPI++ power-tuned level whatever the audit says).

Truth = mean of the 500 ground-truth labels per target (read only to score). Per target, estimator
and rule: mean and SD of the error, RMSE, 95th percentile of |error|, max |error|, coverage of the 95% CI, share of draws
within 0.05 of the truth, refused share, mean probe weight; and the frequency of each audit state.
``--out`` writes every draw's rows, with Var(B), Var(C), Cov(B, C) and Var(C - B) (``_moments``).

Run: .venv/bin/python benchmarks/probe_study.py --draws 200 --estimators direct stacked_dr --workers 2
(add ``--labelled-share 0.25`` for the 12%-coverage setting). ``--cache DIR`` keeps each draw's rows
(draw_<d>.csv, in a subfolder keyed by the mask, the probe size, the estimators and the sources) so a
rerun only computes missing draws.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import TARGETS, _read, load, subset_labels  # noqa: E402

import arena_cje.cje as cje_pkg  # noqa: E402
from arena_cje.cje import CJEDataset, EstimationConfig  # noqa: E402
from arena_cje.cje.api import borrowed_estimates  # noqa: E402
from arena_cje.cje.audit import AUDIT_STATES  # noqa: E402
from arena_cje.cje.audit import probe_design, probe_residuals  # noqa: E402
from arena_cje.cje.estimators import run_estimator  # noqa: E402
from arena_cje.cje.transport import Contributions, apply_transport_rule, level_moments, probe_corrected  # noqa: E402

_STATE: dict = {}
#: Label-mask definitions (``mask_size``): share of all prompts, or share of the labelled prompts.
MASKS = ("coverage", "labelled")
COVARIATES = ("response_length", "prompt_length")
#: rule label -> (transport_rule, transport_shrinkage, transport_correction_weight); None = borrowed only.
RULES = {"borrowed_only": None, "today": ("correct", "mse", "one"), "graded_mse": ("graded", "mse", "one"),
         "graded_pooled": ("graded", "pooled", "one"), "graded_precision": ("graded", "precision", "one"),
         "graded_pooled_tuned": ("graded", "pooled", "tuned"),
         "ppi": ("ppi", "mse", "tuned")}


def mask_size(mask: str, fraction: float, n_prompts: int, n_labelled: int) -> int:
    """How many base prompts keep their oracle label in each draw (module docstring, "The label mask").

    Args:
        mask: ``coverage`` (``fraction`` of all ``n_prompts``: the oracle coverage) or ``labelled``
            (``fraction`` of the ``n_labelled`` prompts that carry a label in the sample).
        fraction: The share, in (0, 1].
        n_prompts: Prompts in the sample (logged rows).
        n_labelled: Prompts with an oracle label in the sample.

    Raises:
        ValueError: an unknown mask, a fraction outside (0, 1], or more labels than the sample has.
    """
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the mask fraction must be in (0, 1], got {fraction}")
    n = int(round(fraction * (n_prompts if mask == "coverage" else n_labelled)))
    if n > n_labelled:
        raise ValueError(f"oracle coverage {fraction} of {n_prompts} prompts needs {n} labels, but only {n_labelled} "
                         f"prompts carry one (maximum coverage {n_labelled / n_prompts:.3f})")
    return max(n, 1)


def _draw(d: int) -> tuple[pd.DataFrame, dict, dict]:
    """The d-th (label mask, probes) pair: frames with ``n_keep`` base labels and a probe per target."""
    s = _STATE
    rng = np.random.default_rng(10_000 + d)
    keep = set(rng.choice(s["labelled"], size=s["n_keep"], replace=False))
    lg, fr = subset_labels(s["logged"], s["fresh"], keep)
    probes = {}
    for p in TARGETS:
        g = s["gt"][p]
        probes[p] = g.iloc[rng.choice(len(g), size=s["probe_size"], replace=False)].reset_index(drop=True)
    return lg, fr, probes


def _moments(ctx, estimators: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (target, estimator): Var(B), Var(C), Cov(B, C), Var(C - B) of the borrowed and probe-corrected levels.

    Recorded beside every rule's row (``transport.level_moments``, the moments the weights use) so that
    the per-draw rows show where an error comes from (borrowed bias, probe noise, the weight).
    """
    out = {}
    for p in TARGETS:
        probe = ctx.data.probes.get(p)
        if probe is None or ctx.cal is None:
            continue
        direct = run_estimator(ctx, p, "direct")
        r, rk = probe_residuals(ctx, probe)
        c = probe_corrected(direct, probe, r, rk, probe_design(probe))
        for name in estimators:
            o = ctx.outputs.get((p, name)) or run_estimator(ctx, p, name)
            mo = level_moments(Contributions(o.estimate, o.psi, o.oua_replicates), c)
            out[(p, name)] = {"vb": mo.vb, "vc": mo.vc, "cbc": mo.cbc, "vd": mo.vd}
    return out


def _one(d: int) -> pd.DataFrame:
    s = _STATE
    path = s["cache"] / f"draw_{d}.csv" if s["cache"] is not None else None
    if path is not None and path.exists():
        return pd.read_csv(path)
    lg, fr, probes = _draw(d)
    cfg = EstimationConfig(estimators=tuple(s["estimators"]), calibrator="auto")
    pre = borrowed_estimates(CJEDataset.from_frames(lg, fr, probes, covariates=COVARIATES), cfg)
    moments = _moments(pre.ctx, s["estimators"])
    base_outputs = dict(pre.ctx.outputs)
    rows = []
    for label, rule in RULES.items():
        if rule is None:
            est = pre.estimates.assign(level_source="borrowed", probe_weight=0.0, borrowed_estimate=pre.estimates["estimate"],
                                       corrected_estimate=np.nan)
            # Without probes REFUSE-LEVEL refuses the level (with one it only forces the probe-corrected value).
            forced = [pre.statuses[(r.policy, r.estimator)].force_probe for r in est.itertuples()]
            est["status"] = np.where(forced, "refused", est["status"])
        else:
            pre.ctx.config = replace(cfg, transport_rule=rule[0], transport_shrinkage=rule[1],
                                     transport_correction_weight=rule[2])
            pre.ctx.outputs = dict(base_outputs)
            est = apply_transport_rule(pre.ctx, pre.estimates, pre.audits, copy.deepcopy(pre.statuses))
        for r in est[est.policy.isin(TARGETS)].itertuples():
            a = pre.audits.get(r.policy)
            rows.append({"draw": d, "rule": label, "policy": r.policy, "estimator": r.estimator,
                         "estimate": r.estimate, "ci_lower": r.ci_lower, "ci_upper": r.ci_upper, "status": r.status,
                         "level_source": r.level_source, "probe_weight": r.probe_weight,
                         "borrowed": r.borrowed_estimate, "corrected": r.corrected_estimate,
                         "audit": "NOT_CHECKED" if a is None else a.state,
                         "audit_legacy_fail": bool(a is not None and a.legacy_failed),
                         **moments.get((r.policy, r.estimator), {})})
    out = pd.DataFrame(rows)
    if path is not None:
        out.to_csv(path, index=False)
    return out


def summarise(df: pd.DataFrame, truth: dict[str, float]) -> pd.DataFrame:
    """Per (estimator, policy, rule): mean and SD of the error, RMSE, p95 / max |error|, coverage, within 0.05, refused, mean weight, audit states."""
    df = df.assign(truth=df.policy.map(truth))
    df["err"] = df.estimate - df.truth
    df["abs_err"] = df.err.abs()
    df["cover"] = (df.ci_lower <= df.truth) & (df.truth <= df.ci_upper)
    aggs = dict(bias=("err", "mean"), sd=("err", "std"), rmse=("abs_err", lambda e: float(np.sqrt(np.mean(e**2)))),
                p95=("abs_err", lambda e: float(np.quantile(e, 0.95))), max=("abs_err", "max"),
                coverage=("cover", "mean"), within_005=("abs_err", lambda e: float(np.mean(e <= 0.05))),
                refused=("status", lambda s: float(np.mean(s == "refused"))), weight=("probe_weight", "mean"))
    for st in AUDIT_STATES:
        aggs[st] = ("audit", lambda s, st=st: float(np.mean(s == st)))
    tab = df.groupby(["estimator", "policy", "rule"], sort=False).agg(**aggs)
    order = {r: i for i, r in enumerate(RULES)}
    return tab.sort_index(level=[0, 1], sort_remaining=False, key=lambda ix: ix.map(order) if ix.name == "rule" else ix)


def prepare(data: Path, mask: str, fraction: float, probe_size: int, estimators: list[str]) -> dict[str, float]:
    """Load the sample into the module state the draws read (no cache); returns the truth per policy."""
    logged, fresh, _, truth = load(data)
    gt = {}
    for p in TARGETS:
        g = _read(data / "ground_truth" / f"{p}_responses.jsonl")
        g = g[g["oracle_label"].notna()].copy()
        g["prompt_length"] = g["prompt"].str.split().str.len().astype(float)
        gt[p] = g.reset_index(drop=True)
    labelled = logged.loc[logged["oracle_label"].notna(), "metadata"].map(lambda m: m["prompt_id"]).to_numpy()
    n_prompts = int(logged["metadata"].map(lambda m: m["prompt_id"]).nunique())
    _STATE.update(logged=logged, fresh=fresh, gt=gt, labelled=labelled, n_prompts=n_prompts,
                  n_keep=mask_size(mask, fraction, n_prompts, len(labelled)), probe_size=probe_size,
                  estimators=list(estimators), cache=None)
    return truth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arena_sample")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--probe-size", type=int, default=50)
    ap.add_argument("--estimators", nargs="+", default=["direct", "stacked_dr"])
    ap.add_argument("--workers", type=int, default=1)
    mask = ap.add_mutually_exclusive_group()
    mask.add_argument("--oracle-coverage", type=float, default=None,
                      help="share of the sample's prompts that keep an oracle label (default 0.25: the issue's setting)")
    mask.add_argument("--labelled-share", type=float, default=None,
                      help="share of the labelled prompts that keep their label (0.25 = session 4's 120 labels)")
    ap.add_argument("--cache", type=Path, default=None, help="folder for per-draw rows (reruns reuse them)")
    ap.add_argument("--out", default=None, help="optional CSV of every draw's rows")
    a = ap.parse_args()
    mask_def, frac = ("labelled", a.labelled_share) if a.labelled_share is not None else ("coverage", a.oracle_coverage or 0.25)
    truth = prepare(a.data, mask_def, frac, a.probe_size, a.estimators)
    n_keep, n_prompts, labelled = _STATE["n_keep"], _STATE["n_prompts"], _STATE["labelled"]
    cache = None
    if a.cache is not None:
        # The key covers the settings, this script and the estimation code, so a changed rule never reuses stale rows.
        src = b"".join(f.read_bytes() for f in [Path(__file__), *sorted(Path(cje_pkg.__file__).parent.rglob("*.py"))])
        key = hashlib.sha1(f"{mask_def}|{frac}|{n_keep}|{a.probe_size}|{sorted(a.estimators)}|".encode() + src).hexdigest()[:12]
        cache = a.cache / key
        cache.mkdir(parents=True, exist_ok=True)
    _STATE["cache"] = cache
    t0 = time.perf_counter()
    if a.workers > 1:
        with mp.get_context("fork").Pool(a.workers) as pool:
            parts = pool.map(_one, range(a.draws), chunksize=4)
    else:
        parts = [_one(d) for d in range(a.draws)]
    wall = time.perf_counter() - t0
    df = pd.concat(parts, ignore_index=True)
    if a.out:
        df.to_csv(a.out, index=False)
    tab = summarise(df, truth)
    print(f"draws={a.draws}, {n_keep} base labels ({mask_def} mask {frac}: {n_keep / n_prompts:.1%} oracle coverage of "
          f"{n_prompts} prompts, {n_keep} of the {len(labelled)} labelled), {a.probe_size}-label probes, {a.workers} worker(s), "
          f"wall {wall:.0f} s; truth:", {p: round(truth[p], 4) for p in TARGETS})
    print("\n| estimator | policy | rule | mean error | SD | RMSE | p95 abs error | max | coverage | within 0.05 | refused "
          "| mean weight |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (e, p, r), x in tab.iterrows():
        print(f"| {e} | {p} | {r} | {x.bias:+.4f} | {x.sd:.4f} | {x.rmse:.4f} | {x.p95:.4f} | {x['max']:.4f} | {x.coverage:.3f} | {x.within_005:.3f} "
              f"| {x.refused:.2f} | {x.weight:.2f} |")
    states = tab.reset_index().drop_duplicates(["estimator", "policy"])
    print("\nAudit states (share of draws; the audit does not depend on the rule or the estimator):\n")
    print("| policy | " + " | ".join(AUDIT_STATES) + " | today's criterion fails |")
    print("|---|" + "---|" * (len(AUDIT_STATES) + 1))
    legacy = df.drop_duplicates(["draw", "policy"]).groupby("policy")["audit_legacy_fail"].mean()
    for x in states[states.estimator == states.estimator.iloc[0]].itertuples():
        print(f"| {x.policy} | " + " | ".join(f"{getattr(x, st):.3f}" for st in AUDIT_STATES)
              + f" | {legacy[x.policy]:.3f} |")


if __name__ == "__main__":
    main()
