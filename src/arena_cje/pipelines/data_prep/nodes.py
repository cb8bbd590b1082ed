"""Prompt sampling and the calibration / evaluation split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from arena_cje.experiment import stable_seed

PROMPT_SOURCES = ("simulated",)


def build_prompt_pool(prompts: dict[str, Any]) -> pd.DataFrame:
    """Build the seeded pool of ``pool_size`` candidate prompts.

    The pool order is itself a seeded shuffle, so any prefix of it is a uniform random sample
    and growing ``output_samples`` keeps the earlier prompts.

    Args:
        prompts: ``prompts`` parameters (``source``, ``pool_size``, ``seed``).

    Returns:
        Columns ``prompt_id``, ``prompt``, ``pool_rank``.
    """
    source = prompts.get("source", "simulated")
    if source == "simulated":
        from arena_cje.backends.simulated import synthetic_prompts

        pool = synthetic_prompts(int(prompts["pool_size"]), seed=int(prompts["seed"]))
    else:
        raise ValueError(f"prompts.source: unknown source {source!r}; choose one of {PROMPT_SOURCES}")
    order = np.random.default_rng(int(prompts["seed"])).permutation(len(pool))
    pool = pool.iloc[order].reset_index(drop=True)
    pool["pool_rank"] = np.arange(len(pool))
    return pool[["prompt_id", "prompt", "pool_rank"]]


def select_run_prompts(prompt_pool: pd.DataFrame, prompts: dict[str, Any]) -> pd.DataFrame:
    """Take the first ``output_samples`` prompts of the pool.

    Raises:
        ValueError: the pool is smaller than ``output_samples``.
    """
    n = int(prompts["output_samples"])
    if n > len(prompt_pool):
        raise ValueError(f"prompts.output_samples={n} exceeds the pool of {len(prompt_pool)} prompts (prompts.pool_size)")
    return prompt_pool.iloc[:n].reset_index(drop=True)


def split_prompts(run_prompts: pd.DataFrame, split: dict[str, Any]) -> pd.DataFrame:
    """Assign each prompt to the ``calibration`` or ``evaluation`` split.

    The assignment hashes ``(seed, prompt_id)``, so a prompt keeps its split when the run grows.
    Calibration prompts are the ones whose logged (pi_0) response gets human labels.

    Returns:
        ``run_prompts`` with a ``split`` column.
    """
    fraction = float(split["calibration_fraction"])
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"split.calibration_fraction must be in (0, 1], got {fraction}")
    seed = split["seed"]
    u = np.array([stable_seed(seed, pid) / 2**31 for pid in run_prompts["prompt_id"]])
    out = run_prompts.copy()
    out["split"] = np.where(u < fraction, "calibration", "evaluation")
    return out
