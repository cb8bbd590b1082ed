"""Human labels: choose items, export blinded tasks, import and aggregate ratings, assemble the
CJE dataset (reference-library JSONL layout) that estimation reads.

Thin adapters over :mod:`arena_cje.crowd`; every number is computed there.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

import pandas as pd

from arena_cje.backends import SimulatedTruth
from arena_cje.backends.base import judge_batch
from arena_cje.cje.reference_layout import build_reference_layout
from arena_cje.crowd import (
    CrowdConfig,
    RawFile,
    add_quality_items,
    aggregate_ratings,
    SummarySettings,
    expected_cost,
    generic_tasks,
    instructions_markdown,
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
from arena_cje.crowd import summarise_labeling as crowd_summary
from arena_cje.crowd import worker_quality as _worker_quality
from arena_cje.experiment import backend_from_params, judge_spec, own_backend, stable_seed

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
      rubric, and optionally its own ``backend`` block), one rating per task, for backends with a
      real model but no simulated raters.

    Raises:
        RuntimeError: ``crowd`` with a backend that has no simulated raters (real humans must
            label the exported tasks; the message says how).
    """
    rating_min, rating_max = labeling["rating_min"], labeling["rating_max"]
    oracle = labeling.get("oracle", "crowd")
    if oracle not in ("crowd", "llm"):
        raise ValueError(f"labeling.oracle must be 'crowd' or 'llm', got {oracle!r}")
    if oracle == "llm":
        spec = judge_spec(labeling["llm_oracle"])
        judge = backend_from_params(own_backend(labeling["llm_oracle"], backend))

        def score(prompts: list[str], responses: list[str]) -> list[float | None]:
            return [j.score for j in judge_batch(judge, prompts, responses, spec)]

        return RawFile("crowd_ratings.csv", ratings_csv_bytes(llm_oracle_ratings(label_tasks, score, rating_min, rating_max)))
    world = backend_from_params(backend)
    if not isinstance(world, SimulatedTruth):
        raise RuntimeError(
            "This backend has no simulated raters. Send data/03_primary/labeling/label_tasks.csv (Surge), "
            "label_tasks_generic.csv or label_studio_tasks.json to your labeling platform, save its results as "
            "data/01_raw/labels/crowd_ratings.csv, then run `kedro run --pipelines labeling_import,estimation,reporting` "
            "(or set labeling.oracle: llm to let an LLM oracle answer)."
        )
    ratings = simulate_platform_ratings(
        label_tasks, label_task_mapping, world.rate, int(labeling["votes_per_item"]),
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
    """What the report shows: labels collected vs needed, agreement, rater quality and cost
    (see :func:`arena_cje.crowd.summarise_labeling`)."""
    return crowd_summary(
        label_task_mapping, valid_ratings, worker_quality, oracle_labels, labeling_import_report,
        SummarySettings.from_params(labeling),
    )


def assemble_cje_dataset(
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    logprobs: pd.DataFrame,
    judge_scores: pd.DataFrame,
    oracle_labels: pd.DataFrame,
    logging_policy: str,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Write the run in the reference library's layout (what estimation and ``cje-eval`` read).

    See :func:`arena_cje.cje.reference_layout.build_reference_layout` for the columns.

    Returns:
        ``(logged_data, fresh_draws, probe_slices)``; ``fresh_draws`` and ``probe_slices`` map each
        policy to its frame (saved as ``{policy}_responses.jsonl`` / ``{policy}_probe.jsonl``).
    """
    layout = build_reference_layout(prompts, responses, logprobs, judge_scores, oracle_labels, logging_policy)
    return layout.logged, layout.fresh_draws, layout.probe_slices
