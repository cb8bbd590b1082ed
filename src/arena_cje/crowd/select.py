"""Which responses people rate: random or judge-score-stratified samples with inclusion probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd


def stratified_sample(
    frame: pd.DataFrame, n: int, seed: int, score: str = "judge_score", n_strata: int = 0
) -> pd.DataFrame:
    """Draw ``n`` rows without replacement, optionally stratified by quantile bins of ``score``.

    With ``n_strata <= 1`` this is a simple random sample: every row has inclusion probability
    ``pi = n / N``. With ``n_strata = H > 1`` the rows are cut into ``H`` equal-frequency bins of
    ``score`` (rows with a missing score form one extra stratum) and ``n`` is allocated equally
    across strata (``n_h = n / H``, capped at the stratum size ``N_h``, left-overs given to the
    strata that still have rows). A row of stratum ``h`` is then included with probability
    ``pi_h = n_h / N_h``, so the Horvitz-Thompson mean ``sum(y_i / pi_i) / N`` over the sample is
    unbiased for the mean over ``frame`` (see :func:`horvitz_thompson_mean`).

    Args:
        frame: Candidate rows.
        n: Sample size (all rows when ``n >= len(frame)``).
        seed: Random seed.
        score: Column the strata are built from.
        n_strata: Number of score bins (0 or 1: simple random sampling).

    Returns:
        The sampled rows with added columns ``stratum`` (int, -1 for missing score) and
        ``inclusion_prob``.
    """
    rng = np.random.default_rng(seed)
    total = len(frame)
    n = max(0, min(int(n), total))
    frame = frame.reset_index(drop=True)
    if n_strata is None or n_strata <= 1 or score not in frame.columns:
        strata = pd.Series(0, index=frame.index)
    else:
        values = pd.to_numeric(frame[score], errors="coerce")
        ranks = values.rank(method="first")
        # Equal-frequency bins on ranks (ties broken by order), missing scores in stratum -1.
        strata = np.floor((ranks - 1) / values.notna().sum() * n_strata).fillna(-1).astype(int)
    sizes = strata.value_counts().sort_index()
    allocation = _allocate(n, sizes)
    picked = []
    for h, n_h in allocation.items():
        members = strata.index[strata == h].to_numpy()
        chosen = rng.choice(members, size=n_h, replace=False) if n_h else np.array([], dtype=int)
        picked.append(frame.loc[chosen].assign(stratum=int(h), inclusion_prob=n_h / sizes[h]))
    if not picked:
        return frame.iloc[:0].assign(stratum=pd.Series(dtype=int), inclusion_prob=pd.Series(dtype=float))
    sample = pd.concat(picked)
    return sample.loc[sorted(sample.index)].reset_index(drop=True)


def _allocate(n: int, sizes: pd.Series) -> dict[int, int]:
    """Equal allocation of ``n`` over strata, capped by stratum sizes (left-overs re-spread)."""
    allocation = {h: 0 for h in sizes.index}
    remaining = n
    open_strata = [h for h in sizes.index if sizes[h] > 0]
    while remaining > 0 and open_strata:
        share, extra = divmod(remaining, len(open_strata))
        for i, h in enumerate(open_strata):
            allocation[h] += share + (1 if i < extra else 0)
        overflow = sum(max(0, allocation[h] - sizes[h]) for h in open_strata)
        for h in open_strata:
            allocation[h] = min(allocation[h], int(sizes[h]))
        remaining = overflow
        open_strata = [h for h in open_strata if allocation[h] < sizes[h]]
    return allocation


def horvitz_thompson_mean(values: pd.Series | np.ndarray, inclusion_prob: pd.Series | np.ndarray, population: int) -> float:
    """Horvitz-Thompson estimate of a population mean: ``sum(y_i / pi_i) / N``."""
    y = np.asarray(values, dtype=float)
    pi = np.asarray(inclusion_prob, dtype=float)
    return float(np.sum(y / pi) / population)
