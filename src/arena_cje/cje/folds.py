"""Stable fold assignment by prompt.

Folds come from ``zlib.crc32`` of the UTF-8 ``prompt_id`` modulo K, so a prompt lands in the same
fold in every process and every run (Python's ``hash()`` is salted per process), and every row of a
prompt (logged response, fresh draws, probe) shares one fold: cross-fitting is by cluster.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np


def fold_of(prompt_ids: Iterable[str], n_folds: int) -> np.ndarray:
    """Fold index in ``0..n_folds-1`` of each prompt: ``crc32(prompt_id) mod n_folds``."""
    cache: dict[str, int] = {}
    out = []
    for p in prompt_ids:
        k = cache.get(p)
        if k is None:
            k = zlib.crc32(str(p).encode("utf-8")) % n_folds
            cache[p] = k
        out.append(k)
    return np.asarray(out, dtype=np.int64)
