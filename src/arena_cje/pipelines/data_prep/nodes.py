"""Prompt sourcing and filtering, the seeded pool, the run's prompts and their split."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from arena_cje.prompts import PromptFilterConfig, extract_arena_prompts, sample_pool, seeded_rank_key

log = logging.getLogger(__name__)

PROMPT_SOURCES = ("simulated", "arena_local", "arena_hf")
ARENA_SOURCES = ("arena_local", "arena_hf")


def extract_source_prompts(
    arena_conversations: Mapping[str, Callable[[], pd.DataFrame]] | None,
    prompts: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load the configured prompt source and apply the prompt filters.

    Args:
        arena_conversations: Source name -> loader (the lazy ``arena_conversations`` dataset);
            only the loader named by ``prompts.source`` is called.
        prompts: ``prompts`` parameters (``source``, ``pool_size``, ``seed``, and for Arena
            sources ``languages``, ``min_chars``, ``max_chars``, ``drop_flagged``).

    Returns:
        The eligible prompts (``prompt_id``, ``prompt`` and, for Arena sources, the source metadata
        ``question_id``, ``model_a``, ``model_b``, ``winner``, ``tstamp``, ``language``) and a
        report ``{source, input_rows, steps: [{name, rule, removed, remaining}], eligible}``.
    """
    source = _source(prompts)
    if source == "simulated":
        from arena_cje.backends.simulated import synthetic_prompts

        eligible = synthetic_prompts(int(prompts["pool_size"]), seed=int(prompts["seed"]))
        report = {"source": source, "input_rows": len(eligible), "steps": [], "eligible": len(eligible)}
        return eligible, report
    if not arena_conversations or source not in arena_conversations:
        raise ValueError(f"prompts.source={source}: the arena_conversations dataset has no {source!r} loader")
    raw = arena_conversations[source]()
    eligible, steps = extract_arena_prompts(raw, PromptFilterConfig.from_params(prompts))
    report = {
        "source": source,
        "input_rows": len(raw),
        "steps": [step.as_dict() for step in steps],
        "eligible": len(eligible),
    }
    log.info("prompts.source=%s: %d conversations -> %d eligible prompts", source, len(raw), len(eligible))
    return eligible, report


def build_prompt_pool(prompts: dict[str, Any], source_prompts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Build the seeded pool of ``pool_size`` candidate prompts.

    The pool order is itself seeded, so any prefix of it is a uniform random sample and growing
    ``output_samples`` (or ``pool_size``) keeps the earlier prompts. Simulated prompts are ordered
    by a seeded permutation; Arena prompts by a per-prompt seeded hash of ``prompt_id``
    (:func:`arena_cje.prompts.sample_pool`), so a newer export keeps the old prompts' order.

    Args:
        prompts: ``prompts`` parameters (``source``, ``pool_size``, ``seed``).
        source_prompts: Output of :func:`extract_source_prompts`; built here (simulated only) if omitted.

    Returns:
        Columns ``prompt_id``, ``prompt``, ``pool_rank`` (then the source metadata, if any).
    """
    source = _source(prompts)
    if source_prompts is None:
        if source != "simulated":
            raise ValueError(f"prompts.source={source}: pass the filtered source prompts")
        source_prompts, _ = extract_source_prompts(None, prompts)
    seed = int(prompts["seed"])
    if source == "simulated":
        order = np.random.default_rng(seed).permutation(len(source_prompts))
        pool = source_prompts.iloc[order].reset_index(drop=True)
        pool["pool_rank"] = np.arange(len(pool))
        return pool[["prompt_id", "prompt", "pool_rank"]]
    pool = sample_pool(source_prompts, int(prompts["pool_size"]), seed)
    first = ["prompt_id", "prompt", "pool_rank"]
    return pool[first + [c for c in pool.columns if c not in first]]


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

    A prompt is ``calibration`` iff ``u < calibration_fraction`` with
    ``u = (seeded_rank_key(prompt_id, seed) >> 11) / 2**53`` (sha256-based, uniform on [0, 1)), so a prompt
    keeps its split when the run grows. (CRC32, used before, is linear: on similar ids like
    ``sim-00001`` its shares drifted several standard errors from the fraction.)
    Calibration prompts are the ones whose logged (pi_0) response gets human labels.

    Returns:
        ``run_prompts`` with a ``split`` column.
    """
    fraction = float(split["calibration_fraction"])
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"split.calibration_fraction must be in (0, 1], got {fraction}")
    seed = split["seed"]
    # Top 53 bits: exactly representable, so u < 1 and a fraction of 1.0 keeps every prompt.
    u = (seeded_rank_key(run_prompts["prompt_id"], seed) >> np.uint64(11)).astype(np.float64) / 2.0**53
    out = run_prompts.copy()
    out["split"] = np.where(u < fraction, "calibration", "evaluation")
    return out


def _source(prompts: Mapping[str, Any]) -> str:
    source = prompts.get("source", "simulated")
    if source not in PROMPT_SOURCES:
        raise ValueError(f"prompts.source: unknown source {source!r}; choose one of {PROMPT_SOURCES}")
    return source
