"""Stable fold assignment by prompt.

Folds come from ``zlib.crc32`` of the UTF-8 ``prompt_id`` modulo K, so a prompt lands in the same
fold in every process and every run (Python's ``hash()`` is salted per process), and every row of a
prompt (logged response, fresh draws, probe) shares one fold: cross-fitting is by cluster.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd


def prompt_hashes(prompt_ids: Iterable[str]) -> np.ndarray:
    """crc32 of the UTF-8 ``prompt_id`` of every row (int64): compute once, then ``% n_folds`` for any K."""
    # One C call per row (about 0.25 s per million ids); pd.factorize to hash distinct ids only
    # costs more than hashing every row.
    if isinstance(prompt_ids, (pd.Series, pd.Index)):
        prompt_ids = prompt_ids.to_numpy(dtype=object)  # iterating an Arrow-backed column is ~20x slower
    crc = [zlib.crc32((p if p.__class__ is str else str(p)).encode("utf-8")) for p in prompt_ids]
    return np.asarray(crc, dtype=np.int64)


def fold_of(prompt_ids: Iterable[str], n_folds: int) -> np.ndarray:
    """Fold index in ``0..n_folds-1`` of each prompt: ``crc32(prompt_id) mod n_folds``."""
    return prompt_hashes(prompt_ids) % n_folds
