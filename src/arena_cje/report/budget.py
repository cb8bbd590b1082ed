"""The budget planner in the report, and the check of its predictions.

* :func:`plan_budget_table` (the report's ``label_budget`` table): the planner with costs of
  :mod:`arena_cje.cje.planning` fitted to the run: prompts, calibration and probe labels that minimise
  each comparison's half-width within a budget, and the minimum detectable effect.
* :func:`compare_half_widths` (the notebook's what-if): a re-estimate's realised half-widths next
  to what the same planner, fitted to the run, predicts for its label counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

COMPARISON_COLUMNS = [
    "policy", "estimator", "level_source", "labels_now", "half_width_now", "labels", "probe_labels",
    "half_width_realised", "half_width_predicted", "realised_over_predicted",
]


def compare_half_widths(pilots: Any | Sequence[Any], what_if: Any, speaking: pd.DataFrame | None = None) -> pd.DataFrame:
    """Realised CI half-widths of a re-estimate with other label counts next to the planner's prediction.

    The planner's variance model (:func:`arena_cje.cje.planning.fit_variance_model`) is fitted to
    ``pilots`` for each policy's level and evaluated at the re-estimate's prompts, calibration labels
    and probe labels (:meth:`~arena_cje.cje.planning.VarianceTerms.half_width`: the mean reported
    half-width, Satterthwaite t included); the realised half-width is (ci_upper - ci_lower) / 2 of
    ``what_if``. Rows either estimate refused, or that have no calibration, are left out.

    Args:
        pilots: The run's ``EstimationResult``, or several (e.g. ``planning.pilot_results``: the same
            data under other fold partitions; their coefficients are averaged).
        what_if: ``EstimationResult`` of the re-estimate (e.g. with half the labels).
        speaking: ``policy``, ``estimator`` rows to compare; default every calibrated row.

    Returns:
        One row per (policy, estimator): :data:`COMPARISON_COLUMNS` (``labels``: calibration labels,
        ``probe_labels``: the policy's probe in the re-estimate, 0 when its level uses none).
    """
    from arena_cje.cje.planning import Comparison, fit_variance_model

    pilots = list(pilots) if isinstance(pilots, (list, tuple)) else [pilots]
    now, alpha = pilots[0], pilots[0].config.alpha
    if what_if.calibration is None or now.calibration is None:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    keys = ["policy", "estimator"]
    usable = lambda d: d[(d["oracle_n"] > 0) & (d["status"] != "refused")]  # noqa: E731
    both = usable(now.estimates).merge(usable(what_if.estimates), on=keys, suffixes=("_now", "_new"))
    if speaking is not None:
        both = both.merge(speaking[keys].drop_duplicates(), on=keys)
    rows = []
    for _, r in both.iterrows():
        c = Comparison(r["policy"])
        try:
            terms = fit_variance_model(pilots, comparisons=[c], estimators=[r["estimator"]]).get(c, r["estimator"])
        except (KeyError, ValueError):
            continue  # no contributions to fit (e.g. a level with no calibrated output)
        audit = (what_if.transport or {}).get(r["policy"])
        p = float(audit.n_probe) if terms.probe_mode != "none" and audit is not None else 0.0
        m = float(what_if.calibration.n_labelled)
        realised = (r["ci_upper_new"] - r["ci_lower_new"]) / 2
        predicted = terms.half_width(float(r["n_new"]), m, p, alpha)
        rows.append({
            "policy": r["policy"], "estimator": r["estimator"], "level_source": r.get("level_source_new"),
            "labels_now": int(now.calibration.n_labelled), "half_width_now": (r["ci_upper_now"] - r["ci_lower_now"]) / 2,
            "labels": int(m), "probe_labels": int(p), "half_width_realised": realised,
            "half_width_predicted": predicted, "realised_over_predicted": realised / predicted,
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
