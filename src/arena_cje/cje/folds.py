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


def fold_of(prompt_ids: Iterable[str], n_folds: int) -> np.ndarray:
    """Fold index in ``0..n_folds-1`` of each prompt: ``crc32(prompt_id) mod n_folds``."""
    ids = prompt_ids if isinstance(prompt_ids, (np.ndarray, pd.Series, pd.Index)) else list(prompt_ids)
    values = np.asarray(ids, dtype=object)
    codes, uniques = pd.factorize(values)  # hash each distinct prompt once
    if (codes < 0).any():  # null ids (pandas drops them from the uniques): hash str(id) row by row
        codes, uniques = np.arange(len(values)), values
    crc = np.fromiter((zlib.crc32(str(p).encode("utf-8")) for p in uniques), dtype=np.int64, count=len(uniques))
    return (crc % n_folds)[codes].astype(np.int64)
