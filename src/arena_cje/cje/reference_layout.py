"""Writing a run in the reference library's JSONL layout (the reader is :mod:`arena_cje.cje.data`).

The layout (``cje-eval``; each file described in :data:`arena_cje.cje.data.LAYOUTS`):
``logged_data.jsonl`` (one row per logged prompt), ``fresh_draws/{policy}_responses.jsonl`` and
``probe_slice/{policy}_probe.jsonl``. :func:`build_reference_layout` turns the project's long
tables (prompts, responses, teacher-forced log-probs, judge scores, oracle labels) into those
frames; the Kedro dataset ``arena_cje.datasets.CJEJsonlDataset`` writes them as JSONL, and
:func:`arena_cje.cje.data.parse_jsonl` with :meth:`arena_cje.cje.data.CJEDataset.from_frames`
reads them back: what this module writes is exactly what that reader accepts
(``tests/cje/test_reference_layout.py`` checks the round trip).

Missing values are written as ``None`` (JSON ``null``), never as a number: a failed teacher-forcing
call stays a missing log-prob, which the reader keeps missing and counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: One response of one policy: (prompt, policy, draw).
ITEM_KEY = ["prompt_id", "policy", "draw_idx"]
#: Columns of a fresh-draw frame (``fresh_draws/{policy}_responses.jsonl``).
DRAW_COLUMNS = ["prompt_id", "prompt", "response", "judge_score", "draw_idx", "oracle_label", "logprob", "n_tokens"]


@dataclass(frozen=True)
class ReferenceLayout:
    """A run in the reference layout, one frame per file.

    Attributes:
        logged: ``logged_data.jsonl``: per logged prompt ``prompt_id, prompt, response,
            base_policy_logprob, target_policy_logprobs`` ({policy: log-prob or None}, every
            policy, the logging one included), ``judge_score, oracle_label`` (calibration labels
            only), ``n_tokens, metadata`` ({prompt_id, split, policy}).
        fresh_draws: Policy -> ``{policy}_responses.jsonl``: :data:`DRAW_COLUMNS` (``logprob``:
            the response's log-prob under its own policy, for the target-typicality diagnostic).
        probe_slices: Policy -> ``{policy}_probe.jsonl``: the oracle-labelled probe responses,
            :data:`DRAW_COLUMNS` plus ``inclusion_prob`` when the labels carry it
            (Horvitz-Thompson weights of stratified probes).
        n_orphans: Responses left out because their prompt has no logged response.
    """

    logged: pd.DataFrame
    fresh_draws: dict[str, pd.DataFrame]
    probe_slices: dict[str, pd.DataFrame]
    n_orphans: int = 0


def build_reference_layout(
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    logprobs: pd.DataFrame,
    judge_scores: pd.DataFrame,
    oracle_labels: pd.DataFrame,
    logging_policy: str,
) -> ReferenceLayout:
    """The run's tables in the reference layout (what estimation and ``cje-eval`` read).

    Args:
        prompts: ``prompt_id, prompt, split``.
        responses: ``prompt_id, policy, draw_idx, response, logprob, n_tokens, error``; rows with
            an ``error`` are left out.
        logprobs: Teacher-forced log-probs of the logged responses: ``prompt_id, policy, logprob``.
        judge_scores: ``prompt_id, policy, draw_idx, judge_score``.
        oracle_labels: ``prompt_id, policy, draw_idx, oracle_label, purpose`` (``calibration``
            labels go to the logged rows, ``probe`` labels to the probe slices), optionally
            ``inclusion_prob``.
        logging_policy: The policy whose responses are logged.

    Every policy is estimated on the logged prompts (the layout requires it, and paired
    differences need the same prompts): a prompt whose logged response failed is left out of the
    fresh draws and probes too, counted in ``n_orphans`` and logged.
    """
    scored = (
        responses[responses["error"].isna()][[*ITEM_KEY, "response", "logprob", "n_tokens"]]
        .merge(prompts[["prompt_id", "prompt", "split"]], on="prompt_id")
        .merge(judge_scores[[*ITEM_KEY, "judge_score"]], on=ITEM_KEY, how="left")
    )
    calibration_labels = oracle_labels[oracle_labels["purpose"] == "calibration"][[*ITEM_KEY, "oracle_label"]]
    scored = scored.merge(calibration_labels, on=ITEM_KEY, how="left")
    logged = scored[scored["policy"] == logging_policy]
    logged_data = _logged_rows(logged, logprobs, logging_policy)

    orphan = ~scored["prompt_id"].isin(set(logged["prompt_id"]))
    if orphan.any():
        logger.warning(
            "reference layout: %d responses of %d prompts left out: those prompts have no logged %s response "
            "(first: %s)", int(orphan.sum()), scored.loc[orphan, "prompt_id"].nunique(), logging_policy,
            scored.loc[orphan, "prompt_id"].iloc[0],
        )
        scored = scored[~orphan]
    fresh_draws = {policy: group[DRAW_COLUMNS].reset_index(drop=True) for policy, group in scored.groupby("policy")}
    # Probes keep their inclusion probability (stratified probes: estimation weights them by 1/pi).
    probe_cols = [*ITEM_KEY, "oracle_label"] + (["inclusion_prob"] if "inclusion_prob" in oracle_labels.columns else [])
    probe_labels = oracle_labels[oracle_labels["purpose"] == "probe"][probe_cols]
    probes = scored.drop(columns="oracle_label").merge(probe_labels, on=ITEM_KEY, how="inner")
    probe_columns = DRAW_COLUMNS + (["inclusion_prob"] if "inclusion_prob" in probes.columns else [])
    probe_slices = {policy: group[probe_columns].reset_index(drop=True) for policy, group in probes.groupby("policy")}
    return ReferenceLayout(logged_data, fresh_draws, probe_slices, int(orphan.sum()))


def _logged_rows(logged: pd.DataFrame, logprobs: pd.DataFrame, logging_policy: str) -> pd.DataFrame:
    """``logged_data.jsonl``'s rows: the logged responses with every policy's log-prob of them."""
    wide = logprobs.pivot(index="prompt_id", columns="policy", values="logprob")
    # The logging policy is its own target too: its weights are exactly 1, a built-in sanity check.
    targets = list(wide.columns)
    logged = logged.join(wide, on="prompt_id")
    return pd.DataFrame(
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
            "n_tokens": [_none_if_nan(v) for v in logged["n_tokens"]],
            "metadata": [{"prompt_id": pid, "split": s, "policy": logging_policy}
                         for pid, s in zip(logged["prompt_id"], logged["split"], strict=True)],
        }
    )


def _none_if_nan(value: Any) -> Any:
    """``None`` for a missing value (JSON ``null``); anything else as is."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value
