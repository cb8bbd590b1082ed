"""From individual votes to one oracle label per item."""

from __future__ import annotations

import pandas as pd


def aggregate_ratings(
    valid: pd.DataFrame, mapping: pd.DataFrame, rating_min: float, rating_max: float, min_votes: int = 1
) -> pd.DataFrame:
    """Average the votes of each task and map them to the 0-1 oracle scale.

    ``oracle_label = (mean rating - rating_min) / (rating_max - rating_min)``.

    Returns:
        One row per item: ``prompt_id, policy, draw_idx, oracle_label, n_votes, rating_mean,
        rating_median, rating_std``; items with fewer than ``min_votes`` votes are dropped.
    """
    stats = valid.groupby("task_id")["rating"].agg(
        rating_mean="mean", rating_median="median", rating_std="std", n_votes="count"
    )
    stats = stats[stats["n_votes"] >= min_votes].reset_index()
    stats["oracle_label"] = (stats["rating_mean"] - rating_min) / (rating_max - rating_min)
    labels = mapping.merge(stats, on="task_id", how="inner")
    return labels[
        ["prompt_id", "policy", "draw_idx", "oracle_label", "n_votes", "rating_mean", "rating_median", "rating_std"]
    ].reset_index(drop=True)
