"""From individual votes to one oracle label per item, rater agreement and rater quality."""

from __future__ import annotations

import krippendorff
import numpy as np
import pandas as pd

from arena_cje.crowd.export import ITEM_KEY

LABEL_COLUMNS = [
    *ITEM_KEY, "oracle_label", "n_votes", "oracle_median", "oracle_std",
    "rating_mean", "rating_median", "rating_std", "inclusion_prob", "purpose",
]
WORKER_COLUMNS = ["worker_id", "n_votes", "n_gold", "n_gold_passed", "gold_accuracy", "dropped"]


def aggregate_ratings(
    valid: pd.DataFrame, mapping: pd.DataFrame, rating_min: float, rating_max: float, min_votes: int = 1
) -> pd.DataFrame:
    """Summarise the votes of each item and map them to the 0-1 oracle scale.

    Votes of an item's duplicate task count for the item; gold tasks are not items and are left
    out. With ``r = rating_max - rating_min``: ``oracle_label = (mean - rating_min) / r``,
    ``oracle_median = (median - rating_min) / r``, ``oracle_std = std / r`` (sample std, ddof=1,
    NaN for a single vote).

    Returns:
        One row per item with at least ``min_votes`` votes, columns :data:`LABEL_COLUMNS`.
    """
    span = float(rating_max - rating_min)
    votes = valid[["task_id", "rating"]].merge(mapping, on="task_id", how="inner")
    votes = votes[votes["kind"] != "gold"] if "kind" in votes.columns else votes
    if "inclusion_prob" not in votes.columns:
        votes = votes.assign(inclusion_prob=np.nan)
    if "purpose" not in votes.columns:
        votes = votes.assign(purpose="calibration")
    stats = votes.groupby(ITEM_KEY, dropna=False).agg(
        rating_mean=("rating", "mean"),
        rating_median=("rating", "median"),
        rating_std=("rating", "std"),
        n_votes=("rating", "count"),
        inclusion_prob=("inclusion_prob", "first"),
        purpose=("purpose", "first"),
    )
    stats = stats[stats["n_votes"] >= min_votes].reset_index()
    stats["oracle_label"] = (stats["rating_mean"] - rating_min) / span
    stats["oracle_median"] = (stats["rating_median"] - rating_min) / span
    stats["oracle_std"] = stats["rating_std"] / span
    return stats[LABEL_COLUMNS].sort_values(ITEM_KEY).reset_index(drop=True)


def krippendorff_alpha(valid: pd.DataFrame, mapping: pd.DataFrame | None = None) -> float | None:
    """Krippendorff's alpha, interval metric, over tasks (units) x workers (coders).

    ``alpha = 1 - D_o / D_e`` with squared-difference disagreement, computed by the
    ``krippendorff`` package. Gold tasks (``kind == "gold"`` in ``mapping``) are left out:
    their answer is fixed by construction and would inflate agreement.

    Returns:
        Alpha, or ``None`` when it is undefined (no task with two votes, or no variation).
    """
    votes = valid
    if mapping is not None and "kind" in mapping.columns:
        gold = set(mapping.loc[mapping["kind"] == "gold", "task_id"])
        votes = votes[~votes["task_id"].isin(gold)]
    if votes.empty:
        return None
    table = votes.pivot_table(index="worker_id", columns="task_id", values="rating", aggfunc="first")
    if (table.notna().sum(axis=0) >= 2).sum() == 0 or np.nanstd(table.to_numpy()) == 0:
        return None
    try:
        alpha = krippendorff.alpha(reliability_data=table.to_numpy(dtype=float), level_of_measurement="interval")
    except (ValueError, ZeroDivisionError):
        return None
    return float(alpha) if np.isfinite(alpha) else None


def agreement_by_policy(valid: pd.DataFrame, mapping: pd.DataFrame) -> dict[str, float | None]:
    """Krippendorff's alpha (interval) of the non-gold tasks of each policy."""
    votes = valid.merge(mapping[["task_id", "policy", "kind"]], on="task_id")
    votes = votes[votes["kind"] != "gold"]
    return {str(policy): krippendorff_alpha(group) for policy, group in votes.groupby("policy", sort=True)}


def worker_quality(
    valid: pd.DataFrame, mapping: pd.DataFrame, min_gold_accuracy: float, min_gold_answers: int
) -> pd.DataFrame:
    """Gold accuracy per worker and whether the worker is dropped.

    ``gold_accuracy = passed gold tasks / answered gold tasks`` where a gold task is passed when
    the rating is at most its ``gold_max_rating``. A worker is dropped when
    ``gold_accuracy < min_gold_accuracy`` and they answered at least ``min_gold_answers`` gold tasks
    (fewer answers are too little evidence to judge them).

    Returns:
        Columns :data:`WORKER_COLUMNS`, one row per worker.
    """
    votes = valid.merge(mapping[["task_id", "kind", "gold_max_rating"]], on="task_id", how="left")
    is_gold = votes["kind"] == "gold"
    votes = votes.assign(is_gold=is_gold, passed=is_gold & (votes["rating"] <= votes["gold_max_rating"]))
    table = votes.groupby("worker_id").agg(
        n_votes=("rating", "count"), n_gold=("is_gold", "sum"), n_gold_passed=("passed", "sum")
    )
    table["gold_accuracy"] = (table["n_gold_passed"] / table["n_gold"]).where(table["n_gold"] > 0)
    table["dropped"] = (table["n_gold"] >= min_gold_answers) & (table["gold_accuracy"] < min_gold_accuracy)
    return table.reset_index()[WORKER_COLUMNS].astype({"n_gold": int, "n_gold_passed": int, "dropped": bool})


def duplicate_consistency(valid: pd.DataFrame, mapping: pd.DataFrame, rating_min: float, rating_max: float) -> float | None:
    """Mean absolute difference (0-1 scale) between the mean ratings of an item's two copies.

    ``mean_i |mean(original_i) - mean(duplicate_i)| / (rating_max - rating_min)``; ``None``
    without duplicated items that got votes on both copies.
    """
    votes = valid.merge(mapping[["task_id", *ITEM_KEY, "kind"]], on="task_id")
    votes = votes[votes["kind"].isin(["item", "duplicate"])]
    means = votes.groupby([*ITEM_KEY, "kind"])["rating"].mean().unstack("kind")
    if "duplicate" not in means.columns or "item" not in means.columns:
        return None
    diff = (means["item"] - means["duplicate"]).abs().dropna()
    return float(diff.mean() / (rating_max - rating_min)) if len(diff) else None
