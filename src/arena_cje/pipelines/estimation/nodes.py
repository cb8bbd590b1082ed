"""Estimation: thin adapters over :mod:`arena_cje.cje`, tables for people and the results file
(plots and the report: the ``reporting`` pipeline)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies
from arena_cje.cje.api import ESTIMATE_COLUMNS
from arena_cje.cje.scale import frames_to_unit_scale, judge_scale
from arena_cje.cje.audit import with_inclusion_probs
from arena_cje.provenance import data_fingerprint, partitions_fingerprint, results_record

#: Columns of the ``estimates`` table people read: the core's ``ESTIMATE_COLUMNS`` with the true value
#: (where the backend knows it) after ``oracle_n``, and where the level came from (``level_source``) last.
ESTIMATE_TABLE_COLUMNS = [*ESTIMATE_COLUMNS[:ESTIMATE_COLUMNS.index("oracle_n") + 1], "truth",
                          *ESTIMATE_COLUMNS[ESTIMATE_COLUMNS.index("oracle_n") + 1:], "level_source"]


def estimate_policy_values(
    cje_logged_data: pd.DataFrame,
    cje_fresh_draws: Mapping[str, Callable[[], pd.DataFrame] | pd.DataFrame],
    cje_probe_slices: Mapping[str, Callable[[], pd.DataFrame] | pd.DataFrame],
    estimation: dict[str, Any],
    judge: dict[str, Any] | None = None,
):
    """Run every configured estimator on the CJE dataset.

    Args:
        cje_logged_data: Logged rows in the reference layout.
        cje_fresh_draws: Policy -> fresh draws (Kedro partitions, loaded lazily).
        cje_probe_slices: Policy -> oracle-labelled probe of its responses (may be empty).
        estimation: ``estimation`` parameters.
        judge: ``judge`` parameters; ``judge.scale: [min, max]`` (default [0, 1]) is the scale the
            judge scores are on; they are mapped to [0, 1] first (:mod:`arena_cje.cje.scale`).

    Returns:
        The :class:`arena_cje.cje.EstimationResult` (estimates, differences, diagnostics).

    Raises:
        arena_cje.cje.CJEDataError: an input that cannot be used (file, line, field and why).
    """
    config = EstimationConfig.from_params(estimation)
    scale = judge_scale((judge or {}).get("scale"))
    logged, fresh, probes = frames_to_unit_scale(
        cje_logged_data, _load_partitions(cje_fresh_draws), _load_partitions(cje_probe_slices), scale)
    data = CJEDataset.from_frames(logged, fresh_draws=fresh, probes=probes, suspect_logprobs=config.suspect_logprobs)
    return estimate_policies(with_inclusion_probs(data, probes), config)


def tabulate_estimates(estimation_result, policy_truth: pd.DataFrame) -> pd.DataFrame:
    """One row per (policy, estimator) with the true value where it is known."""
    truth = policy_truth[["policy", "truth"]] if len(policy_truth) else pd.DataFrame(columns=["policy", "truth"])
    table = estimation_result.estimates.drop(columns=["truth"], errors="ignore").merge(truth, on="policy", how="left")
    return table[ESTIMATE_TABLE_COLUMNS]


def tabulate_differences(estimation_result) -> pd.DataFrame:
    """Paired differences between policies on shared prompts."""
    return estimation_result.differences


def tabulate_comparisons(estimation_result) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every pairwise comparison (raw, BH and Bonferroni p-values) and the best-policy decision per estimator."""
    return estimation_result.comparisons, estimation_result.decisions


def record_results(
    estimation_result,
    policy_estimates: pd.DataFrame,
    comparisons: pd.DataFrame,
    policy_decisions: pd.DataFrame,
    cje_logged_data: pd.DataFrame,
    cje_fresh_draws: Mapping[str, Callable[[], pd.DataFrame] | pd.DataFrame],
    cje_probe_slices: Mapping[str, Callable[[], pd.DataFrame] | pd.DataFrame],
    estimation: dict[str, Any],
    judge: dict[str, Any],
    kedro_run: dict[str, Any],
) -> dict[str, Any]:
    """The results as one JSON document with their provenance (``results.json``).

    Holds the estimates, paired differences, comparisons and decisions, the settings that made
    them (``estimation_result.config`` and the ``estimation`` and ``judge`` blocks as configured),
    package versions, a SHA-256 of each input as loaded (logged data, fresh draws and probe
    slices per policy: the oracle labels are in the logged rows and the probes) and the Kedro
    run (``kedro_run``, given by :class:`arena_cje.hooks.RunProvenanceHook`; ``run_id`` is the
    session id).
    """
    return results_record(
        tables={"estimates": policy_estimates, "differences": estimation_result.differences,
                "comparisons": comparisons, "decisions": policy_decisions},
        config=estimation_result.config,
        parameters={"estimation": estimation, "judge": judge},
        inputs={"cje_logged_data": data_fingerprint(cje_logged_data),
                "cje_fresh_draws": partitions_fingerprint(cje_fresh_draws or {}),
                "cje_probe_slices": partitions_fingerprint(cje_probe_slices or {})},
        run=kedro_run,
    )


def _load_partitions(partitions: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Kedro partitions (policy -> loader) -> policy -> DataFrame."""
    return {policy: value() if callable(value) else value for policy, value in (partitions or {}).items()}
