"""LLM-judge scores of every response."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from arena_cje.backends.base import judge_batch
from arena_cje.experiment import backend_from_params, judge_spec, own_backend

logger = logging.getLogger(__name__)

JUDGE_COLUMNS = ["prompt_id", "policy", "draw_idx", "judge_score", "judge_rescore", "judge_raw", "error"]


def judge_responses(prompts: pd.DataFrame, responses: pd.DataFrame, backend: dict[str, Any], judge: dict[str, Any]) -> pd.DataFrame:
    """Score every successfully generated response with the judge (on `judge.scale`, default 0-1).

    Unparseable or refused judgements keep ``judge_score`` missing and carry the raw text.
    ``judge_rescore`` is a second judgement of a random subset (backends with
    ``judge_rescore_fraction``), to measure the judge's own noise; missing elsewhere. The judge
    runs on its own backend when ``judge.backend`` names one, else on the top-level ``backend``.

    Returns:
        Columns ``prompt_id, policy, draw_idx, judge_score, judge_rescore, judge_raw, error``.
    """
    items = responses[responses["error"].isna()].merge(prompts[["prompt_id", "prompt"]], on="prompt_id", how="left")
    client = backend_from_params(own_backend(judge, backend))
    results = judge_batch(client, items["prompt"].tolist(), items["response"].tolist(), judge_spec(judge))
    scores = pd.DataFrame(
        {
            "prompt_id": items["prompt_id"].to_numpy(),
            "policy": items["policy"].to_numpy(),
            "draw_idx": items["draw_idx"].to_numpy(),
            "judge_score": [np.nan if r.score is None else float(r.score) for r in results],
            "judge_rescore": [r.usage.get("rescore_score", np.nan) for r in results],
            "judge_raw": [r.raw for r in results],
            "error": [r.error for r in results],
        }
    )
    failed = scores["error"].notna().sum()
    if failed:
        logger.warning("judging: %d of %d judgements failed (score left missing)", failed, len(scores))
    return scores[JUDGE_COLUMNS]
