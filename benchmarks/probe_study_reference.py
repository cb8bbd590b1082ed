"""The reference library (cje-eval 0.9.3) on the probe study's draws (issue 17, item 2 evidence).

Per draw d the label mask and the 50-label probes are exactly ``probe_study._draw(d)`` (seed
10,000 + d, same ``prepare``), so the figures compare with ``benchmarks/probe_study.py`` draw for
draw. Each draw is handed to cje-eval 0.9.3 as ``real_data.RUNNER`` does for one analysis:
``analyze_dataset(fresh_draws_data=..., estimator="direct", transport=TransportAuditConfig(probes,
delta_max 0.05 per target))``; the fresh draws of base and the three targets, with oracle labels only
on the base draws of the kept prompts (the reference's direct mode reads no logged data), no
calibration covariates (its defaults). All draws run in ONE subprocess in the venv that
``real_data.ensure_venv`` builds under ``~/.cache/arena_cje_bench/``.

What 0.9.3 reports (read from its source, ``cje/interface/analysis.py`` and
``cje/diagnostics/transport.py``): the estimate of a target without labels of its own is the
calibrated judge mean over its fresh draws (route ``plug_in``: the borrowed level); ``res.ci()`` is
its default ``cluster_robust`` t interval (prompt-cluster SE plus the oracle jackknife). The probes
only grade the residual (oracle - calibrated judge) on them: a prompt-clustered mean with a t interval
at Bonferroni level 1 - 0.05/3, PASS if inside +/-0.05, FAIL if entirely outside, else (or under 20
effective clusters) INCONCLUSIVE. A FAIL never changes the estimate or its interval; it sets the
policy's reliability gate ``refuse_level_claims`` (and status CRITICAL), as does the boundary card
(REFUSE-LEVEL: >= 5% of the policy's judge scores outside the labelled scores' range). So "refuse
level" below is the share of draws where the reference itself says not to use the level; the errors
are over all draws (the estimate it returns either way).

Per target: mean and SD of the error, RMSE, p95 and max of |error|, coverage of ``res.ci()``,
share within 0.05, mean CI half-width, refuse-level share (and the share where the boundary gate
fired), share within 0.05 among the draws whose level is not refused; and per target the audit
states' frequencies with the mean audited residual. Truth = mean of the 500 ground-truth labels.

Run: nice .venv/bin/python benchmarks/probe_study_reference.py --draws 200 [--labelled-share 0.25]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_study  # noqa: E402
from real_data import CACHE, TARGETS, ensure_venv  # noqa: E402

#: The reference's audit states (cje/diagnostics/transport.py), in its own severity order.
REFERENCE_STATES = ("FAIL", "INCONCLUSIVE", "NOT_GRADED", "NOT_CHECKED", "PASS")


def reference_draw(d: int) -> dict:
    """Draw d of ``probe_study._draw`` as the reference's inputs: kept base prompts and probe rows per target.

    Needs ``probe_study.prepare`` first. The kept prompts are read back from the masked base fresh
    draws (the only labels the reference's direct mode sees).
    """
    _, fresh, probes = probe_study._draw(d)
    base = fresh["base"]
    keep = sorted(base.loc[base["oracle_label"].notna(), "prompt_id"])
    cols = ["prompt_id", "judge_score", "oracle_label"]
    return {"keep": keep, "probes": {p: probes[p][cols].to_dict("records") for p in TARGETS}}


def run_draws(py: Path, version: str, data: Path, draws: list[dict]) -> Iterator[dict]:
    """Run every draw in one reference subprocess; yields each analysis' parsed RESULT line in draw order.

    Raises:
        RuntimeError: the subprocess fails or stops before the last draw (its stderr tail included).
    """
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"version": version, "data": str(data), "keep": [], "targets": list(TARGETS),
                                    "draws": draws}))
        err = Path(tmp) / "stderr.txt"
        with err.open("w") as ef:
            proc = subprocess.Popen([str(py), str(CACHE / "runner.py"), str(spec)], stdout=subprocess.PIPE, stderr=ef, text=True)
            n = 0
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    n += 1
                    yield json.loads(line[7:])
            proc.wait()
        if proc.returncode != 0 or n != len(draws):
            raise RuntimeError(f"cje-eval {version} stopped after {n} of {len(draws)} draws (exit {proc.returncode}): "
                               f"{err.read_text().strip()[-800:]}")


def draw_rows(d: int, out: dict) -> list[dict]:
    """One row per target policy of one reference analysis (estimate, interval, audit, gate, route)."""
    rows = []
    for p in TARGETS:
        a = out["audits"].get(p) or {}
        rows.append({"draw": d, "policy": p, **out["policies"][p], "audit": a.get("status", "NOT_CHECKED"),
                     "delta_hat": a.get("delta_hat", np.nan), "refuse_level": bool(out["refuse_level"].get(p, False)),
                     # 0.9.3 refuses level claims on a transport FAIL and on its boundary card (judge scores outside the
                     # labelled range); the latter's reasons start "boundary:".
                     "boundary_gate": any(r.startswith("boundary") for r in out["gate_reasons"].get(p, [])),
                     "route": out["routes"].get(p), "calibration": (out.get("calibration") or {}).get("selected_mode"),
                     "seconds": out["seconds"]})
    return rows


def summarise(df: pd.DataFrame, truth: dict[str, float]) -> pd.DataFrame:
    """Per policy: error moments, p95 / max |error|, coverage, within 0.05, half-width, refuse-level and audit-state shares."""
    df = df.assign(truth=df.policy.map(truth))
    df["err"] = df.estimate - df.truth
    df["abs_err"] = df.err.abs()
    df["cover"] = (df.ci_lower <= df.truth) & (df.truth <= df.ci_upper)
    df["half_width"] = (df.ci_upper - df.ci_lower) / 2
    aggs = dict(bias=("err", "mean"), sd=("err", "std"), rmse=("abs_err", lambda e: float(np.sqrt(np.mean(e**2)))),
                p95=("abs_err", lambda e: float(np.quantile(e, 0.95))), max=("abs_err", "max"),
                coverage=("cover", "mean"), within_005=("abs_err", lambda e: float(np.mean(e <= 0.05))),
                half_width=("half_width", "mean"), refuse_level=("refuse_level", "mean"),
                boundary_gate=("boundary_gate", "mean"), delta_hat=("delta_hat", "mean"))
    for st in REFERENCE_STATES:
        aggs[st] = ("audit", lambda s, st=st: float(np.mean(s == st)))
    tab = df.groupby("policy", sort=False).agg(**aggs)
    kept = df[~df.refuse_level].groupby("policy", sort=False)
    tab["n_kept"] = kept.size().reindex(tab.index, fill_value=0)
    tab["within_005_kept"] = kept.abs_err.apply(lambda e: float(np.mean(e <= 0.05))).reindex(tab.index)
    return tab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arena_sample")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--probe-size", type=int, default=50)
    ap.add_argument("--version", default="0.9.3", help="cje-eval version (0.9.x: direct mode with transport audits)")
    mask = ap.add_mutually_exclusive_group()
    mask.add_argument("--oracle-coverage", type=float, default=None, help="as probe_study.py (default 0.25)")
    mask.add_argument("--labelled-share", type=float, default=None, help="as probe_study.py")
    ap.add_argument("--out", type=Path, default=None, help="optional CSV of every draw's rows")
    a = ap.parse_args()
    if not a.version.startswith("0.9"):
        ap.error("only cje-eval 0.9.x takes fresh draws with transport probes")
    mask_def, frac = ("labelled", a.labelled_share) if a.labelled_share is not None else ("coverage", a.oracle_coverage or 0.25)
    truth = probe_study.prepare(a.data, mask_def, frac, a.probe_size, ["direct"])
    py = ensure_venv(a.version)
    if py is None:
        sys.exit(f"cje-eval {a.version} is not available (reason above)")
    draws = [reference_draw(d) for d in range(a.draws)]
    t0 = time.perf_counter()
    rows = []
    for d, out in enumerate(run_draws(py, a.version, a.data, draws)):
        rows += draw_rows(d, out)
        if (d + 1) % 20 == 0:
            print(f"{d + 1} draws, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    df = pd.DataFrame(rows)
    if a.out:
        df.to_csv(a.out, index=False)
    tab = summarise(df, truth)
    s = probe_study._STATE
    print(f"cje-eval {a.version}, draws={a.draws}, {s['n_keep']} base labels ({mask_def} mask {frac}: "
          f"{s['n_keep'] / s['n_prompts']:.1%} oracle coverage), {a.probe_size}-label probes, wall {wall:.0f} s "
          f"({df.drop_duplicates('draw').seconds.mean():.2f} s per analysis); routes: {df.groupby(['policy', 'route']).size().to_dict()}; "
          f"calibration modes (draws): {df.drop_duplicates('draw').calibration.value_counts().to_dict()}; "
          "truth:", {p: round(truth[p], 4) for p in TARGETS})
    print("\n| policy | mean error | SD | RMSE | p95 abs error | max | coverage | within 0.05 | mean CI half-width "
          "| refuse level | boundary gate fired | within 0.05 where not refused (draws) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p, x in tab.iterrows():
        print(f"| {p} | {x.bias:+.4f} | {x.sd:.4f} | {x.rmse:.4f} | {x.p95:.4f} | {x['max']:.4f} | {x.coverage:.3f} "
              f"| {x.within_005:.3f} | {x.half_width:.4f} | {x.refuse_level:.3f} | {x.boundary_gate:.3f} "
              f"| {x.within_005_kept:.3f} ({int(x.n_kept)}) |")
    print("\nReference audit states (share of draws) and mean audited residual:\n")
    print("| policy | " + " | ".join(REFERENCE_STATES) + " | mean residual |")
    print("|---|" + "---|" * (len(REFERENCE_STATES) + 1))
    for p, x in tab.iterrows():
        print(f"| {p} | " + " | ".join(f"{x[st]:.3f}" for st in REFERENCE_STATES) + f" | {x.delta_hat:+.4f} |")


if __name__ == "__main__":
    main()
