"""Label-budget planner: oracle labels needed for a target confidence-interval half-width."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

BUDGET_COLUMNS = [
    "policy", "estimator", "oracle_n", "half_width_now", "target_half_width", "labels_needed",
    "additional_labels", "note",
]


def plan_label_budget(
    estimates: pd.DataFrame,
    target_half_widths: Sequence[float] = (0.03, 0.02, 0.01),
    alpha: float = 0.05,
    estimators: Sequence[str] | None = None,
) -> pd.DataFrame:
    """How many oracle labels each calibrated estimate needs for a target CI half-width.

    The estimate's variance splits into the evaluation-sample part and the calibration (oracle
    uncertainty, OUA) part: ``Var = var_if + var_oua``. With the prompts fixed, ``var_if`` stays and
    ``var_oua`` shrinks like ``1/m`` in the number of oracle labels ``m`` (it is the delete-one-fold
    jackknife variance of a calibrator fitted on ``m`` labels), so with ``m0`` labels now

        Var(m) ~= var_if + var_oua * m0 / m,   half-width(m) ~= z * sqrt(Var(m)),  z = Phi^-1(1 - alpha/2).

    Solving half-width(m) = h gives ``m* = m0 * var_oua / ((h/z)^2 - var_if)`` when
    ``(h/z)^2 > var_if``; otherwise labels alone cannot reach h (more prompts are needed: the
    floor is ``z * sqrt(var_if)``). The normal z slightly understates the t interval reported for
    few labels; treat the result as a planning figure, then refit.

    Args:
        estimates: ``EstimationResult.estimates`` (needs ``var_if``, ``var_oua``, ``oracle_n``).
        target_half_widths: Half-widths to plan for.
        alpha: 1 - confidence level.
        estimators: Rows to plan for; default every calibrated (``oracle_n`` > 0), not refused row.

    Returns:
        One row per (policy, estimator, target): :data:`BUDGET_COLUMNS`.
    """
    z = float(stats.norm.ppf(1 - alpha / 2))
    rows = []
    need = {"var_if", "var_oua", "oracle_n"}
    if estimates is None or not need <= set(estimates.columns):
        return pd.DataFrame(columns=BUDGET_COLUMNS)
    sel = estimates[(estimates["oracle_n"] > 0) & (estimates["status"] != "refused")]
    if estimators is not None:
        sel = sel[sel["estimator"].isin(list(estimators))]
    for _, r in sel.iterrows():
        m0, v_if, v_oua = int(r["oracle_n"]), float(r["var_if"]), float(r["var_oua"])
        if not (np.isfinite(v_if) and np.isfinite(v_oua)):
            continue
        now = z * math.sqrt(v_if + v_oua)
        for h in target_half_widths:
            room = (h / z) ** 2 - v_if
            if now <= h:
                m_star, note = m0, "already reached"
            elif room <= 0:
                m_star, note = None, f"not reachable with labels: prompt-sampling floor {z * math.sqrt(v_if):.3f}; add prompts"
            else:
                m_star, note = math.ceil(m0 * v_oua / room), ""
            rows.append({
                "policy": r["policy"], "estimator": r["estimator"], "oracle_n": m0, "half_width_now": now,
                "target_half_width": h, "labels_needed": m_star,
                "additional_labels": None if m_star is None else max(0, m_star - m0), "note": note,
            })
    return pd.DataFrame(rows, columns=BUDGET_COLUMNS)
