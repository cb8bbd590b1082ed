"""Before/after equality check of the estimator sweep (speed work must not change a statistic).

``save DIR`` runs the full sweep (all estimators, auto calibrator, OUA, diagnostics, audit,
differences) on: the tests/cje synthetic fixtures (several seeds and shapes), a 20k-row set from
``estimation_speed.synthetic_frames`` and ../shared/data/arena_sample (when present), and pickles
every estimate, SE, CI, diagnostic, extra and per-prompt contribution. ``compare A B`` prints the
largest absolute difference of every numeric field and any non-numeric mismatch.

Run: .venv/bin/python benchmarks/compare_estimates.py save /tmp/before
     .venv/bin/python benchmarks/compare_estimates.py compare /tmp/before /tmp/after
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cje"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from arena_cje.cje import ALL_ESTIMATORS, CJEDataset, EstimationConfig, estimate_policies  # noqa: E402


def datasets():
    from cje_synthetic import simulate
    from estimation_speed import SAMPLE, synthetic_frames
    for seed, n, kw in [(0, 1000, {}), (1, 600, {"probe_size": 80}), (2, 2000, {"oracle_fraction": 0.1}),
                        (3, 800, {"judge_bias": {"pi_hot": 0.1}, "probe_size": 60})]:
        d = simulate(n=n, seed=seed, **kw)
        yield f"synthetic_seed{seed}", (lambda d=d: CJEDataset.from_frames(d.logged, d.fresh, d.probes or None))
    logged, fresh = synthetic_frames(20_000, 4)
    yield "bench_20k", (lambda: CJEDataset.from_frames(logged, fresh, covariates=("response_length",)))
    if SAMPLE.is_dir():
        lg = pd.read_json(SAMPLE / "logged_data.jsonl", lines=True)
        fr = {p.name.removesuffix("_responses.jsonl"): pd.read_json(p, lines=True) for p in (SAMPLE / "fresh_draws").glob("*.jsonl")}
        pr = {p.name.removesuffix("_probe.jsonl"): pd.read_json(p, lines=True) for p in (SAMPLE / "probe_slice").glob("*.jsonl")}
        yield "arena_sample", (lambda: CJEDataset.from_frames(lg, fr, pr))


def flatten(res) -> dict:
    out = {"estimates": res.estimates, "differences": res.differences, "comparisons": res.comparisons,
           "decisions": res.decisions, "weights": res.weights_table, "transport": res.transport_table}
    if res.calibration is not None:
        out["calibration"] = {k: v for k, v in res.calibration.__dict__.items()}
    for (p, e), o in res.outputs.items():
        out[f"psi/{p}/{e}"] = o.psi
        out[f"est/{p}/{e}"] = {"estimate": o.estimate,  
                               **{k: v for k, v in o.__dict__.items() if k not in ("psi",)}}
    for p, d in res.weights.items():
        out[f"wdiag/{p}"] = dict(d.__dict__)
    return out


def save(dirname: str) -> None:
    Path(dirname).mkdir(parents=True, exist_ok=True)
    for name, make in datasets():
        data = make()
        res = estimate_policies(data, EstimationConfig(estimators=ALL_ESTIMATORS, calibrator="auto"))
        with open(Path(dirname) / f"{name}.pkl", "wb") as fh:
            pickle.dump(flatten(res), fh)
        print("saved", name, flush=True)


def diff(a, b, path: str, acc: list) -> None:
    if isinstance(a, pd.DataFrame):
        if list(a.columns) != list(b.columns) or a.shape != b.shape:
            acc.append((path, float("inf"), "shape/columns differ"))
            return
        for c in a.columns:
            diff(a[c].to_numpy(), b[c].to_numpy(), f"{path}.{c}", acc)
        diff(a.index.to_numpy(), b.index.to_numpy(), f"{path}.index", acc)
    elif isinstance(a, pd.Series):
        diff(a.index.to_numpy(), b.index.to_numpy(), f"{path}.index", acc)
        diff(a.to_numpy(), b.to_numpy(), path, acc)
    elif isinstance(a, dict):
        if set(a) != set(b):
            acc.append((path, float("inf"), f"keys differ {set(a) ^ set(b)}"))
        for k in set(a) & set(b):
            diff(a[k], b[k], f"{path}/{k}", acc)
    elif isinstance(a, (list, tuple)) and not isinstance(a, str):
        if len(a) != len(b):
            acc.append((path, float("inf"), "length differs"))
            return
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", acc)
    elif isinstance(a, np.ndarray) and a.dtype.kind in "fiub" and isinstance(b, np.ndarray) and b.dtype.kind in "fiub":
        if a.shape != b.shape:
            acc.append((path, float("inf"), "shape differs"))
            return
        fa, fb = a.astype(float), b.astype(float)
        if not np.array_equal(np.isnan(fa), np.isnan(fb)):
            acc.append((path, float("inf"), "NaN pattern differs"))
            return
        ok = ~np.isnan(fa)
        acc.append((path, float(np.max(np.abs(fa[ok] - fb[ok]), initial=0.0)), ""))
    elif isinstance(a, np.ndarray):
        for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
            diff(x, y, f"{path}[{i}]", acc)
    elif isinstance(a, (float, int, np.floating, np.integer)) and not isinstance(a, bool):
        diff(np.asarray([a], dtype=float), np.asarray([b], dtype=float), path, acc)
    else:
        try:
            same = bool(a == b) if not hasattr(a, "__dict__") else a.__dict__.keys() == b.__dict__.keys()
        except Exception:  # noqa: BLE001
            same = repr(a) == repr(b)
        if hasattr(a, "__dict__") and not isinstance(a, type):
            diff(dict(a.__dict__), dict(b.__dict__), path, acc)
        elif not same and not (a is None and b is None):
            acc.append((path, float("inf"), f"{a!r} != {b!r}"[:200]))


def compare(da: str, db: str) -> None:
    worst = 0.0
    for f in sorted(Path(da).glob("*.pkl")):
        a = pickle.loads(f.read_bytes())
        b = pickle.loads((Path(db) / f.name).read_bytes())
        acc: list = []
        diff(a, b, f.stem, acc)
        m = max((d for _, d, _ in acc), default=0.0)
        worst = max(worst, m)
        print(f"{f.stem}: {len(acc)} numeric fields compared, max |before - after| = {m:.3g}")
        for p, d, why in acc:
            if d > 1e-10:
                print("   ", p, d, why)
    print(f"overall max |before - after| = {worst:.3g}")


if __name__ == "__main__":
    if sys.argv[1] == "save":
        save(sys.argv[2])
    else:
        compare(sys.argv[2], sys.argv[3])
