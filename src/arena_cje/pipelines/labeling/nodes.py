"""Human labels: choose items, export blinded tasks, import and aggregate ratings, assemble the
CJE dataset (reference-library JSONL layout) that estimation reads."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from arena_cje.backends import SimulatedTruth
from arena_cje.crowd import aggregate_ratings, make_label_tasks, validate_ratings
from arena_cje.experiment import backend_from_params, stable_seed

logger = logging.getLogger(__name__)


def select_label_items(prompts: pd.DataFrame, responses: pd.DataFrame, logging_policy: str, labeling: dict[str, Any]) -> pd.DataFrame:
    """Items humans will rate: the logged responses of calibration prompts, plus a seeded probe
    of ``probe_size`` responses per target policy (for the transport audit).

    Returns:
        Columns ``prompt_id, policy, draw_idx, prompt, response, purpose`` (``calibration``/``probe``).
    """
    ok = responses[responses["error"].isna()].merge(prompts[["prompt_id", "prompt", "split"]], on="prompt_id")
    calibration = ok[(ok["policy"] == logging_policy) & (ok["split"] == "calibration")].assign(purpose="calibration")
    probes = []
    probe_size = int(labeling.get("probe_size", 0))
    for policy, group in ok[ok["policy"] != logging_policy].groupby("policy", sort=True):
        rank = group["prompt_id"].map(lambda pid, p=policy: stable_seed(labeling["seed"], "probe", p, pid))
        probes.append(group.assign(_rank=rank).nsmallest(probe_size, "_rank").drop(columns="_rank").assign(purpose="probe"))
    items = pd.concat([calibration, *probes], ignore_index=True)
    return items[["prompt_id", "policy", "draw_idx", "prompt", "response", "purpose"]]


def export_label_tasks(label_items: pd.DataFrame, labeling: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Blinded tasks for the labeling platform and the private task -> item mapping."""
    tasks, mapping = make_label_tasks(label_items, seed=int(labeling["seed"]))
    tasks = tasks.assign(rating_min=labeling["rating_min"], rating_max=labeling["rating_max"])
    purpose = label_items.set_index(["prompt_id", "policy", "draw_idx"])["purpose"]
    mapping = mapping.join(purpose, on=["prompt_id", "policy", "draw_idx"])
    return tasks, mapping


def collect_simulated_ratings(label_tasks: pd.DataFrame, backend: dict[str, Any], labeling: dict[str, Any]) -> pd.DataFrame:
    """Ask the simulated world's raters for ``votes_per_item`` votes per task.

    Produces the same columns a platform export has (``task_id, worker_id, rating``) so the import
    path that follows is the real one.

    Raises:
        RuntimeError: the backend has no simulated raters (real humans must label the exported tasks).
    """
    client = backend_from_params(backend)
    if not isinstance(client, SimulatedTruth):
        raise RuntimeError(
            "This backend has no simulated raters. Send data/02_intermediate/labeling/label_tasks.csv to your "
            "labeling platform, save its results as data/01_raw/labels/crowd_ratings.csv, then run "
            "`kedro run --pipeline labeling_import` and `kedro run --pipeline estimation`."
        )
    votes = int(labeling["votes_per_item"])
    rows = []
    for i, task in enumerate(label_tasks.itertuples(index=False)):
        ratings = client.rate(task.prompt, task.response, votes, seed=stable_seed(labeling["seed"], task.task_id))
        for j, rating in enumerate(ratings):
            rows.append({"task_id": task.task_id, "worker_id": f"sim_rater_{(i + j) % 25:02d}", "rating": rating})
    return pd.DataFrame(rows, columns=["task_id", "worker_id", "rating"])


def import_ratings(crowd_ratings: pd.DataFrame, label_task_mapping: pd.DataFrame, labeling: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate the platform's rating file; bad rows go to quarantine with a reason each.

    Raises:
        ValueError: more than ``max_bad_fraction`` of the rows are bad.
    """
    valid, quarantined = validate_ratings(
        crowd_ratings, label_task_mapping, labeling["rating_min"], labeling["rating_max"], source="crowd_ratings.csv"
    )
    bad_fraction = len(quarantined) / max(len(crowd_ratings), 1)
    for row in quarantined.head(20).itertuples(index=False):
        logger.warning("%s row %d: %s", row.source, row.row, row.reason)
    if bad_fraction > float(labeling.get("max_bad_fraction", 0.1)):
        raise ValueError(
            f"crowd_ratings.csv: {len(quarantined)} of {len(crowd_ratings)} rows are invalid "
            f"({bad_fraction:.0%} > labeling.max_bad_fraction); see the quarantine file for reasons"
        )
    return valid, quarantined


def aggregate_oracle_labels(valid_ratings: pd.DataFrame, label_task_mapping: pd.DataFrame, labeling: dict[str, Any]) -> pd.DataFrame:
    """One 0-1 oracle label per item from its votes (see :func:`arena_cje.crowd.aggregate_ratings`)."""
    labels = aggregate_ratings(valid_ratings, label_task_mapping, labeling["rating_min"], labeling["rating_max"])
    return labels.merge(label_task_mapping[["prompt_id", "policy", "draw_idx", "purpose"]], on=["prompt_id", "policy", "draw_idx"])


def assemble_cje_dataset(
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    logprobs: pd.DataFrame,
    judge_scores: pd.DataFrame,
    oracle_labels: pd.DataFrame,
    logging_policy: str,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Write the run in the reference library's layout (what estimation and ``cje-eval`` read).

    Returns:
        ``(logged_data, fresh_draws, probe_slices)``: logged rows carry ``prompt, response,
        base_policy_logprob, target_policy_logprobs{}, judge_score, oracle_label, metadata``;
        ``fresh_draws`` and ``probe_slices`` map each policy (saved as
        ``{policy}_responses.jsonl`` / ``{policy}_probe.jsonl``) to frames of ``prompt_id, prompt, response, judge_score, draw_idx[, oracle_label]``.
    """
    key = ["prompt_id", "policy", "draw_idx"]
    scored = (
        responses[responses["error"].isna()][[*key, "response"]]
        .merge(prompts[["prompt_id", "prompt", "split"]], on="prompt_id")
        .merge(judge_scores[[*key, "judge_score"]], on=key, how="left")
    )
    calibration_labels = oracle_labels[oracle_labels["purpose"] == "calibration"][[*key, "oracle_label"]]
    scored = scored.merge(calibration_labels, on=key, how="left")

    wide = logprobs.pivot(index="prompt_id", columns="policy", values="logprob")
    targets = [p for p in wide.columns if p != logging_policy]
    logged = scored[scored["policy"] == logging_policy].join(wide, on="prompt_id")
    logged_data = pd.DataFrame(
        {
            "prompt_id": logged["prompt_id"].to_numpy(),
            "prompt": logged["prompt"].to_numpy(),
            "response": logged["response"].to_numpy(),
            "base_policy_logprob": [_none_if_nan(v) for v in logged[logging_policy]],
            "target_policy_logprobs": [
                {t: _none_if_nan(row[t]) for t in targets} for _, row in logged[targets].iterrows()
            ],
            "judge_score": [_none_if_nan(v) for v in logged["judge_score"]],
            "oracle_label": [_none_if_nan(v) for v in logged["oracle_label"]],
            "metadata": [{"prompt_id": pid, "split": s, "policy": logging_policy} for pid, s in zip(logged["prompt_id"], logged["split"])],
        }
    )
    draw_columns = ["prompt_id", "prompt", "response", "judge_score", "draw_idx", "oracle_label"]
    fresh_draws = {policy: group[draw_columns].reset_index(drop=True) for policy, group in scored.groupby("policy")}
    probe_labels = oracle_labels[oracle_labels["purpose"] == "probe"][[*key, "oracle_label"]]
    probes = scored.drop(columns="oracle_label").merge(probe_labels, on=key, how="inner")
    probe_slices = {policy: group[draw_columns].reset_index(drop=True) for policy, group in probes.groupby("policy")}
    return logged_data, fresh_draws, probe_slices


def _none_if_nan(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value
