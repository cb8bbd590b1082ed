"""Label-budget planners for the report.

* :func:`plan_budget_table` (the report's ``label_budget`` table): the planner with costs of
  :mod:`arena_cje.cje.planning` fitted to the run: prompts, calibration and probe labels that minimise
  each comparison's half-width within a budget, and the minimum detectable effect.
* :func:`plan_label_budget` / :func:`predicted_half_width` (the first planner, kept for the notebook's
  what-if): oracle labels needed for a target half-width when only the OUA part shrinks with labels;
  it underestimates half-widths with fewer labels (see :mod:`arena_cje.cje.planning`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

BUDGET_COLUMNS = [
    "policy", "estimator", "oracle_n", "half_width_now", "target_half_width", "labels_needed",
    "additional_labels", "note",
]
COMPARISON_COLUMNS = [
    "policy", "estimator", "level_source", "oracle_n_now", "half_width_now", "oracle_n", "half_width_realised",
    "half_width_predicted", "realised_over_predicted",
]


def predicted_half_width(var_if: float, var_oua: float, oracle_n_now: int, oracle_n: int, alpha: float = 0.05) -> float:
    """The planner's half-width with ``oracle_n`` labels: z * sqrt(var_if + var_oua * m0 / m).

    See :func:`plan_label_budget` for the model (only the calibration part shrinks with labels).
    """
    z = float(stats.norm.ppf(1 - alpha / 2))
    return z * math.sqrt(var_if + var_oua * oracle_n_now / oracle_n)


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
        now = predicted_half_width(v_if, v_oua, m0, m0, alpha)
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


def compare_half_widths(now: pd.DataFrame, what_if: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Realised CI half-widths of a re-estimate with other label counts next to the planner's prediction.

    For every calibrated row (``oracle_n`` > 0) that neither estimate refused, the planner's model is
    fitted on ``now`` (its ``var_if``, ``var_oua``, ``oracle_n``) and evaluated at the label count of
    ``what_if``; the realised half-width is (ci_upper - ci_lower) / 2 of ``what_if``.

    Args:
        now: ``EstimationResult.estimates`` of the run.
        what_if: ``EstimationResult.estimates`` of the re-estimate (e.g. with half the labels).
        alpha: 1 - confidence level (the planner's normal quantile).

    Returns:
        One row per (policy, estimator): :data:`COMPARISON_COLUMNS`.
    """
    keys = ["policy", "estimator"]
    usable = lambda d: d[(d["oracle_n"] > 0) & (d["status"] != "refused")]  # noqa: E731
    both = usable(now).merge(usable(what_if), on=keys, suffixes=("_now", "_new"))
    rows = []
    for _, r in both.iterrows():
        if not (np.isfinite(r["var_if_now"]) and np.isfinite(r["var_oua_now"])):
            continue
        m0, m = int(r["oracle_n_now"]), int(r["oracle_n_new"])
        realised = (r["ci_upper_new"] - r["ci_lower_new"]) / 2
        predicted = predicted_half_width(float(r["var_if_now"]), float(r["var_oua_now"]), m0, m, alpha)
        rows.append({
            "policy": r["policy"], "estimator": r["estimator"], "level_source": r.get("level_source_new"),
            "oracle_n_now": m0, "half_width_now": (r["ci_upper_now"] - r["ci_lower_now"]) / 2,
            "oracle_n": m, "half_width_realised": realised, "half_width_predicted": predicted,
            "realised_over_predicted": realised / predicted,
        })
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


PLAN_COLUMNS = [
    "policy", "baseline", "estimator", "comparison", "half_width_now", "budget", "n_prompts", "calibration_labels",
    "probe_labels", "cost", "half_width", "mde", "note",
]


def plan_budget_table(
    estimation_result: Any, speaking: pd.DataFrame, logging_policy: str, report: Mapping[str, Any],
    labeling: Mapping[str, Any],
) -> pd.DataFrame:
    """The planner with costs (:mod:`arena_cje.cje.planning`) fitted to this run, for the report.

    For each policy's speaking estimator: its level and, for a target, its difference from the logging
    policy, at budgets = this run's own cost x ``report.plan_budget_multiples``. Costs:
    ``report.plan_prompt_cost`` per prompt (the API cost of generating, teacher-forcing and judging one prompt under every policy: ``kedro cje-dry-run`` prints
    it) and ``labeling.price_per_label`` x ``labeling.votes_per_item`` per label. Alpha and the label
    floor are the ones the estimates were made with (``estimation_result.config``).

    Args:
        estimation_result: The run's ``EstimationResult`` (the pilot).
        speaking: ``policy``, ``estimator`` of each policy's verdict.
        logging_policy: The baseline of the difference comparisons.
        report: ``report`` parameters (``plan_prompt_cost``, ``plan_budget_multiples``).
        labeling: ``labeling`` parameters (``price_per_label``, ``votes_per_item``).

    Returns:
        One row per (comparison, budget): :data:`PLAN_COLUMNS` (empty with its header when nothing can be planned).
    """
    from arena_cje.cje.planning import Comparison, CostModel, fit_variance_model, minimum_detectable_effect

    empty = pd.DataFrame(columns=PLAN_COLUMNS)
    res = estimation_result
    if res is None or getattr(res, "calibration", None) is None or not getattr(res, "outputs", None) or not len(speaking):
        return empty
    config = res.config
    alpha, logging = config.alpha, logging_policy
    probe_n = [a.n_probe for a in (res.transport or {}).values()]
    probe_size = int(max(probe_n)) if probe_n else 0
    n_run = int(res.estimates["n"].max())
    cm = CostModel(prompt_cost=float(report["plan_prompt_cost"]), label_price=float(labeling["price_per_label"]),
                   votes_per_label=int(labeling["votes_per_item"]), n_probe_policies=len(probe_n))
    run_cost = cm.cost(n_run, res.calibration.n_labelled, probe_size)
    budgets = [run_cost * float(k) for k in report["plan_budget_multiples"]]
    rows = []
    ci = res.estimates.assign(hw=(res.estimates["ci_upper"] - res.estimates["ci_lower"]) / 2)
    diffs = res.differences.assign(hw=(res.differences["ci_upper"] - res.differences["ci_lower"]) / 2) \
        if len(res.differences) else pd.DataFrame(columns=["policy", "baseline", "estimator", "hw"])
    for policy, estimator in speaking[["policy", "estimator"]].drop_duplicates().itertuples(index=False):
        comps = [Comparison(policy)] + ([Comparison(policy, logging)] if policy != logging else [])
        for c in comps:
            if c.baseline is None:
                now = ci[(ci["policy"] == policy) & (ci["estimator"] == estimator)]["hw"]
            else:
                pair = ((diffs["policy"] == policy) & (diffs["baseline"] == logging)) | (
                    (diffs["policy"] == logging) & (diffs["baseline"] == policy))  # stored in either orientation
                now = diffs[pair & (diffs["estimator"] == estimator)]["hw"]
            try:
                model = fit_variance_model(res, comparisons=[c], estimators=[estimator])
                plans = [minimum_detectable_effect(b, cm, model, c, estimator, alpha,
                                                   min_labels=config.gates.min_labels,
                                                   min_probe_labels=probe_size) for b in budgets]
            except (KeyError, ValueError) as exc:
                rows.append({"policy": policy, "baseline": c.baseline, "estimator": estimator, "comparison": c.label,
                             "note": str(exc)})
                continue
            for b, p in zip(budgets, plans, strict=True):
                rows.append({"policy": policy, "baseline": c.baseline, "estimator": estimator, "comparison": c.label,
                             "half_width_now": float(now.iloc[0]) if len(now) else np.nan, "budget": b,
                             "n_prompts": p.n_prompts, "calibration_labels": p.calibration_labels,
                             "probe_labels": p.probe_labels, "cost": p.cost, "half_width": p.half_width, "mde": p.mde,
                             "note": "this run's cost" if b == budgets[0] else ""})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)
