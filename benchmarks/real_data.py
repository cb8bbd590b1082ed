"""Real-data benchmark: our estimators vs ground truth vs cje-eval 0.9.3 (direct) and 0.3.0 (stacked-DR).

Usage::

    .venv/bin/python benchmarks/real_data.py [--data ../shared/data/arena_sample] [--seeds 3]
        [--fractions 0.05 0.1 0.25 0.5] [--no-reference] [--out docs/real_data.md]

Ground truth (``ground_truth/{policy}_responses.jsonl``: mean ``oracle_label`` of the rows that have
one) is read here ONLY to score estimates; no estimator sees it. The base policy's truth (ranking
only) is the mean of its 480 oracle labels.

Oracle-fraction sweep: a random subset (fraction f of the 480 labelled base prompts, per seed) keeps
its labels in the logged data and the base fresh draws; every method sees the same subset. The probe
slices (50 labels per target policy) are always given, to us and to cje-eval 0.9.3's transport audit.

cje-eval is installed by this script in its own virtual environment per version under
``~/.cache/arena_cje_bench/`` (``python -m venv``; ``pip install cje-eval==X``) and run in a
subprocess (its results are cached under ``results/`` there, keyed by version and label subset,
seconds included); if that fails the reason is printed and the table carries our rows only.

Columns: error = estimate - truth; CI half-width = (upper - lower)/2; covers = truth in CI; seconds =
wall time of one full analysis (all policies). A row that is refused counts as refused, not as an
error. Ranking accuracy = share of correctly ordered pairs of the non-adversarial policies (base,
clone, parallel_universe_prompt) among those each method reports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from arena_cje.cje import CJEDataset, EstimationConfig, EstimationResult, estimate_policies

TARGETS = ("clone", "parallel_universe_prompt", "unhelpful")
NON_ADVERSARIAL = ("base", "clone", "parallel_universe_prompt")
CACHE = Path.home() / ".cache" / "arena_cje_bench"
OUR_ESTIMATORS = ("direct", "dr_cpo", "stacked_dr")

RUNNER = r'''
import json, sys, time, tempfile, os
import numpy as np
spec = json.load(open(sys.argv[1]))
import cje
D = spec["data"]
def rd(p): return [json.loads(l) for l in open(p)]
def strip(r, pid, keep):
    r = dict(r)
    if pid not in keep: r.pop("oracle_label", None)
    return r
def emit(res, sec):
    # One line per analysis: estimates and t intervals (res.ci()), plus 0.9's transport audits and gates when present.
    pols = res.metadata.get("target_policies")
    ci = res.ci()
    out = {p: {"estimate": float(res.estimates[i]), "ci_lower": float(ci[i][0]), "ci_upper": float(ci[i][1])} for i, p in enumerate(pols)}
    audits = {p: {k: a.get(k) for k in ("status", "delta_hat", "delta_ci", "delta_se", "delta_max", "n_probe")}
              for p, a in (res.metadata.get("transport_audits") or {}).items()}
    gates = res.metadata.get("reliability_gates") or {}
    refuse = {p: bool(g.get("refuse_level_claims")) for p, g in gates.items()}
    reasons = {p: list(g.get("reasons") or []) for p, g in gates.items()}
    routes = dict(zip(pols, (res.metadata.get("point_estimator") or {}).get("routes") or []))
    print("RESULT " + json.dumps({"seconds": sec, "policies": out, "audits": audits, "refuse_level": refuse, "gate_reasons": reasons,
                                  "routes": routes,
                                  "calibration": res.metadata.get("calibration_info")}, default=float), flush=True)
if spec["version"].startswith("0.9"):
    from cje.diagnostics.transport import TransportAuditConfig
    rows = {p: rd(f"{D}/fresh_draws/{p}_responses.jsonl") for p in ["base"] + spec["targets"]}
    slices = {p: [{"prompt_id": r["prompt_id"], "judge_score": r["judge_score"], "oracle_label": r["oracle_label"]}
                  for r in rd(f"{D}/probe_slice/{p}_probe.jsonl")] for p in spec["targets"]}
    # spec["draws"] (benchmarks/probe_study_reference.py): one analysis per (label subset, probes) in one process;
    # otherwise one analysis of spec["keep"] with the sample's probe slices.
    for draw in spec.get("draws") or [{"keep": spec["keep"], "probes": slices}]:
        keep = set(draw["keep"])
        fresh = {p: [{"prompt_id": r["prompt_id"], "judge_score": r["judge_score"], "draw_idx": r.get("draw_idx", 0),
                      "oracle_label": (r.get("oracle_label") if r["prompt_id"] in keep else None)} for r in rs]
                 for p, rs in rows.items()}
        t = time.time()
        res = cje.analyze_dataset(fresh_draws_data=fresh, estimator="direct",
                                  transport=TransportAuditConfig(probes_by_policy=draw["probes"],
                                                                 delta_max_by_policy={p: 0.05 for p in draw["probes"]}))
        emit(res, time.time() - t)
else:
    keep = set(spec["keep"])
    tmp = tempfile.mkdtemp()
    with open(f"{tmp}/logged.jsonl", "w") as f:
        for r in rd(f"{D}/logged_data.jsonl"):
            f.write(json.dumps(strip(r, r["metadata"]["prompt_id"], keep)) + "\n")
    os.makedirs(f"{tmp}/fresh")
    for p in spec["targets"]:
        with open(f"{tmp}/fresh/{p}_responses.jsonl", "w") as f:
            for r in rd(f"{D}/fresh_draws/{p}_responses.jsonl"):
                f.write(json.dumps(r) + "\n")
    t = time.time()
    res = cje.analyze_dataset(logged_data_path=f"{tmp}/logged.jsonl", fresh_draws_dir=f"{tmp}/fresh", estimator="stacked-dr")
    emit(res, time.time() - t)
'''


def _read(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype=False)


def load(data_dir: Path) -> tuple[pd.DataFrame, dict, dict, dict[str, float]]:
    """Frames in the reference layout plus the ground truth (benchmark scoring only)."""
    logged = _read(data_dir / "logged_data.jsonl")
    fresh = {p.name.removesuffix("_responses.jsonl"): _read(p) for p in sorted((data_dir / "fresh_draws").glob("*.jsonl"))}
    probes = {p.name.removesuffix("_probe.jsonl"): _read(p) for p in sorted((data_dir / "probe_slice").glob("*.jsonl"))}
    for df in (logged, *fresh.values(), *probes.values()):
        df["prompt_length"] = df["prompt"].str.split().str.len().astype(float)
    labels = {p.name.removesuffix("_responses.jsonl"): _read(p)["oracle_label"].dropna().to_numpy(dtype=float)
              for p in sorted((data_dir / "ground_truth").glob("*.jsonl"))}
    labels["base"] = fresh["base"]["oracle_label"].dropna().to_numpy(dtype=float)
    truth = {p: float(y.mean()) for p, y in labels.items()}
    TRUTH_SE.update({p: float(y.std(ddof=1) / np.sqrt(y.size)) for p, y in labels.items()})
    return logged, fresh, probes, truth


#: Standard error of each ground-truth value (sd of its oracle labels / sqrt(their number)); filled by load().
TRUTH_SE: dict[str, float] = {}


def noise_floor(res: EstimationResult, logged: pd.DataFrame, fresh: dict, truth: dict[str, float], bar: float = 0.015) -> list[str]:
    """How precisely can the truth be hit at all, and how narrow can an honest interval be? Markdown lines.

    The truth is itself a sample mean (SE_t = sd(labels)/sqrt(n_labels)); an unbiased estimate with
    standard error SE_e then misses it by error ~ N(0, SE_t^2 + SE_e^2), so
    P(|error| <= bar) = 2 Phi(bar / sqrt(SE_t^2 + SE_e^2)) - 1 is the best any method can expect.

    Two parts of any borrowed level's uncertainty, each shown as a 95% half-width: the fresh draws'
    sampling, 1.96 sqrt(Var_G(g_hat)/G) (between-prompt variance of the calibrated mean g_hat(X)), and
    the calibration's level, 1.96 sqrt(MSE_oof/n_L) (residual variance of the chosen calibrator,
    out-of-fold, over the number of labels it learned from). An interval close to the first alone
    has left the second out (the two can partly cancel through shared prompts, so their root sum of
    squares is a guide, not a bound).
    """
    from scipy import stats

    cal = res.calibration
    # g_hat per prompt = the borrowed direct estimator's contributions (no probes: nothing is combined).
    borrowed = estimate_policies(CJEDataset.from_frames(logged, fresh, {}, covariates=("response_length", "prompt_length")),
                                 EstimationConfig(estimators=("direct",), calibrator="auto"))
    lines = [f"| policy | truth | SE of truth | SE of our estimate | sd of error | P(abs error <= {bar}) for an unbiased method "
             "| half-width from fresh draws alone | from the calibration's level alone |",
             "|---|---|---|---|---|---|---|---|"]
    est = res.estimates
    rows = est[(est.estimator == "stacked_dr") & est.policy.isin(TARGETS)]
    for _, r in rows.iterrows():
        sd = float(np.hypot(TRUTH_SE[r.policy], r.std_error))
        p = 2 * stats.norm.cdf(bar / sd) - 1
        g = borrowed.outputs[(r.policy, "direct")].psi
        hw_fresh = 1.96 * np.sqrt(g.var(ddof=1) / len(g))
        hw_cal = 1.96 * cal.oof_rmse / np.sqrt(cal.n_labelled)
        lines.append(f"| {r.policy} | {truth[r.policy]:.3f} | {TRUTH_SE[r.policy]:.4f} | {r.std_error:.4f} | {sd:.4f} | {p:.2f} "
                     f"| {hw_fresh:.3f} | {hw_cal:.3f} |")
    same = float(np.hypot(TRUTH_SE["base"], TRUTH_SE["clone"]))
    lines += ["", f"base and clone are one policy, yet their two truths differ by {truth['clone'] - truth['base']:+.3f} "
              f"(SE of that difference {same:.4f}, i.e. {(truth['clone'] - truth['base']) / same:+.1f} SE)."]
    return lines


def subset_labels(logged: pd.DataFrame, fresh: dict, keep: set[str]) -> tuple[pd.DataFrame, dict]:
    """Keep oracle labels only for prompts in ``keep`` (logged rows and the base fresh draws)."""
    lg = logged.copy()
    pid = lg["metadata"].map(lambda m: m["prompt_id"])
    lg["oracle_label"] = lg["oracle_label"].where(pid.isin(keep))
    fr = dict(fresh)
    b = fr["base"].copy()
    b["oracle_label"] = b["oracle_label"].where(b["prompt_id"].isin(keep))
    fr["base"] = b
    return lg, fr


def run_ours(logged: pd.DataFrame, fresh: dict, probes: dict, calibrator: str) -> tuple[EstimationResult, float]:
    """Our estimates (transport_rule='correct'); returns the result and wall seconds (validation included)."""
    t = time.perf_counter()
    data = CJEDataset.from_frames(logged, fresh, probes, covariates=("response_length", "prompt_length"))
    res = estimate_policies(data, EstimationConfig(estimators=OUR_ESTIMATORS, calibrator=calibrator, transport_rule="correct"))
    return res, time.perf_counter() - t


def ensure_venv(version: str) -> Path | None:
    """python -m venv + pip install cje-eval==version under the cache folder; None (reason printed) on failure."""
    env = CACHE / f"cje_{version}"
    py = env / "bin" / "python"
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, capture_output=True, text=True)
        chk = subprocess.run([str(py), "-c", "import cje"], capture_output=True, text=True)
        if chk.returncode != 0:
            r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"cje-eval=={version}"], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"cje-eval {version}: pip install failed: {r.stderr.strip()[-400:]}", file=sys.stderr)
                return None
        (CACHE / "runner.py").write_text(RUNNER)
        return py
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"cje-eval {version}: venv failed: {e}", file=sys.stderr)
        return None


def run_reference(py: Path, version: str, data_dir: Path, keep: set[str]) -> tuple[dict, float] | None:
    """One cje-eval analysis in its venv (cached by version and label subset); None (reason printed) on failure."""
    key = hashlib.sha256(json.dumps([version, str(data_dir), sorted(keep)]).encode()).hexdigest()[:16]
    cached = CACHE / "results" / f"{version}_{key}.json"
    if cached.exists():
        out = json.loads(cached.read_text())
        return out["policies"], out["seconds"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"version": version, "data": str(data_dir), "keep": sorted(keep), "targets": list(TARGETS)}, f)
    r = subprocess.run([str(py), str(CACHE / "runner.py"), f.name], capture_output=True, text=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        print(f"cje-eval {version} failed: {(r.stderr or r.stdout).strip()[-600:]}", file=sys.stderr)
        return None
    out = json.loads(line[7:])
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(out))
    return out["policies"], out["seconds"]


def score(rows: list[dict], truth: dict[str, float]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["truth"] = df["policy"].map(truth)
    df["error"] = df["estimate"] - df["truth"]
    df["half_width"] = (df["ci_upper"] - df["ci_lower"]) / 2
    df["covers"] = (df["ci_lower"] <= df["truth"]) & (df["truth"] <= df["ci_upper"])
    return df


def rank_accuracy(df: pd.DataFrame, truth: dict[str, float]) -> float:
    """Share of correctly ordered pairs among reported non-adversarial policies."""
    est = df[df.policy.isin(NON_ADVERSARIAL) & ~df.refused].set_index("policy")["estimate"]
    pairs = [(a, b) for i, a in enumerate(NON_ADVERSARIAL) for b in NON_ADVERSARIAL[i + 1:] if a in est and b in est]
    if not pairs:
        return float("nan")
    return float(np.mean([(est[a] - est[b]) * (truth[a] - truth[b]) > 0 for a, b in pairs]))


def ours_rows(est: pd.DataFrame, method_prefix: str, seconds: float, extra: dict) -> list[dict]:
    rows = []
    for _, r in est.iterrows():
        if r.estimator not in OUR_ESTIMATORS:
            continue
        name = f"{method_prefix} {r.estimator}"
        if r.policy == "base" and r.estimator != "direct":
            continue
        rows.append({"method": name, "policy": r.policy, "estimate": r.estimate, "ci_lower": r.ci_lower, "ci_upper": r.ci_upper,
                     "refused": r.status == "refused", "source": r.level_source, "seconds": seconds, **extra})
        if r.estimator == "direct" and r.policy != "base":
            # Plain isotonic/auto fit averaged over fresh draws, no probe use (the baseline).
            rows.append({"method": f"{method_prefix} borrowed direct (no probe)", "policy": r.policy, "estimate": r.borrowed_estimate,
                         "ci_lower": np.nan, "ci_upper": np.nan, "refused": False, "source": "borrowed", "seconds": seconds, **extra})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arena_sample")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.05, 0.10, 0.25, 0.50])
    ap.add_argument("--no-reference", action="store_true", help="skip cje-eval")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here too")
    args = ap.parse_args()

    logged, fresh, probes, truth = load(args.data)
    labelled = sorted(fresh["base"].loc[fresh["base"]["oracle_label"].notna(), "prompt_id"])
    refs = {}
    if not args.no_reference:
        for v in ("0.9.3", "0.3.0"):
            py = ensure_venv(v)
            if py is not None:
                refs[v] = py

    settings = [(1.0, 0, set(labelled))]
    for frac in args.fractions:
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 * seed + int(frac * 100))
            settings.append((frac, seed, set(rng.choice(labelled, size=max(5, round(frac * len(labelled))), replace=False))))

    rows: list[dict] = []
    for frac, seed, keep in settings:
        extra = {"fraction": frac, "seed": seed}
        lg, fr = subset_labels(logged, fresh, keep)
        for cal in ("isotonic", "auto"):
            res, sec = run_ours(lg, fr, probes, cal)
            if frac == 1.0 and cal == "auto":
                full_auto = res
            rows += ours_rows(res.estimates, f"ours[{cal}]", sec, extra)
        for v, py in refs.items():
            got = run_reference(py, v, args.data, keep)
            name = f"cje-eval {v} " + ("direct" if v.startswith("0.9") else "stacked-dr")
            if got is None:
                continue
            pols, sec = got
            for p, r in pols.items():
                rows.append({"method": name, "policy": p, **r, "refused": False, "source": "reference", "seconds": sec, **extra})
        print(f"done fraction {frac} seed {seed}", file=sys.stderr)

    df = score(rows, truth)
    lines = [f"Command: `.venv/bin/python benchmarks/real_data.py {' '.join(sys.argv[1:])}`".replace("  ", " "), "",
             "Truth (ground_truth/, scoring only): " + ", ".join(f"{p} {truth[p]:.3f}" for p in (*NON_ADVERSARIAL, "unhelpful")), ""]
    full = df[df.fraction == 1.0]
    lines += ["## All 480 base labels", "",
              "| method | policy | estimate | error | CI half-width | covers | source | seconds |", "|---|---|---|---|---|---|---|---|"]
    for _, r in full[full.policy.isin(TARGETS)].iterrows():
        if r.refused:
            lines.append(f"| {r.method} | {r.policy} | refused | | | | {r.source} | {r.seconds:.1f} |")
        else:
            hw = "" if np.isnan(r.half_width) else f"{r.half_width:.3f}"
            cov = "" if np.isnan(r.half_width) else ("yes" if r.covers else "NO")
            lines.append(f"| {r.method} | {r.policy} | {r.estimate:.3f} | {r.error:+.3f} | {hw} | {cov} | {r.source} | {r.seconds:.1f} |")
    lines += ["", "Per method, all 480 labels (reported rows of the 3 target policies; non-adversarial = clone, parallel_universe_prompt):", "",
              "| method | max abs error | mean CI half-width (3 targets) | mean half-width (non-adv.) | coverage | refused | rank acc. |",
              "|---|---|---|---|---|---|---|"]
    for m, g in full.groupby("method", sort=False):
        t = g[g.policy.isin(TARGETS) & ~g.refused]
        na = t[t.policy.isin(TARGETS[:2])]
        lines.append(f"| {m} | {t.error.abs().max():.3f} | {t.half_width.mean():.3f} | {na.half_width.mean():.3f} | "
                     f"{t.covers.mean() if t.half_width.notna().any() else float('nan'):.2f} | {int(g[g.policy.isin(TARGETS)].refused.sum())} | "
                     f"{rank_accuracy(g, truth):.2f} |")
    lines += ["", "### Noise floor (all 480 labels; our estimate = ours[auto] stacked_dr)", "", *noise_floor(full_auto, logged, fresh, truth)]
    sweep = df[(df.fraction < 1.0) & df.policy.isin(TARGETS)]
    lines += ["", f"## Oracle-fraction sweep ({args.seeds} seeds per fraction; rows = reported target-policy estimates)", "",
              "| fraction | method | MAE | MAE non-adv. | coverage | mean CI half-width | refused | rank acc. | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (frac, m), g in sweep.groupby(["fraction", "method"], sort=False):
        t = g[~g.refused]
        na = t[t.policy.isin(TARGETS[:2])]
        ra = np.nanmean([rank_accuracy(df[(df.fraction == frac) & (df.seed == s) & (df.method == m)], truth) for s in g.seed.unique()])
        cov = t.covers.mean() if t.half_width.notna().any() else float("nan")
        lines.append(f"| {frac:.2f} | {m} | {t.error.abs().mean():.3f} | {na.error.abs().mean():.3f} | {cov:.2f} | "
                     f"{t.half_width.mean():.3f} | {int(g.refused.sum())}/{len(g)} | {ra:.2f} | {g.seconds.mean():.1f} |")
    md = "\n".join(lines)
    print(md)
    if args.out:
        args.out.write_text(md + "\n")


if __name__ == "__main__":
    main()
