"""Seeded, growth-stable ordering of a prompt table."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def seeded_rank_key(prompt_ids: pd.Series | list[str], seed: int) -> np.ndarray:
    """A pseudo-random sort key per prompt that depends only on ``(seed, prompt_id)``.

    ``key = first 8 bytes of sha256(f"{seed}:{prompt_id}")`` read as an unsigned 64-bit integer.
    Sorting by it is a uniform random permutation (for a fixed seed), and a prompt's key does not
    depend on which other prompts are present.
    """
    return np.array(
        [int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:8], "big") for pid in prompt_ids],
        dtype=np.uint64,
    )


def sample_pool(prompts: pd.DataFrame, pool_size: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``pool_size`` prompts, in sample order, with ``pool_rank`` 0, 1, ...

    Prompts are sorted by :func:`seeded_rank_key` (ties, probability ~n^2/2^65, broken by
    ``prompt_id``) and the first ``pool_size`` are kept. Hence:

    * every prefix of the pool is a uniform random sample of the eligible prompts;
    * a larger ``pool_size`` (or ``output_samples``) keeps the earlier prompts in the same order;
    * adding rows to the source (a newer export) only inserts the new prompts among the old
      ones; the old ones keep their relative order.

    Args:
        prompts: Table with a unique ``prompt_id`` column.
        pool_size: Number of prompts to keep; if fewer are available all are kept (and a warning
            is logged).
        seed: Sampling seed.

    Returns:
        ``prompts`` rows in sample order with a ``pool_rank`` column.
    """
    if not prompts["prompt_id"].is_unique:
        raise ValueError("sample_pool: prompt_id values must be unique")
    if pool_size > len(prompts):
        log.warning("prompts.pool_size=%d but only %d prompts pass the filters; the pool keeps all of them",
                    pool_size, len(prompts))
    keyed = prompts.assign(_key=seeded_rank_key(prompts["prompt_id"], seed))
    pool = keyed.sort_values(["_key", "prompt_id"], kind="stable").head(pool_size).drop(columns="_key")
    pool = pool.reset_index(drop=True)
    pool["pool_rank"] = np.arange(len(pool))
    return pool
