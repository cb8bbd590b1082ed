"""Blinded labeling tasks: raters see a prompt and a response, nothing about who wrote it."""

from __future__ import annotations

import numpy as np
import pandas as pd

ITEM_KEY = ["prompt_id", "policy", "draw_idx"]


def make_label_tasks(items: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give each item an opaque task id and shuffle the order.

    Args:
        items: One row per item to label: ``prompt_id, policy, draw_idx, prompt, response``.
        seed: Seed of the shuffle and of the task ids.

    Returns:
        ``(tasks, mapping)``: ``tasks`` has ``task_id, prompt, response`` only (safe to send out);
        ``mapping`` has ``task_id`` plus the item key and must stay private.
    """
    missing = [c for c in [*ITEM_KEY, "prompt", "response"] if c not in items.columns]
    if missing:
        raise ValueError(f"label items: missing column(s) {missing}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    shuffled = items.iloc[order].reset_index(drop=True)
    # Random ids, not hashes of the item key: a hash of a known prompt id would reveal it.
    ids = {f"t{v:012x}" for v in rng.integers(0, 2**48, size=len(items) * 2)}
    task_ids = sorted(ids)[: len(items)]
    rng.shuffle(task_ids)
    shuffled.insert(0, "task_id", task_ids)
    return shuffled[["task_id", "prompt", "response"]], shuffled[["task_id", *ITEM_KEY]]
