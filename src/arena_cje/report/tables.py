"""Tables of the report: configuration, per-stage counts, differences against the baseline."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from arena_cje.experiment import to_plain


def flatten_parameters(parameters: Mapping[str, Any], prefix: str = "") -> pd.DataFrame:
    """The configuration as one table: dotted ``parameter`` name -> ``value`` (JSON for lists)."""
    rows: list[dict[str, str]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            text = value if isinstance(value, str) else json.dumps(to_plain(value))
            rows.append({"parameter": key, "value": text.strip()})

    walk(parameters, prefix)
    return pd.DataFrame(rows, columns=["parameter", "value"])


def differences_vs_baseline(policy_differences: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Rows ``policy - baseline`` for every other policy, whichever way round they were computed.

    A stored row (A, B) holds theta_A - theta_B; when the baseline is A, the row is flipped:
    estimate -> -estimate and [lo, hi] -> [-hi, -lo] (the t interval is symmetric in sign).
    """
    cols = ["policy", "estimator", "estimate", "std_error", "ci_lower", "ci_upper", "n", "status", "reasons"]
    d = policy_differences
    if d is None or d.empty:
        return pd.DataFrame(columns=cols)
    direct = d[d["baseline"] == baseline]
    flipped = d[d["policy"] == baseline].copy()
    flipped["policy"] = flipped["baseline"]
    flipped["estimate"] = -flipped["estimate"]
    flipped["ci_lower"], flipped["ci_upper"] = -d.loc[flipped.index, "ci_upper"], -d.loc[flipped.index, "ci_lower"]
    out = pd.concat([direct, flipped], ignore_index=True)
    out["reasons"] = out["reasons"].fillna("") if "reasons" in out else ""
    return out[cols].sort_values(["policy", "estimator"], kind="stable").reset_index(drop=True)


def stage_summary(
    responses: pd.DataFrame, logprobs: pd.DataFrame, judge_scores: pd.DataFrame,
    labeling_summary: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Per stage and policy: rows, failures (non-empty ``error``), tokens and cost where recorded.

    Cost is the sum of a ``cost`` / ``cost_usd`` column when a stage records one (API backends);
    labeling cost comes from the labeling summary (``cost.received_votes``, else ``cost.expected``).
    """
    rows = []
    for stage, frame in (("generation", responses), ("teacher forcing", logprobs), ("judging", judge_scores)):
        if frame is None or frame.empty:
            continue
        cost_col = next((c for c in ("cost_usd", "cost") if c in frame.columns), None)
        for policy, g in frame.groupby("policy", sort=True):
            failed = g["error"].notna() & (g["error"].astype(str) != "") if "error" in g else pd.Series(False, index=g.index)
            rows.append({
                "stage": stage, "policy": policy, "rows": len(g), "failed": int(failed.sum()),
                "failure_examples": "; ".join(sorted(set(g.loc[failed, "error"].astype(str)))[:2]),
                "tokens": int(g["n_tokens"].sum()) if "n_tokens" in g else None,
                "cost": float(g[cost_col].sum()) if cost_col else None,
            })
    if labeling_summary:
        labels = labeling_summary.get("labels", {})
        cost = labeling_summary.get("cost", {})
        rows.append({
            "stage": "labeling", "policy": "all", "rows": labels.get("collected"),
            "failed": labeling_summary.get("votes", {}).get("quarantined"),
            "failure_examples": "; ".join(labeling_summary.get("votes", {}).get("quarantine_reasons", {}))[:200],
            "tokens": None, "cost": cost.get("received_votes", cost.get("expected")),
        })
    return pd.DataFrame(rows, columns=["stage", "policy", "rows", "failed", "failure_examples", "tokens", "cost"])
