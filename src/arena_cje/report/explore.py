"""Row-level views of a finished run, for the notebooks (``notebooks/explore_run.ipynb``).

The statistical core reports weights and calibration per policy and per labelled point; these
helpers put the response text back next to them and build the "what if" datasets. No Kedro here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from arena_cje.cje import CalibrationDiagnostics, CJEDataset
from arena_cje.cje.data import prompt_ids
from arena_cje.cje.weights import hajek_weights


def logged_texts(logged: pd.DataFrame) -> pd.DataFrame:
    """``prompt_id``, ``prompt`` and ``response`` of each logged row (reference JSONL layout).

    Args:
        logged: The logged frame as read from ``logged_data.jsonl`` (``prompt_id`` at top level or
            in ``metadata``).

    Raises:
        ValueError: when a prompt has more than one logged response (the text would be ambiguous).
    """
    out = pd.DataFrame({
        "prompt_id": prompt_ids(logged, "logged"),
        "prompt": logged["prompt"].to_numpy(dtype=object) if "prompt" in logged else None,
        "response": logged["response"].to_numpy(dtype=object) if "response" in logged else None,
    })
    dup = out["prompt_id"].duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(f"frame 'logged', row {logged.index[row]!r}, field 'prompt_id': "
                         f"{out['prompt_id'].iloc[row]!r} has more than one logged response")
    return out


def largest_weights(data: CJEDataset, logged: pd.DataFrame, policy: str, k: int = 3) -> pd.DataFrame:
    """The ``k`` logged responses with the largest importance weight for ``policy``.

    Weights are the estimators' raw mean-one (Hajek) weights pi'(y|x) / pi_0(y|x) over the rows with
    both log-probs (:func:`arena_cje.cje.weights.hajek_weights`); ``weight_share`` is the row's share
    of the total weight (1/n for every row when the policies agree).

    Args:
        data: The run's :class:`CJEDataset`.
        logged: The raw logged frame (for the text; :func:`logged_texts`).
        policy: A target policy with log-probs on the logged data.
        k: Rows to return.

    Returns:
        ``k`` rows, largest first: prompt_id, log_weight, weight, weight_share, judge_score,
        oracle_label, prompt, response.

    Raises:
        KeyError: when ``policy`` has no teacher-forced log-probs.
    """
    if policy not in data.logprobs.columns:
        raise KeyError(f"policy {policy!r} has no target_policy_logprobs in the logged data "
                       f"(have: {sorted(data.logprobs.columns)})")
    mask, logw, w = hajek_weights(data.logprobs[policy].to_numpy(dtype=float),
                                  data.logged["base_logprob"].to_numpy(dtype=float))
    rows = data.logged.loc[mask, ["prompt_id", "judge_score", "oracle_label"]].reset_index(drop=True)
    rows.insert(1, "log_weight", logw)
    rows.insert(2, "weight", w)
    rows.insert(3, "weight_share", w / w.sum())
    top = rows.nlargest(k, "weight")
    return top.merge(logged_texts(logged), on="prompt_id", how="left").reset_index(drop=True)


def worst_calibrated(calibration: CalibrationDiagnostics, logged: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The ``k`` labelled logged responses the calibrator fits worst, out of fold.

    ``residual`` = oracle label - cross-fitted prediction f^(-k)(S) (the prediction of a calibrator
    that did not see the row), ordered by its absolute value.

    Args:
        calibration: ``EstimationResult.calibration``.
        logged: The raw logged frame (for the text; :func:`logged_texts`).
        k: Rows to return.

    Returns:
        prompt_id, judge_score, oracle_label, oof_prediction, residual, fold, prompt, response.
    """
    pts = calibration.points.assign(residual=lambda d: d["oracle_label"] - d["oof_prediction"])
    worst = pts.loc[pts["residual"].abs().nlargest(k).index]
    cols = ["prompt_id", "judge_score", "oracle_label", "oof_prediction", "residual", "fold"]
    return worst[cols].merge(logged_texts(logged), on="prompt_id", how="left").reset_index(drop=True)


def thin_oracle_labels(data: CJEDataset, fraction: float, seed: int = 0) -> CJEDataset:
    """The same dataset with the oracle labels of only a random ``fraction`` of the labelled prompts.

    Prompts, not rows, are kept or dropped, and in every frame at once (the logged rows, the fresh
    draws that carry labels and the probes), so a prompt's label stays consistent everywhere and
    cross-fitting folds stay whole. Dropped probe rows leave the probe (a probe row is only its label).

    Args:
        data: A :class:`CJEDataset`.
        fraction: Share of the labelled prompts whose labels are kept, in (0, 1].
        seed: Seed of the prompt draw.

    Raises:
        ValueError: for a fraction outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    frames = [data.logged, *data.fresh.values(), *data.probes.values()]
    labelled = sorted(set().union(*(f.loc[f["oracle_label"].notna(), "prompt_id"] for f in frames)))
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(labelled, size=round(fraction * len(labelled)), replace=False)) if labelled else set()

    def unlabel(f: pd.DataFrame) -> pd.DataFrame:
        return f.assign(oracle_label=f["oracle_label"].where(f["prompt_id"].isin(keep)))

    return dataclasses.replace(
        data,
        logged=unlabel(data.logged),
        fresh={p: unlabel(f) for p, f in data.fresh.items()},
        probes={p: f.loc[f["prompt_id"].isin(keep)].reset_index(drop=True) for p, f in data.probes.items()},
    )
