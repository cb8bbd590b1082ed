"""What the report shows of a labeling round: labels collected vs needed, votes, agreement,
rater quality and cost, as one JSON-able mapping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from arena_cje.crowd.aggregate import agreement_by_policy, duplicate_consistency, krippendorff_alpha
from arena_cje.crowd.export import expected_cost
from arena_cje.plain import to_plain

#: Keys of the import report (``import_ratings``) that describe the received file.
FILE_KEYS = ("file", "bytes", "sha256", "encoding", "format", "separator", "file_problems")


@dataclass(frozen=True)
class SummarySettings:
    """The labeling settings a summary restates (from the ``labeling`` parameter block).

    Attributes:
        votes_per_item: Votes requested per task.
        price_per_label: Price of one vote.
        currency: Currency of ``price_per_label``.
        rating_min: Lowest rating of the scale.
        rating_max: Highest rating of the scale.
        min_gold_accuracy: Gold accuracy below which a worker was dropped.
    """

    votes_per_item: int
    price_per_label: float
    currency: str
    rating_min: float
    rating_max: float
    min_gold_accuracy: float

    @classmethod
    def from_params(cls, labeling: Mapping[str, Any]) -> "SummarySettings":
        """Read the fields from the ``labeling`` parameter block."""
        return cls(
            votes_per_item=int(labeling["votes_per_item"]), price_per_label=float(labeling["price_per_label"]),
            currency=str(labeling["currency"]), rating_min=float(labeling["rating_min"]),
            rating_max=float(labeling["rating_max"]), min_gold_accuracy=float(labeling["min_gold_accuracy"]),
        )


def summarise_labeling(
    mapping: pd.DataFrame,
    valid: pd.DataFrame,
    quality: pd.DataFrame,
    labels: pd.DataFrame,
    import_report: Mapping[str, Any],
    settings: SummarySettings,
) -> dict[str, Any]:
    """Labels collected vs needed, votes received, agreement, rater quality and cost of one round.

    Args:
        mapping: The private task mapping (``task_id, kind, purpose, policy, ...``; ``kind`` is
            ``item``, ``gold`` or ``duplicate``).
        valid: The valid votes (``task_id, worker_id, rating``), dropped workers included.
        quality: Per worker ``worker_id, gold_accuracy, dropped`` (:func:`worker_quality`).
        labels: The oracle labels (one row per item with ``purpose``, ``policy``, ``n_votes``).
        import_report: What the import saw: ``rows``, ``valid_rows``, ``quarantined_rows``,
            ``reasons`` and the file's fingerprint (:data:`FILE_KEYS`).
        settings: The labeling settings restated in the summary.

    Returns:
        JSON-able (no NaN: undefined figures are ``None``) mapping with

        * ``labels``: items ``needed`` (item tasks) and ``collected`` (labels), both per purpose
          (``calibration``, ``probe``) and per policy for the probes, and the mean votes per label;
        * ``votes``: ``expected`` (every task x ``votes_per_item``), ``received``, ``valid``,
          ``quarantined``, those ``from_dropped_workers`` and the quarantine reasons;
        * ``agreement``: Krippendorff's alpha (interval) of the kept votes overall and per
          policy, before quality control, and the duplicate items' mean absolute difference;
        * ``workers``: how many, which were dropped, the threshold and the mean gold accuracy;
        * ``cost``: ``expected`` (:func:`expected_cost`) and ``received_votes`` (votes received x
          price);
        * ``file``: the received file's fingerprint.
    """
    items = mapping[mapping["kind"] == "item"]
    needed = items.groupby("purpose").size()
    collected = labels.groupby("purpose").size()
    probe_needed = items[items["purpose"] == "probe"].groupby("policy").size()
    probe_collected = labels[labels["purpose"] == "probe"].groupby("policy").size()
    dropped = set(quality.loc[quality["dropped"], "worker_id"])
    kept = valid[~valid["worker_id"].isin(dropped)]
    price, votes = settings.price_per_label, settings.votes_per_item
    return to_plain(
        {
            "labels": {
                "needed": len(items),
                "collected": len(labels),
                "by_purpose": {p: {"needed": n, "collected": collected.get(p, 0)} for p, n in needed.items()},
                "probe_by_policy": {p: {"needed": n, "collected": probe_collected.get(p, 0)} for p, n in probe_needed.items()},
                "mean_votes_per_label": float(labels["n_votes"].mean()) if len(labels) else None,
            },
            "votes": {
                "expected": len(mapping) * votes,
                "received": int(import_report["rows"]),
                "valid": int(import_report["valid_rows"]),
                "quarantined": int(import_report["quarantined_rows"]),
                "from_dropped_workers": len(valid) - len(kept),
                "quarantine_reasons": import_report["reasons"],
            },
            "agreement": {
                "metric": "krippendorff_alpha_interval",
                "overall": krippendorff_alpha(kept, mapping),
                "by_policy": agreement_by_policy(kept, mapping),
                "overall_before_qc": krippendorff_alpha(valid, mapping),
                "duplicate_mean_abs_diff": duplicate_consistency(kept, mapping, settings.rating_min, settings.rating_max),
            },
            "workers": {
                "n": len(quality),
                "dropped": sorted(dropped),
                "min_gold_accuracy": settings.min_gold_accuracy,
                "mean_gold_accuracy": float(quality["gold_accuracy"].mean()) if quality["gold_accuracy"].notna().any() else None,
            },
            "cost": {
                "currency": settings.currency,
                "price_per_label": price,
                "expected": expected_cost(len(mapping), votes, price),
                "received_votes": float(import_report["rows"] * price),
            },
            "file": {k: import_report[k] for k in FILE_KEYS},
        }
    )
