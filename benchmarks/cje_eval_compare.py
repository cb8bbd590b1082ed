"""Side-by-side: our estimator sweep vs the reference library ``cje-eval==0.3.0`` on the arena sample.

The reference runs in its own virtual environment (created on first use with ``python -m venv`` and
``pip install cje-eval==0.3.0``; default ``~/.cache/arena_cje_bench/cje030``), in a subprocess that
calls ``cje.analyze_dataset(logged_data_path, fresh_draws_dir, estimator=...)`` once per estimator
(its documented entry point; defaults otherwise) and reports estimates, standard errors and wall
time as JSON. Ours: ``estimate_policies`` with every estimator, OUA, diagnostics, the probe audit and
paired differences, timed in this process (reading the JSONL included).

Estimator names: raw-ips = snips, calibrated-ips = calibrated_ips, direct, dr-cpo = dr_cpo, mrdr,
tmle, stacked-dr = stacked_dr. For each (policy, estimator) the table shows both estimates and SEs,
delta = ours - reference, and ``agree`` = |delta| <= max(SE_ours, SE_ref) (within one SE); the
summary line counts agreement over the DR/direct rows. Wall times of both sweeps and their ratio
are measured in the same run.

Run: .venv/bin/python benchmarks/cje_eval_compare.py [--data ../shared/data/arena_sample] [--calibrator isotonic]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from arena_cje.cje import ALL_ESTIMATORS, CJEDataset, EstimationConfig, estimate_policies

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "arena_sample"
DEFAULT_VENV = Path.home() / ".cache" / "arena_cje_bench" / "cje030"
NAMES = {"raw-ips": "snips", "calibrated-ips": "calibrated_ips", "direct": "direct", "dr-cpo": "dr_cpo",
         "mrdr": "mrdr", "tmle": "tmle", "stacked-dr": "stacked_dr"}
DR_DIRECT = ("direct", "dr_cpo", "mrdr", "tmle", "stacked_dr")

RUNNER = r'''
import json, logging, sys, time, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from cje import analyze_dataset
data, names = sys.argv[1], sys.argv[2].split(",")
out = {"per_estimator_seconds": {}, "rows": []}
t_all = time.perf_counter()
for est in names:
    t0 = time.perf_counter()
    try:
        r = analyze_dataset(logged_data_path=f"{data}/logged_data.jsonl", fresh_draws_dir=f"{data}/fresh_draws", estimator=est)
        pols = r.metadata.get("target_policies") or []
        for p, e, s in zip(pols, r.estimates, r.standard_errors):
            out["rows"].append({"estimator": est, "policy": p, "estimate": float(e), "std_error": float(s), "method": str(r.method)})
    except Exception as exc:  # reported, not hidden
        out["rows"].append({"estimator": est, "policy": None, "error": f"{type(exc).__name__}: {exc}"})
    out["per_estimator_seconds"][est] = time.perf_counter() - t0
    if est == "direct" and any(r.get("estimator") == "direct" and r.get("estimate") != r.get("estimate") for r in out["rows"]):
        # 0.3.0's direct mode with logged data + fresh draws returns NaN here (its bootstrap calibration
        # fails); its fresh-draws-only direct mode (labels from the base draws) is the documented alternative.
        t0 = time.perf_counter()
        r = analyze_dataset(fresh_draws_dir=f"{data}/fresh_draws", estimator="direct")
        pols = r.metadata.get("target_policies") or []
        for p, e, s in zip(pols, r.estimates, r.standard_errors):
            out["rows"].append({"estimator": "direct (fresh-only)", "policy": p, "estimate": float(e), "std_error": float(s), "method": str(r.method)})
        out["per_estimator_seconds"]["direct (fresh-only)"] = time.perf_counter() - t0
out["total_seconds"] = time.perf_counter() - t_all
print("JSON" + json.dumps(out))
'''


def ensure_venv(venv: Path) -> Path:
    """Create the reference venv with cje-eval==0.3.0 unless it already has it; return its python."""
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import importlib.metadata as m; assert m.version('cje-eval') == '0.3.0'"],
                                        capture_output=True).returncode == 0
    if not ok:
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "cje-eval==0.3.0"], check=True)
    return py


def run_reference(py: Path, data: Path) -> dict:
    with_env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(py), "-c", RUNNER, str(data), ",".join(NAMES)], capture_output=True, text=True, env=with_env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")), None)
    if line is None:
        raise RuntimeError(f"reference run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[4:])


def run_ours(data: Path, calibrator: str) -> tuple[pd.DataFrame, float]:
    t0 = time.perf_counter()
    logged = pd.read_json(data / "logged_data.jsonl", lines=True)
    fresh = {p.name.removesuffix("_responses.jsonl"): pd.read_json(p, lines=True) for p in (data / "fresh_draws").glob("*_responses.jsonl")}
    probes = {p.name.removesuffix("_probe.jsonl"): pd.read_json(p, lines=True) for p in (data / "probe_slice").glob("*_probe.jsonl")}
    res = estimate_policies(CJEDataset.from_frames(logged, fresh, probes),
                            EstimationConfig(estimators=ALL_ESTIMATORS, calibrator=calibrator))
    return res.estimates, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--calibrator", default="isotonic", help="ours: isotonic (judge only, like the reference default) | auto | two_stage")
    a = ap.parse_args()
    if not a.data.is_dir():
        print(f"data folder not found: {a.data}")
        return
    py = ensure_venv(a.venv)
    ours, t_ours = run_ours(a.data, a.calibrator)
    t0 = time.perf_counter()
    ref = run_reference(py, a.data)
    t_ref_wall = time.perf_counter() - t0
    errors = [r for r in ref["rows"] if r.get("policy") is None]
    refdf = pd.DataFrame([r for r in ref["rows"] if r.get("policy") is not None])
    nan_direct = refdf[(refdf.estimator == "direct") & refdf.estimate.isna()]
    if len(nan_direct):
        print("reference direct (logged + fresh draws) returned NaN for", list(nan_direct.policy),
              "-> compared with its fresh-draws-only direct mode instead")
        refdf = refdf[~((refdf.estimator == "direct") & refdf.estimate.isna())]
        refdf.loc[refdf.estimator == "direct (fresh-only)", "estimator"] = "direct"
    refdf["estimator"] = refdf.estimator.map(NAMES)
    m = ours.merge(refdf, on=["policy", "estimator"], how="inner", suffixes=("_ours", "_ref"))
    m["delta"] = m.estimate_ours - m.estimate_ref
    m["max_se"] = np.maximum(m.std_error_ours, m.std_error_ref)
    m["agree"] = m.delta.abs() <= m.max_se
    pd.set_option("display.width", 220)
    cols = ["policy", "estimator", "estimate_ours", "std_error_ours", "estimate_ref", "std_error_ref", "delta", "agree", "status"]
    print(f"data: {a.data}; ours: calibrator={a.calibrator}; reference: cje-eval 0.3.0 analyze_dataset defaults")
    print(m[cols].sort_values(["policy", "estimator"]).round(4).to_string(index=False))
    for e in errors:
        print(f"reference {e['estimator']}: {e['error']}")
    dr = m[m.estimator.isin(DR_DIRECT) & m.estimate_ref.notna()]
    print(f"DR/direct rows within one SE: {int(dr.agree.sum())}/{len(dr)}"
          f" (excluding refused rows: {int(dr[dr.status != 'refused'].agree.sum())}/{int((dr.status != 'refused').sum())})")
    print("reference seconds per estimator:", {k: round(v, 1) for k, v in ref["per_estimator_seconds"].items()})
    print(f"wall time: ours {t_ours:.2f} s (read + validate + all {len(ALL_ESTIMATORS)} estimators, OUA, diagnostics, audit, "
          f"differences); cje-eval 0.3.0 {ref['total_seconds']:.1f} s in-process ({t_ref_wall:.1f} s incl. interpreter start); "
          f"speed ratio {ref['total_seconds'] / t_ours:.0f}x")


if __name__ == "__main__":
    main()
