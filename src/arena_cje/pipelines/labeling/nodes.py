"""Human labels: choose items, export blinded tasks, import and aggregate ratings, assemble the
CJE dataset (reference-library JSONL layout) that estimation reads.

Thin adapters over :mod:`arena_cje.crowd`; every number is computed there.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from arena_cje.backends import SimulatedTruth
from arena_cje.backends.base import judge_batch
from arena_cje.crowd import (
    CrowdConfig,
    RawFile,
    add_quality_items,
    aggregate_ratings,
    agreement_by_policy,
    duplicate_consistency,
    expected_cost,
    generic_tasks,
    instructions_markdown,
    krippendorff_alpha,
    label_studio_config,
    label_studio_tasks,
    llm_oracle_ratings,
    make_label_tasks,
    parse_ratings,
    ratings_csv_bytes,
    simulate_platform_ratings,
    stratified_sample,
    surge_tasks,
    validate_ratings,
)
from arena_cje.crowd import worker_quality as _worker_quality
from arena_cje.experiment import backend_from_params, judge_spec, stable_seed

logger = logging.getLogger(__name__)

ITEM_KEY = ["prompt_id", "policy", "draw_idx"]


def select_label_items(
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    judge_scores: pd.DataFrame,
    logging_policy: str,
    labeling: dict[str, Any],
) -> pd.DataFrame:
    """Items humans will rate: the logged responses of calibration prompts, plus a sample of
    ``probe_size`` responses per target policy (ground truth for validating the estimates).

    The calibration slice is the ``calibration`` split of ``data_prep`` (a seeded Bernoulli split),
    so its inclusion probability is ``n_calibration / n_logged``. Probes are a simple random sample
    per policy, or stratified by ``probe_strata`` judge-score bins, with the inclusion probability
    of each item kept (see :func:`arena_cje.crowd.stratified_sample`).

    Returns:
        Columns ``prompt_id, policy, draw_idx, prompt, response, judge_score, purpose, inclusion_prob``.
    """
    ok = (
        responses[responses["error"].isna()]
        .merge(prompts[["prompt_id", "prompt", "split"]], on="prompt_id")
        .merge(judge_scores[[*ITEM_KEY, "judge_score"]], on=ITEM_KEY, how="left")
    )
    logged = ok[ok["policy"] == logging_policy]
    calibration = logged[logged["split"] == "calibration"]
    calibration = calibration.assign(purpose="calibration", inclusion_prob=len(calibration) / max(len(logged), 1))
    probes = []
    for policy, group in ok[ok["policy"] != logging_policy].groupby("policy", sort=True):
        sample = stratified_sample(
            group, int(labeling["probe_size"]), seed=stable_seed(labeling["seed"], "probe", policy),
            n_strata=int(labeling["probe_strata"]),
        )
        probes.append(sample.assign(purpose="probe"))
    items = pd.concat([calibration, *probes], ignore_index=True)
    columns = [*ITEM_KEY, "prompt", "response", "judge_score", "purpose", "inclusion_prob"]
    logger.info(
        "labeling: %d calibration items, %d probe items (%s)",
        len(calibration), len(items) - len(calibration),
        f"{labeling['probe_strata']} judge-score strata" if int(labeling["probe_strata"]) > 1 else "simple random",
    )
    return items[columns]


def export_label_tasks(label_items: pd.DataFrame, labeling: dict[str, Any]) -> dict[str, Any]:
    """Blinded tasks in every platform format, the private mapping, instructions and expected cost.

    Returns:
        ``label_tasks`` (Surge CSV), ``label_task_mapping`` (private), ``label_tasks_generic``,
        ``label_studio_tasks`` (JSON), ``label_studio_config`` (XML), ``labeling_instructions``
        (Markdown) and ``labeling_export_summary`` (counts and expected cost).
    """
    lo, hi = labeling["rating_min"], labeling["rating_max"]
    seed = int(labeling["seed"])
    with_qc = add_quality_items(
        label_items, int(labeling["gold_items"]), int(labeling["duplicate_items"]), float(labeling["gold_max_rating"]),
        seed=stable_seed(seed, "quality_items"),
    )
    tasks, mapping = make_label_tasks(with_qc, seed=seed)
    votes = int(labeling["votes_per_item"])
    cost = expected_cost(len(tasks), votes, float(labeling["price_per_label"]))
    summary = {
        "n_items": int((mapping["kind"] == "item").sum()),
        "n_tasks": len(tasks),
        "tasks_by_kind": {k: int(v) for k, v in mapping["kind"].value_counts().sort_index().items()},
        "items_by_purpose": {k: int(v) for k, v in mapping.loc[mapping["kind"] == "item", "purpose"].value_counts().sort_index().items()},
        "votes_per_item": votes,
        "expected_votes": len(tasks) * votes,
        "price_per_label": float(labeling["price_per_label"]),
        "currency": str(labeling["currency"]),
        "expected_cost": cost,
    }
    logger.info(
        "labeling export: %d tasks (%s) x %d votes x %.2f %s per label = expected cost %.2f %s",
        len(tasks), summary["tasks_by_kind"], votes, summary["price_per_label"], summary["currency"], cost, summary["currency"],
    )
    return {
        "label_tasks": surge_tasks(tasks, lo, hi),
        "label_task_mapping": mapping,
        "label_tasks_generic": generic_tasks(tasks, lo, hi),
        "label_studio_tasks": label_studio_tasks(tasks),
        "label_studio_config": label_studio_config(lo, hi),
        "labeling_instructions": instructions_markdown(lo, hi, float(labeling["gold_max_rating"])),
        "labeling_export_summary": summary,
    }


def collect_ratings(
    label_tasks: pd.DataFrame, label_task_mapping: pd.DataFrame, backend: dict[str, Any], labeling: dict[str, Any]
) -> RawFile:
    """Answer the exported tasks without humans and return a platform CSV file.

    ``labeling.oracle`` chooses who answers:

    - ``crowd`` (default): the simulated world's raters (``SimulatedTruth.rate``) passed through a
      worker pool with noisy workers and spammers (``labeling.simulated_crowd``), so the import
      and quality control that follow have real problems to find;
    - ``llm``: an LLM judge used as the oracle (``labeling.llm_oracle``: model, temperature,
      rubric), one rating per task, for backends with a real model but no simulated raters.

    Raises:
        RuntimeError: ``crowd`` with a backend that has no simulated raters (real humans must
            label the exported tasks; the message says how).
    """
    client = backend_from_params(backend)
    rating_min, rating_max = labeling["rating_min"], labeling["rating_max"]
    oracle = labeling.get("oracle", "crowd")
    if oracle == "llm":
        spec = judge_spec(labeling["llm_oracle"])

        def score(prompts: list[str], responses: list[str]) -> list[float | None]:
            return [j.score for j in judge_batch(client, prompts, responses, spec)]

        ratings = llm_oracle_ratings(label_tasks, score, rating_min, rating_max)
    elif oracle != "crowd":
        raise ValueError(f"labeling.oracle must be 'crowd' or 'llm', got {oracle!r}")
    elif not isinstance(client, SimulatedTruth):
        raise RuntimeError(
            "This backend has no simulated raters. Send data/03_primary/labeling/label_tasks.csv (Surge), "
            "label_tasks_generic.csv or label_studio_tasks.json to your labeling platform, save its results as "
            "data/01_raw/labels/crowd_ratings.csv, then run `kedro run --pipelines labeling_import,estimation,reporting` "
            "(or set labeling.oracle: llm to let an LLM oracle answer)."
        )
    else:
        ratings = simulate_platform_ratings(
            label_tasks, label_task_mapping, client.rate, int(labeling["votes_per_item"]),
            rating_min, rating_max, CrowdConfig(**dict(labeling["simulated_crowd"])),
            seed=stable_seed(labeling["seed"], "crowd"),
        )
    return RawFile("crowd_ratings.csv", ratings_csv_bytes(ratings))


def archive_raw_ratings(crowd_ratings: RawFile | bytes | str) -> tuple[RawFile, dict[str, Any]]:
    """Keep the received file byte-for-byte (before anything can fail) and fingerprint it."""
    raw = RawFile.coerce(crowd_ratings)
    fingerprint = {"file": raw.name, "bytes": len(raw.data), "sha256": hashlib.sha256(raw.data).hexdigest()}
    return raw, fingerprint


def import_ratings(
    crowd_ratings: RawFile | bytes | str, crowd_ratings_fingerprint: dict[str, Any], label_task_mapping: pd.DataFrame,
    labeling: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Parse and validate the platform's result file; bad rows go to quarantine with a reason each.

    Returns:
        ``(valid_ratings, quarantined_ratings, labeling_import_report)``.

    Raises:
        ValueError: the file holds no vote, or more than ``max_bad_fraction`` of its rows are bad.
    """
    raw = RawFile.coerce(crowd_ratings)
    parsed = parse_ratings(raw)
    valid, quarantined = validate_ratings(
        parsed.rows, label_task_mapping, labeling["rating_min"], labeling["rating_max"],
        source=raw.name, min_votes=int(labeling["min_votes"]),
    )
    n_rows = len(parsed.rows)
    bad_fraction = len(quarantined) / n_rows if n_rows else 1.0
    report = {
        **crowd_ratings_fingerprint,
        "encoding": parsed.encoding,
        "format": parsed.format,
        "separator": parsed.separator,
        "file_problems": parsed.file_problems,
        "rows": n_rows,
        "valid_rows": len(valid),
        "quarantined_rows": len(quarantined),
        "bad_fraction": bad_fraction,
        "reasons": dict(Counter(_reason_kind(r) for r in quarantined["reason"]).most_common()),
    }
    for problem in parsed.file_problems:
        logger.error("%s", problem)
    for row in quarantined.head(20).itertuples(index=False):
        logger.warning("%s %s: %s", row.source, row.location, row.reason)
    if len(quarantined) > 20:
        logger.warning("... %d more quarantined rows, see quarantined_ratings.csv", len(quarantined) - 20)
    logger.info("labeling import: %d of %d rows valid (%s, %s)", len(valid), n_rows, parsed.format, parsed.encoding)
    if n_rows == 0:
        raise ValueError(f"{raw.name}: no votes found. {' '.join(parsed.file_problems)}")
    if bad_fraction > float(labeling["max_bad_fraction"]):
        raise ValueError(
            f"{raw.name}: {len(quarantined)} of {n_rows} rows are invalid ({bad_fraction:.0%} > "
            f"labeling.max_bad_fraction={labeling['max_bad_fraction']}); reasons: {report['reasons']}. "
            "The quarantined rows and their reasons are logged above."
        )
    return valid, quarantined, report


def _reason_kind(reason: str) -> str:
    """The reason without its row-specific details (for counting)."""
    return reason.split(" (")[0].split(":")[0]


def score_workers(valid_ratings: pd.DataFrame, label_task_mapping: pd.DataFrame, labeling: dict[str, Any]) -> pd.DataFrame:
    """Gold-item accuracy per worker; workers below ``min_gold_accuracy`` are marked dropped."""
    quality = _worker_quality(
        valid_ratings, label_task_mapping, float(labeling["min_gold_accuracy"]), int(labeling["min_gold_answers"])
    )
    dropped = quality[quality["dropped"]]
    if len(dropped):
        logger.warning(
            "labeling QC: dropping %d of %d workers below gold accuracy %.2f: %s",
            len(dropped), len(quality), labeling["min_gold_accuracy"], ", ".join(dropped["worker_id"]),
        )
    return quality


def aggregate_oracle_labels(
    valid_ratings: pd.DataFrame, worker_quality: pd.DataFrame, label_task_mapping: pd.DataFrame, labeling: dict[str, Any]
) -> pd.DataFrame:
    """One 0-1 oracle label per item from the votes of the workers kept by quality control
    (see :func:`arena_cje.crowd.aggregate_ratings`)."""
    kept = valid_ratings[~valid_ratings["worker_id"].isin(set(worker_quality.loc[worker_quality["dropped"], "worker_id"]))]
    return aggregate_ratings(
        kept, label_task_mapping, labeling["rating_min"], labeling["rating_max"], min_votes=int(labeling["min_votes"])
    )


def summarise_labeling(
    label_task_mapping: pd.DataFrame,
    valid_ratings: pd.DataFrame,
    worker_quality: pd.DataFrame,
    oracle_labels: pd.DataFrame,
    labeling_import_report: dict[str, Any],
    labeling: dict[str, Any],
) -> dict[str, Any]:
    """What the report shows: labels collected vs needed, agreement, rater quality and cost."""
    items = label_task_mapping[label_task_mapping["kind"] == "item"]
    needed = items.groupby("purpose").size()
    collected = oracle_labels.groupby("purpose").size()
    probe_needed = items[items["purpose"] == "probe"].groupby("policy").size()
    probe_collected = oracle_labels[oracle_labels["purpose"] == "probe"].groupby("policy").size()
    dropped = set(worker_quality.loc[worker_quality["dropped"], "worker_id"])
    kept = valid_ratings[~valid_ratings["worker_id"].isin(dropped)]
    votes = int(labeling["votes_per_item"])
    price = float(labeling["price_per_label"])
    lo, hi = labeling["rating_min"], labeling["rating_max"]
    return _jsonable(
        {
            "labels": {
                "needed": int(len(items)),
                "collected": int(len(oracle_labels)),
                "by_purpose": {p: {"needed": int(n), "collected": int(collected.get(p, 0))} for p, n in needed.items()},
                "probe_by_policy": {p: {"needed": int(n), "collected": int(probe_collected.get(p, 0))} for p, n in probe_needed.items()},
                "mean_votes_per_label": float(oracle_labels["n_votes"].mean()) if len(oracle_labels) else None,
            },
            "votes": {
                "expected": int(len(label_task_mapping) * votes),
                "received": int(labeling_import_report["rows"]),
                "valid": int(labeling_import_report["valid_rows"]),
                "quarantined": int(labeling_import_report["quarantined_rows"]),
                "from_dropped_workers": int(len(valid_ratings) - len(kept)),
                "quarantine_reasons": labeling_import_report["reasons"],
            },
            "agreement": {
                "metric": "krippendorff_alpha_interval",
                "overall": krippendorff_alpha(kept, label_task_mapping),
                "by_policy": agreement_by_policy(kept, label_task_mapping),
                "overall_before_qc": krippendorff_alpha(valid_ratings, label_task_mapping),
                "duplicate_mean_abs_diff": duplicate_consistency(kept, label_task_mapping, lo, hi),
            },
            "workers": {
                "n": int(len(worker_quality)),
                "dropped": sorted(dropped),
                "min_gold_accuracy": float(labeling["min_gold_accuracy"]),
                "mean_gold_accuracy": float(worker_quality["gold_accuracy"].mean()) if worker_quality["gold_accuracy"].notna().any() else None,
            },
            "cost": {
                "currency": str(labeling["currency"]),
                "price_per_label": price,
                "expected": expected_cost(len(label_task_mapping), votes, price),
                "received_votes": float(labeling_import_report["rows"] * price),
            },
            "file": {k: labeling_import_report[k] for k in ("file", "bytes", "sha256", "encoding", "format", "separator", "file_problems")},
        }
    )


def _jsonable(value: Any) -> Any:
    """numpy scalars -> python, NaN -> None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


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
        base_policy_logprob, target_policy_logprobs{}`` (every policy, the logging one included),
        ``judge_score, oracle_label, metadata``;
        ``fresh_draws`` and ``probe_slices`` map each policy (saved as
        ``{policy}_responses.jsonl`` / ``{policy}_probe.jsonl``) to frames of ``prompt_id, prompt,
        response, judge_score, draw_idx, oracle_label, logprob, n_tokens`` (``logprob``: the
        response's log-prob under its own policy, for the target-typicality diagnostic); probe
        slices also carry ``inclusion_prob`` (Horvitz-Thompson weights of stratified probes).
    """
    key = ["prompt_id", "policy", "draw_idx"]
    scored = (
        responses[responses["error"].isna()][[*key, "response", "logprob", "n_tokens"]]
        .merge(prompts[["prompt_id", "prompt", "split"]], on="prompt_id")
        .merge(judge_scores[[*key, "judge_score"]], on=key, how="left")
    )
    calibration_labels = oracle_labels[oracle_labels["purpose"] == "calibration"][[*key, "oracle_label"]]
    scored = scored.merge(calibration_labels, on=key, how="left")

    wide = logprobs.pivot(index="prompt_id", columns="policy", values="logprob")
    # The logging policy is its own target too: its weights are exactly 1, a built-in sanity check.
    targets = list(wide.columns)
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
            "n_tokens": [_none_if_nan(v) for v in logged["n_tokens"]],
            "metadata": [{"prompt_id": pid, "split": s, "policy": logging_policy} for pid, s in zip(logged["prompt_id"], logged["split"])],
        }
    )
    draw_columns = ["prompt_id", "prompt", "response", "judge_score", "draw_idx", "oracle_label", "logprob", "n_tokens"]
    # Every policy is estimated on the logged prompts (the layout requires it, and paired
    # differences need the same prompts): a prompt whose logged response failed is left out of
    # the fresh draws and probes too, and counted.
    orphan = ~scored["prompt_id"].isin(set(logged["prompt_id"]))
    if orphan.any():
        logger.warning(
            "assemble_cje_dataset: %d responses of %d prompts left out: those prompts have no logged %s response "
            "(first: %s)", int(orphan.sum()), scored.loc[orphan, "prompt_id"].nunique(), logging_policy,
            scored.loc[orphan, "prompt_id"].iloc[0],
        )
        scored = scored[~orphan]
    fresh_draws = {policy: group[draw_columns].reset_index(drop=True) for policy, group in scored.groupby("policy")}
    # Probes keep their inclusion probability (stratified probes: estimation weights them by 1/pi).
    probe_cols = [*key, "oracle_label"] + (["inclusion_prob"] if "inclusion_prob" in oracle_labels.columns else [])
    probe_labels = oracle_labels[oracle_labels["purpose"] == "probe"][probe_cols]
    probes = scored.drop(columns="oracle_label").merge(probe_labels, on=key, how="inner")
    probe_columns = draw_columns + (["inclusion_prob"] if "inclusion_prob" in probes.columns else [])
    probe_slices = {policy: group[probe_columns].reset_index(drop=True) for policy, group in probes.groupby("policy")}
    return logged_data, fresh_draws, probe_slices


def _none_if_nan(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value
