"""A simulated crowd platform: a pool of workers (some careless) answering the exported tasks.

It writes what a platform returns (``task_id, worker_id, rating, submitted_at`` CSV), so the
import, validation and quality control that follow are exactly the ones real files go through.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

RESULT_COLUMNS = ["task_id", "worker_id", "rating", "submitted_at"]

#: ``rate(prompt, response, n_votes, seed) -> n_votes integer votes on 0-10`` (``SimulatedTruth.rate``).
RateFn = Callable[[str, str, int, int], list[int]]


@dataclass(frozen=True)
class CrowdConfig:
    """The simulated worker pool.

    Attributes:
        n_workers: Size of the pool (each task gets ``votes_per_item`` distinct workers).
        noisy_fraction: Share of careless workers: their rating is Binomial(span, honest share), so
            unbiased but noisier (SD up to sqrt(span) / 2 rating points).
        spammer_fraction: Share of workers who answer uniformly at random, ignoring the content.
        duplicate_rate: Chance that a submission is sent twice (a double click on the platform).
    """

    n_workers: int = 20
    noisy_fraction: float = 0.15
    spammer_fraction: float = 0.1
    duplicate_rate: float = 0.01


def worker_ids(n: int, rng: np.random.Generator) -> list[str]:
    """Distinct platform-style worker ids (``A`` + 13 upper-case letters/digits, like MTurk's)."""
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    ids: list[str] = []
    while len(ids) < n:
        candidate = "A" + "".join(rng.choice(alphabet, size=13))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def simulate_platform_ratings(
    tasks: pd.DataFrame,
    mapping: pd.DataFrame,
    rate: RateFn,
    votes_per_item: int,
    rating_min: float,
    rating_max: float,
    config: CrowdConfig,
    seed: int,
) -> pd.DataFrame:
    """Votes of a simulated worker pool on ``tasks``.

    Honest workers pass on the votes of ``rate`` (rescaled from 0-10 to the rating scale); on a
    gold task (off-topic response) they give a rating up to its ``gold_max_rating``. Noisy
    workers add rounded Gaussian noise; spammers answer uniformly on the whole scale. Worker
    activity is uneven (gamma-distributed weights), as on real platforms.

    Args:
        tasks: ``task_id, prompt, response`` (the blinded export).
        mapping: Private mapping (the simulated world knows which tasks are gold checks).
        rate: Simulated raters of the world, see :data:`RateFn`.
        votes_per_item: Votes per task (distinct workers); at most ``config.n_workers``.
        rating_min: Lowest rating of the scale.
        rating_max: Highest rating of the scale.
        config: The worker pool.
        seed: Random seed.

    Returns:
        Columns :data:`RESULT_COLUMNS`, one row per submission (duplicates included); the
        frame's ``attrs["worker_kinds"]`` maps worker id -> ``honest``/``noisy``/``spammer``
        (the simulation's truth, for checking quality control; never written to the file).
    """
    rng = np.random.default_rng(seed)
    votes_per_item = min(int(votes_per_item), int(config.n_workers))
    ids = worker_ids(config.n_workers, rng)
    kinds = rng.permutation(
        ["spammer"] * round(config.spammer_fraction * config.n_workers)
        + ["noisy"] * round(config.noisy_fraction * config.n_workers)
        + ["honest"] * config.n_workers
    )[: config.n_workers]
    activity = rng.gamma(2.0, size=config.n_workers)
    activity /= activity.sum()
    gold_max = mapping.set_index("task_id")["gold_max_rating"] if "gold_max_rating" in mapping.columns else pd.Series(dtype=float)
    span = rating_max - rating_min
    start = pd.Timestamp("2025-01-06T09:00:00Z")
    rows = []
    for task in tasks.itertuples(index=False):
        chosen = rng.choice(config.n_workers, size=votes_per_item, replace=False, p=activity)
        world = rate(task.prompt, task.response, votes_per_item, int(rng.integers(2**31)))
        gold_cap = gold_max.get(task.task_id, np.nan)
        for worker, vote in zip(chosen, world, strict=True):
            rating = rating_min + span * float(vote) / 10.0
            if not np.isnan(gold_cap):
                rating = float(rng.integers(int(rating_min), int(gold_cap) + 1))
            if kinds[worker] == "noisy":
                # mean-preserving and bounded: careless, not biased (biased raters are a real
                # problem too, but one the gold checks are for, like spammers)
                rating = rating_min + float(rng.binomial(int(span), (rating - rating_min) / span))
            elif kinds[worker] == "spammer":
                rating = float(rng.integers(int(rating_min), int(rating_max) + 1))
            rating = int(np.clip(round(rating), rating_min, rating_max))
            submitted = start + pd.Timedelta(seconds=int(len(rows) * 17 + rng.integers(0, 17)))
            row = {"task_id": task.task_id, "worker_id": ids[worker], "rating": rating, "submitted_at": submitted.isoformat()}
            rows.append(row)
            if rng.random() < config.duplicate_rate:
                rows.append(dict(row))
    ratings = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    ratings.attrs["worker_kinds"] = {ids[w]: str(kinds[w]) for w in range(config.n_workers)}
    return ratings


def ratings_csv_bytes(ratings: pd.DataFrame) -> bytes:
    """The platform file: UTF-8 CSV, comma separated, header row."""
    return ratings.to_csv(index=False).encode("utf-8")


#: ``score(prompts, responses) -> one 0-1 score (or None) per pair`` (an LLM judge used as oracle).
ScoreFn = Callable[[list[str], list[str]], list[float | None]]


def llm_oracle_ratings(
    tasks: pd.DataFrame, score: ScoreFn, rating_min: float, rating_max: float, worker_id: str = "llm_oracle"
) -> pd.DataFrame:
    """One rating per task from an LLM used as the oracle (as the CJE paper's GPT-5 oracle).

    ``rating = round(rating_min + s (rating_max - rating_min))`` for the oracle's 0-1 score ``s``.
    A task the oracle could not score keeps an empty rating, so the importer quarantines it with
    its reason instead of it vanishing.

    Returns:
        Columns :data:`RESULT_COLUMNS`, one row per task.
    """
    scores = score(tasks["prompt"].tolist(), tasks["response"].tolist())
    ratings = ["" if s is None else str(int(round(rating_min + s * (rating_max - rating_min)))) for s in scores]
    return pd.DataFrame(
        {"task_id": tasks["task_id"].to_numpy(), "worker_id": worker_id, "rating": ratings, "submitted_at": ""},
        columns=RESULT_COLUMNS,
    )
