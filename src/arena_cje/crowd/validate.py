"""Row-level validation of the votes parsed from a labeling platform's result file."""

from __future__ import annotations

import math
import re

import pandas as pd

from arena_cje.crowd.parse import VOTE_COLUMNS

#: Columns of the valid votes.
VALID_COLUMNS = ["source", "row", "task_id", "worker_id", "rating"]
#: Columns of the quarantine file: where the row was, what it said, and why it was rejected.
QUARANTINE_COLUMNS = ["source", "row", "location", "task_id", "worker_id", "rating", "reason"]

# A plain decimal number; a decimal comma is accepted (semicolon-separated European CSVs).
_NUMBER = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?$")
_MISSING = {"", "nan", "none", "null", "n/a", "na"}


def parse_rating(text: object) -> float | None:
    """A rating string -> float, or ``None`` when it is not a finite decimal number.

    ``"7"``, ``" 7.0 "``, ``"7,5"`` parse; ``"nan"``, ``"inf"``, ``"1e999"`` (overflows to
    infinity), ``"seven"``, ``"1_0"`` do not.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    value = str(text).strip()
    if not _NUMBER.match(value):
        return None
    number = float(value.replace(",", "."))
    return number if math.isfinite(number) else None


def validate_ratings(
    raw: pd.DataFrame,
    mapping: pd.DataFrame,
    rating_min: float,
    rating_max: float,
    source: str = "ratings",
    min_votes: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split parsed platform rows into valid votes and quarantined rows with a reason each.

    Checks, in order (a row gets the first reason that applies): the parser's own problem
    (malformed row, file without a task id column, ...); task id missing or not in ``mapping``;
    worker id missing; rating not a finite number; rating outside ``[rating_min, rating_max]``;
    a second vote of the same worker on the same task (the first valid vote is kept); and last,
    the task has fewer than ``min_votes`` valid votes left (its votes are quarantined too).
    Every input row ends up in exactly one of the two outputs.

    Args:
        raw: Rows from :func:`arena_cje.crowd.parse.parse_ratings` (or any frame with
            ``task_id, worker_id, rating``; ``source``/``row``/``location`` are then filled in).
        mapping: Private ``task_id`` mapping from the export.
        rating_min: Lowest allowed rating.
        rating_max: Highest allowed rating.
        source: File name used when ``raw`` has no ``source`` column.
        min_votes: Fewest valid votes a task needs to be kept.

    Returns:
        ``(valid, quarantined)`` with columns :data:`VALID_COLUMNS` / :data:`QUARANTINE_COLUMNS`.
    """
    frame = raw.reset_index(drop=True).copy()
    for column in VOTE_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    if "row" not in frame.columns:
        frame["row"] = range(1, len(frame) + 1)
    if "source" not in frame.columns:
        frame["source"] = source
    if "location" not in frame.columns:
        frame["location"] = [f"row {r}" for r in frame["row"]]
    if "problem" not in frame.columns:
        frame["problem"] = None
    if not set(VOTE_COLUMNS) <= set(raw.columns) and "problem" not in raw.columns:
        lacking = [c for c in VOTE_COLUMNS if c not in raw.columns]
        frame["problem"] = f"file lacks column(s) {lacking}"

    task = frame["task_id"].map(_clean)
    worker = frame["worker_id"].map(_clean)
    rating = frame["rating"].map(parse_rating).astype(float)
    known = set(mapping["task_id"].astype(str))

    reason = pd.Series([p if isinstance(p, str) and p else None for p in frame["problem"]], index=frame.index, dtype=object)
    checks = [
        (task.isna(), "missing task_id"),
        (~task.isin(known), "unknown task_id"),
        (worker.isna(), "missing worker_id"),
        (rating.isna(), "rating is not a number"),
        ((rating < rating_min) | (rating > rating_max), f"rating outside [{rating_min:g}, {rating_max:g}]"),
    ]
    for failed, why in checks:
        reason = reason.mask(reason.isna() & failed.fillna(False).astype(bool), why)

    ok = reason.isna()
    keys = pd.DataFrame({"t": task, "w": worker})[ok]
    first_row = frame.loc[keys.index, "row"].groupby([keys["t"], keys["w"]]).transform("first")
    duplicate = keys.duplicated(keep="first")
    for index in duplicate[duplicate].index:
        reason[index] = f"duplicate vote by the same worker (first vote at row {first_row[index]} kept)"

    ok = reason.isna()
    counts = task[ok].map(task[ok].value_counts())
    too_few = counts[counts < min_votes]
    for index, count in too_few.items():
        reason[index] = f"too few votes: task has {count} valid vote(s), min_votes={min_votes}"

    bad = reason.notna()
    valid = pd.DataFrame(
        {
            "source": frame["source"][~bad],
            "row": frame["row"][~bad],
            "task_id": task[~bad],
            "worker_id": worker[~bad],
            "rating": rating[~bad],
        }
    )
    quarantined = frame.loc[bad, ["source", "row", "location", *VOTE_COLUMNS]].assign(reason=reason[bad].astype(str))
    return valid[VALID_COLUMNS].reset_index(drop=True), quarantined[QUARANTINE_COLUMNS].reset_index(drop=True)


def _clean(value: object) -> str | None:
    """Stripped id string, ``None`` when blank or a usual 'missing' token."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if text.lower() in _MISSING else text
