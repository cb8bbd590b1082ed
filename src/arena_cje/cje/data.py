"""Reading and validating a CJE dataset in the reference library's JSONL layout.

The layout (``cje-eval``): ``logged_data.jsonl`` (one row per logged response),
``fresh_draws/{policy}_responses.jsonl`` (one file per target policy) and optionally
``probe_slice/{policy}_probe.jsonl`` (oracle-labelled probes). :func:`parse_jsonl` turns the bytes
of one file into a frame whose index is the file's line numbers (pure parsing: the Kedro dataset
``arena_cje.datasets.CJEJsonlDataset`` reads the file); :meth:`CJEDataset.from_frames` turns the
frames into flat numeric frames. The writer of the same layout (from a run's tables) is
:mod:`arena_cje.cje.reference_layout`.

Every input that cannot be used as given raises :class:`CJEDataError`, naming the file (or the
frame, for frames built in memory), the line (or row label) and the field; the error, the field
readers and the row checks are :mod:`arena_cje.cje.validation` (re-exported here). Missing values
(``null``/``NaN``) are kept as ``NaN``: a missing log-prob removes that row from the policy's
importance weights and is counted, it is never imputed; a row without a judge score is dropped and
counted (``n_dropped``, and a logged warning).

Log-probs that look like a scoring failure upstream are counted (``suspect_logprob_rows``): exactly
0.0 (probability one: the reference library's old placeholder for a failed scoring call; an empty
response also scores 0.0) and, on one row, the same value under the base and at least two target
policies. They are warned about (the estimate rows that use them and the weight diagnostics say how
many) or, with ``suspect_logprobs="error"``, refused with a ``CJEDataError``.

Derived covariates (for the two-stage calibrator): ``response_length`` and ``prompt_length``,
the number of whitespace-separated words of the response / prompt (``len(text.split())``); cheap,
backend-independent and monotone in token count. Any other covariate must be a column.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from arena_cje.cje.validation import (
    MAX_LISTED,
    SOURCE_ATTR,
    CJEDataError,
    Frame,
    check_known_prompts,
    check_range,
    check_suspect_logprobs,
    check_text,
    check_unique,
    frame_prompt_ids,
    is_missing,
    json_kind,
    label_text,
    log_dropped,
    numeric_field,
    prompt_ids,  # noqa: F401 - re-exported: arena_cje.cje.data.prompt_ids is public
    require_field,
    short_repr,
    suspect_logprob_rows,  # noqa: F401 - re-exported: arena_cje.cje.data.suspect_logprob_rows is public
)

logger = logging.getLogger(__name__)

#: covariate name -> the text column it is derived from (as its word count)
DERIVED_COVARIATES = {"response_length": "response", "prompt_length": "prompt"}
KNOWN_COVARIATES = tuple(DERIVED_COVARIATES)
#: What to do with suspect log-probs (exactly 0.0, or identical under every policy of a row).
SUSPECT_LOGPROB_MODES = ("warn", "error")
#: What each file of the reference layout holds (quoted when a file is empty).
LAYOUTS = {
    "logged": (
        "logged_data.jsonl: one JSON object per line (one per prompt) with prompt, response, base_policy_logprob, "
        "target_policy_logprobs {policy: log-prob}, judge_score, optional oracle_label, and prompt_id at top level "
        "or in metadata"
    ),
    "fresh_draws": (
        "fresh_draws/{policy}_responses.jsonl: one JSON object per line (one per fresh draw of a logged prompt) "
        "with prompt_id, judge_score, draw_idx, response, optional oracle_label"
    ),
    "probe": (
        "probe_slice/{policy}_probe.jsonl: one JSON object per line (an oracle-labelled response of the policy "
        "to a logged prompt) with prompt_id, judge_score, oracle_label, draw_idx, response"
    ),
}


def parse_jsonl(data: bytes | str, source: str, layout: str) -> pd.DataFrame:
    """Parse one JSONL file of the reference layout; the frame's index is the 1-based line number.

    Blank lines are skipped (they are not rows). Values are kept as parsed (``dtype=object``):
    validation and conversion are :meth:`CJEDataset.from_frames`'s job. ``NaN``/``Infinity`` literals
    (written by Python's ``json``) parse as floats and are judged there.

    Args:
        data: The file's bytes (UTF-8, optional BOM) or text.
        source: The file's path, quoted by errors and kept in ``frame.attrs[SOURCE_ATTR]``.
        layout: ``logged``, ``fresh_draws`` or ``probe`` (a key of ``LAYOUTS``).

    Raises:
        CJEDataError: the file is not UTF-8, a line is not valid JSON or not a JSON object (file
            and line), or the file has no JSON line at all (file and the layout expected).
    """
    expected = LAYOUTS[layout]
    if isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
        raw = raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise CJEDataError(f"not UTF-8 text ({e.reason} at byte {e.start}); expected {expected}",
                               file=source, line=line) from None
    else:
        text = data
    records: list[dict] = []
    lines: list[int] = []
    # Split on "\n" only: U+2028 and friends may appear raw inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(" \t\r"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CJEDataError(f"not valid JSON ({e.msg}, column {e.colno}); expected one JSON object per line",
                               file=source, line=number) from None
        except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits, deep nesting
            raise CJEDataError(f"not usable JSON ({str(e)[:80]}); expected one JSON object per line",
                               file=source, line=number) from None
        if not isinstance(obj, dict):
            raise CJEDataError(f"expected a JSON object {{...}} per line, got {json_kind(obj)}", file=source, line=number)
        records.append(obj)
        lines.append(number)
    if not records:
        raise CJEDataError(f"empty file (no JSON line); expected {expected}", file=source)
    frame = pd.DataFrame(records, index=pd.Index(lines, name="line"), dtype=object)
    frame.attrs[SOURCE_ATTR] = source
    return frame


def word_count(texts: Sequence[Any]) -> np.ndarray:
    """Word count of each text (``len(str.split())``); ``NaN`` for missing texts."""
    return np.array([float(len(t.split())) if isinstance(t, str) else np.nan for t in texts], dtype=float)


def response_length(responses: Sequence[Any]) -> np.ndarray:
    """Word count of each response; ``NaN`` for missing responses."""
    return word_count(responses)


def _covariates(frame: Frame, covariates: tuple[str, ...], strict: bool = True) -> dict[str, np.ndarray]:
    """Covariate columns; a covariate absent from a fresh/probe frame (``strict=False``) is NaN."""
    df = frame.df
    out: dict[str, np.ndarray] = {}
    for c in covariates:
        source = DERIVED_COVARIATES.get(c)
        if source is not None and source in df.columns and c not in df.columns:
            check_text(frame, source)
            out[c] = word_count(df[source].to_numpy(dtype=object))
        elif c in df.columns:
            out[c] = numeric_field(frame, c, frame.values(c))
        elif not strict:
            out[c] = np.full(len(df), np.nan)
        else:
            raise frame.error(
                f"covariate '{c}' is neither a field nor derivable "
                f"(derivable: {', '.join(f'{k} from {v}' for k, v in DERIVED_COVARIATES.items())})", None, c
            )
    return out


def _response_frame(frame: Frame, covariates: tuple[str, ...], need_label: bool) -> pd.DataFrame:
    """Normalise a fresh-draw or probe frame to prompt_id, draw_idx, judge_score, oracle_label, covariates."""
    require_field(frame, "judge_score")
    if need_label:
        require_field(frame, "oracle_label")
    judge = numeric_field(frame, "judge_score", frame.values("judge_score"))
    check_range(frame, "judge_score", judge, 0.0, 1.0)
    label = numeric_field(frame, "oracle_label", frame.values("oracle_label"))
    pid = frame_prompt_ids(frame)
    draw = numeric_field(frame, "draw_idx", frame.values("draw_idx")) if "draw_idx" in frame.df.columns else np.zeros(len(frame.df))
    if pd.DataFrame({"p": pid, "d": draw}).duplicated().any():  # NaN draws compare equal, as None below
        check_unique(frame, [(p, None if np.isnan(d) else float(d)) for p, d in zip(pid, draw, strict=True)],
                      "prompt_id", "draw (prompt_id, draw_idx)",
                      "each fresh draw of a prompt needs its own draw_idx")
    # prompt_id as object: pandas' default Arrow strings would convert every id back to a Python
    # string at each of the estimators' many to_numpy(dtype=object) calls
    out = pd.DataFrame({"prompt_id": pd.Series(pid, dtype=object), "draw_idx": draw, "judge_score": judge,
                        "oracle_label": label})
    for c, v in _covariates(frame, covariates, strict=False).items():
        out[c] = v
    # Optional: the policy's own generation log-prob and token count (target-typicality coverage).
    for c in ("logprob", "n_tokens"):
        if c in frame.df.columns:
            out[c] = numeric_field(frame, c, frame.values(c))
    if need_label and np.isnan(label).all():
        raise frame.error(f"a probe needs oracle labels, all {len(label)} are missing", None, "oracle_label")
    return out


@dataclass(frozen=True)
class RowSource:
    """Where the logged rows came from, to point at them in warnings.

    Attributes:
        name: The file's path or the frame's name.
        in_file: Whether ``labels`` are line numbers of a file (else row labels of a frame).
        labels: Line number (row label) of each row of ``CJEDataset.logged``.
    """

    name: str
    in_file: bool
    labels: tuple[Any, ...]

    def describe(self, mask: np.ndarray) -> str:
        """``lines 3, 9 of logged_data.jsonl`` for the rows where ``mask`` is True."""
        pos = np.flatnonzero(mask)
        picked = ", ".join(label_text(self.labels[i]) for i in pos[:MAX_LISTED]) + (", ..." if pos.size > MAX_LISTED else "")
        unit = "line" if self.in_file else "row"
        return f"{unit}{'s' if pos.size > 1 else ''} {picked} of {os.path.basename(self.name) or self.name}"


@dataclass(frozen=True)
class CJEDataset:
    """Estimator-ready CJE data.

    Attributes:
        logged: One row per logged (logging-policy) response: ``prompt_id``, ``judge_score``,
            ``oracle_label`` (NaN when unlabelled), ``base_logprob``, covariate columns and, when
            the input has it, ``n_tokens`` (token count of the response).
        logprobs: Same index as ``logged``; one column per target policy with the teacher-forced
            log-prob of the logged response under that policy (NaN when missing).
        fresh: Per policy, its fresh draws: ``prompt_id``, ``draw_idx``, ``judge_score``,
            ``oracle_label`` (NaN unless labelled), covariates and, when given, ``logprob`` (the
            policy's own generation log-prob) and ``n_tokens``.
        probes: Per policy, an oracle-labelled probe of its responses (transport audit).
        covariates: Covariate column names available to the two-stage calibrator.
        n_dropped: Rows dropped per frame because their judge score (or a probe's label) was missing.
        logged_source: File and line of each logged row (None when built directly, e.g. a bootstrap).
    """

    logged: pd.DataFrame
    logprobs: pd.DataFrame
    fresh: dict[str, pd.DataFrame]
    probes: dict[str, pd.DataFrame] = field(default_factory=dict)
    covariates: tuple[str, ...] = KNOWN_COVARIATES
    n_dropped: dict[str, int] = field(default_factory=dict)
    logged_source: RowSource | None = None

    @property
    def policies(self) -> list[str]:
        """All target policies: those with log-probs on the logged data or with fresh draws."""
        return sorted(set(self.logprobs.columns) | set(self.fresh))

    @property
    def n_labelled(self) -> int:
        return int(self.logged["oracle_label"].notna().sum())

    @classmethod
    def from_frames(
        cls,
        logged: pd.DataFrame,
        fresh_draws: Mapping[str, pd.DataFrame] | None = None,
        probes: Mapping[str, pd.DataFrame] | None = None,
        covariates: tuple[str, ...] | None = None,
        suspect_logprobs: str = "warn",
    ) -> "CJEDataset":
        """Validate and normalise frames in the reference library's JSONL layout.

        Frames from :func:`parse_jsonl` carry their file (``attrs``) and line numbers (index), so
        errors name file and line; other frames are named ``logged``, ``fresh_draws[p]``,
        ``probes[p]`` and their rows by index label.

        Args:
            logged: Logged rows with ``prompt``, ``response``, ``base_policy_logprob``,
                ``target_policy_logprobs`` (dict policy -> float | None), ``judge_score``, optional
                ``oracle_label``, and ``prompt_id`` at top level or inside ``metadata``; one row
                per prompt.
            fresh_draws: Policy -> frame with ``prompt_id``, ``judge_score``, ``draw_idx``,
                optional ``oracle_label`` (and ``response`` for the length covariate).
            probes: Policy -> oracle-labelled probe frame (same columns, labels required).
            covariates: Covariates for the two-stage calibrator; ``response_length`` and
                ``prompt_length`` are derived from ``response`` / ``prompt`` when not given as
                columns. ``None``: every derivable covariate whose text column the logged frame has.
            suspect_logprobs: ``warn`` (default): log-probs of exactly 0.0, or identical under the
                base and every target policy of a row, are kept, logged and counted (the estimate
                rows that use them say how many); ``error``: they raise ``CJEDataError``.

        Rows whose judge score is missing are dropped and counted in ``n_dropped`` (and logged); a
        missing ``base_policy_logprob`` or target log-prob stays NaN (excluded from that policy's
        weights).

        Raises:
            CJEDataError: naming file (frame), line (row) and field of the first invalid value;
                also for duplicate prompt_ids in the logged data, duplicate (prompt_id, draw_idx)
                within one policy's fresh draws or probe (both lines), and fresh draws or probes
                whose prompt is not in the logged data (their count and the first ids).
        """
        if suspect_logprobs not in SUSPECT_LOGPROB_MODES:
            raise ValueError(f"estimation.suspect_logprobs must be one of {list(SUSPECT_LOGPROB_MODES)}, "
                             f"got {suspect_logprobs!r}")
        lf = Frame.of(logged, "logged")
        if covariates is None:
            covariates = tuple(c for c, source in DERIVED_COVARIATES.items() if source in lf.df.columns)
        covariates = tuple(covariates)
        if len(lf.df) == 0:
            raise lf.error("no rows; expected " + LAYOUTS["logged"])
        require_field(lf, "judge_score")
        pid = frame_prompt_ids(lf)
        check_unique(lf, pid, "prompt_id", "prompt_id",
                      "logged data must have one row per prompt (estimates cluster by prompt and join fresh draws on it)")
        judge = numeric_field(lf, "judge_score", lf.values("judge_score"))
        check_range(lf, "judge_score", judge, 0.0, 1.0)
        label = numeric_field(lf, "oracle_label", lf.values("oracle_label"))
        base = numeric_field(lf, "base_policy_logprob", lf.values("base_policy_logprob"))
        check_range(lf, "base_policy_logprob", base, -np.inf, 0.0)
        lps = _target_logprobs(lf)

        frame = pd.DataFrame({"prompt_id": pd.Series(pid, dtype=object), "judge_score": judge, "oracle_label": label,
                              "base_logprob": base})  # object ids: see _response_frame
        for c, v in _covariates(lf, covariates).items():
            frame[c] = v
        if "n_tokens" in lf.df.columns:  # optional: tokens of the logged response (target typicality)
            frame["n_tokens"] = numeric_field(lf, "n_tokens", lf.values("n_tokens"))

        keep = ~np.isnan(judge)
        if not keep.any():
            raise lf.error(f"no {lf.unit} has a judge score (all {len(judge)} are null)", None, "judge_score")
        n_dropped = {"logged": log_dropped(lf, ~keep, "a judge score")}
        check_suspect_logprobs(lf, base, lps, np.flatnonzero(keep), suspect_logprobs)
        source = RowSource(lf.name, lf.in_file, tuple(lf.label(int(i)) for i in np.flatnonzero(keep)))
        frame = frame.loc[keep].reset_index(drop=True)
        lps = lps.loc[keep].reset_index(drop=True)

        logged_ids = set(pid)
        fresh: dict[str, pd.DataFrame] = {}
        for p, df in (fresh_draws or {}).items():
            ff = Frame.of(df, f"fresh_draws[{p}]")
            f = _response_frame(ff, covariates, need_label=False)
            check_known_prompts(ff, f["prompt_id"].to_numpy(dtype=object), logged_ids, "fresh draws")
            ok = f.judge_score.notna().to_numpy()
            n_dropped[f"fresh_draws[{p}]"] = log_dropped(ff, ~ok, "a judge score")
            fresh[str(p)] = f.loc[ok].reset_index(drop=True)
        prb: dict[str, pd.DataFrame] = {}
        for p, df in (probes or {}).items():
            pf = Frame.of(df, f"probes[{p}]")
            f = _response_frame(pf, covariates, need_label=True)
            check_known_prompts(pf, f["prompt_id"].to_numpy(dtype=object), logged_ids, "probe responses")
            ok = (f.judge_score.notna() & f.oracle_label.notna()).to_numpy()
            n_dropped[f"probes[{p}]"] = log_dropped(pf, ~ok, "a judge score and an oracle label")
            prb[str(p)] = f.loc[ok].reset_index(drop=True)
        return cls(logged=frame, logprobs=lps, fresh=fresh, probes=prb, covariates=covariates, n_dropped=n_dropped,
                   logged_source=source)


def _target_logprobs(frame: Frame) -> pd.DataFrame:
    """``target_policy_logprobs`` as one float column per policy (NaN where a row lacks it)."""
    n = len(frame.df)
    tpl = frame.values("target_policy_logprobs")
    if tpl is None:
        tpl = np.array([None] * n, dtype=object)
    keys: dict[Any, None] = {}
    for i, d in enumerate(tpl):
        if d.__class__ is dict:  # the common case, without the ABC checks below
            keys.update(d)
            continue
        if is_missing(d):
            continue
        if not isinstance(d, Mapping):
            raise frame.error(f"expected an object {{policy: log-prob}}, got {json_kind(d)} {short_repr(d)}", i,
                              "target_policy_logprobs")
        keys.update(d)
    names = dict.fromkeys(str(k) for k in keys)
    string_keys = all(isinstance(k, str) for k in keys)
    cols: dict[str, np.ndarray] = {}
    for p in sorted(names):
        if string_keys:  # (the class test first: isinstance on an ABC costs ~10x more per row)
            raw = [d.get(p) if d.__class__ is dict or isinstance(d, Mapping) else None for d in tpl]
        else:
            raw = [{str(k): v for k, v in d.items()}.get(p) if isinstance(d, Mapping) else None for d in tpl]
        lp = numeric_field(frame, f"target_policy_logprobs.{p}", raw)
        check_range(frame, f"target_policy_logprobs.{p}", lp, -np.inf, 0.0)
        cols[p] = lp
    return pd.DataFrame(cols, index=pd.RangeIndex(n))
