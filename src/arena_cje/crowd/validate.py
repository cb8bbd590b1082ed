"""Row-level validation of rating files returned by a labeling platform."""

from __future__ import annotations

import pandas as pd

RATING_COLUMNS = ["task_id", "worker_id", "rating"]


def validate_ratings(
    raw: pd.DataFrame, mapping: pd.DataFrame, rating_min: float, rating_max: float, source: str = "ratings"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split platform rows into valid votes and quarantined rows with a reason each.

    A row is rejected when its task id is unknown, its worker id is missing, its rating is not a
    number or is outside ``[rating_min, rating_max]``, or it repeats a vote by the same worker on
    the same task (the first vote is kept).

    Args:
        raw: Platform rows with at least ``task_id, worker_id, rating``.
        mapping: Private ``task_id`` mapping from :func:`make_label_tasks`.
        rating_min: Lowest allowed rating.
        rating_max: Highest allowed rating.
        source: File name used in messages.

    Returns:
        ``(valid, quarantined)``; ``quarantined`` adds ``source, row, reason`` (``row`` is the
        1-based data row of the file).

    Raises:
        ValueError: required columns are missing (names them and the file).
    """
    missing = [c for c in RATING_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; found {list(raw.columns)}")
    frame = raw[RATING_COLUMNS].copy()
    frame["row"] = range(1, len(frame) + 1)
    rating = pd.to_numeric(frame["rating"], errors="coerce")
    task = frame["task_id"].astype("string").str.strip()
    worker = frame["worker_id"].astype("string").str.strip()
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    checks = [
        (~task.isin(set(mapping["task_id"])), "unknown task_id"),
        (worker.isna() | (worker == ""), "missing worker_id"),
        (rating.isna(), "rating is not a number"),
        ((rating < rating_min) | (rating > rating_max), f"rating outside [{rating_min}, {rating_max}]"),
    ]
    for failed, why in checks:
        reason = reason.mask(reason.isna() & failed.fillna(False), why)
    duplicate = pd.DataFrame({"t": task, "w": worker}).duplicated(keep="first") & reason.isna()
    reason = reason.mask(duplicate, "duplicate vote by the same worker")
    bad = reason.notna()
    valid = pd.DataFrame({"task_id": task[~bad], "worker_id": worker[~bad], "rating": rating[~bad].astype(float)})
    quarantined = frame[bad].assign(source=source, reason=reason[bad].astype(str))
    return valid.reset_index(drop=True), quarantined[["source", "row", *RATING_COLUMNS, "reason"]].reset_index(drop=True)
