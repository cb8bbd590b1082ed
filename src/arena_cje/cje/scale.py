"""Judges on any bounded scale: ``judge.scale: [min, max]`` (0-10, 1-5, 0-100, ...).

The statistical core works on judge scores in [0, 1] (``CJEDataset`` validates that range; the
calibration's reliability bins, the overlap histogram and the plots use it). A judge answering on
[a, b] is mapped affinely, s' = (s - a) / (b - a): a strictly increasing map, so the isotonic and
two-stage calibrations, the out-of-range gate and every estimate on the oracle scale are the same as
with the judge's own units (the calibrator is fitted to the oracle labels, never to the judge's
units); only the ``naive`` row (mean judge score) is reported on the [0, 1] version of the judge scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

UNIT_SCALE = (0.0, 1.0)


def judge_scale(value: Any) -> tuple[float, float]:
    """Validate ``judge.scale`` and return ``(min, max)`` as floats (None -> (0, 1)).

    Raises:
        ValueError: unless ``value`` is two finite numbers with min < max.
    """
    if value is None:
        return UNIT_SCALE
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"judge.scale must be [min, max], got {value!r}")
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"judge.scale must be two numbers [min, max], got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"judge.scale must be finite with min < max, got {value!r}")
    return lo, hi


def to_unit_scale(frame: pd.DataFrame, scale: tuple[float, float], frame_name: str) -> pd.DataFrame:
    """Copy of ``frame`` with ``judge_score`` mapped from ``scale`` to [0, 1] (missing stays missing).

    Raises:
        ValueError: naming the frame, row and field of the first score outside ``scale`` (or not a number).
    """
    lo, hi = judge_scale(scale)
    if (lo, hi) == UNIT_SCALE or "judge_score" not in frame.columns:
        return frame
    raw = frame["judge_score"]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad_type = np.isnan(values) & raw.notna().to_numpy()
    outside = ~np.isnan(values) & ((values < lo) | (values > hi))
    for bad, what in ((bad_type, "not a number"), (outside, f"outside judge.scale [{lo:g}, {hi:g}]")):
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"frame '{frame_name}', row {frame.index.tolist()[r]!r}, field 'judge_score': value "
                             f"{raw.tolist()[r]!r} {what} ({int(bad.sum())} such row(s))")
    out = frame.copy()
    # Missing scores stay missing (None/NaN), never imputed. Rounding to 12 decimals undoes the
    # floating-point residue of the round trip (3.5 / 10 -> 0.35 exactly as written, not 0.35 - 1 ulp),
    # so a judge grid keeps its ties and bin edges whatever the scale.
    out["judge_score"] = np.where(np.isnan(values), np.nan, np.round((values - lo) / (hi - lo), 12))
    return out


def frames_to_unit_scale(logged: pd.DataFrame, fresh: Mapping[str, pd.DataFrame], probes: Mapping[str, pd.DataFrame],
                         scale: tuple[float, float]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """``to_unit_scale`` on the logged frame and every fresh-draw and probe frame (named as in ``CJEDataset``)."""
    return (to_unit_scale(logged, scale, "logged"),
            {p: to_unit_scale(f, scale, f"fresh_draws[{p}]") for p, f in fresh.items()},
            {p: to_unit_scale(f, scale, f"probes[{p}]") for p, f in probes.items()})
