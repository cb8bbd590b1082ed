"""Validated, estimator-ready views of a CJE dataset.

The input frames follow the reference library's JSONL layout (one row per logged response; one
frame of fresh draws per target policy; optional oracle-labelled probe frames). This module turns
them into flat numeric frames and rejects malformed values with errors that name the frame, the
row and the field. Missing values (``None``/``NaN``) are kept as ``NaN``: a missing log-prob
removes that row from the policy's importance weights and is counted, it is never imputed.

Derived covariates (for the two-stage calibrator): ``response_length`` and ``prompt_length``,
the number of whitespace-separated words of the response / prompt (``len(text.split())``); cheap,
backend-independent and monotone in token count. Any other covariate must be a column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: covariate name -> the text column it is derived from (as its word count)
DERIVED_COVARIATES = {"response_length": "response", "prompt_length": "prompt"}
KNOWN_COVARIATES = tuple(DERIVED_COVARIATES)


def word_count(texts: Sequence[Any]) -> np.ndarray:
    """Word count of each text (``len(str.split())``); ``NaN`` for missing texts."""
    return np.array([float(len(t.split())) if isinstance(t, str) else np.nan for t in texts], dtype=float)


def response_length(responses: Sequence[Any]) -> np.ndarray:
    """Word count of each response; ``NaN`` for missing responses."""
    return word_count(responses)


def _numeric(values: pd.Series | Sequence[Any], frame: str, field_name: str, index: Sequence[Any]) -> np.ndarray:
    """Convert a column to float, keeping ``None``/``NaN`` as ``NaN``.

    Raises:
        ValueError: naming frame, row and field for the first non-numeric (or boolean) values.
    """
    s = pd.Series(list(values) if not isinstance(values, pd.Series) else values.to_numpy(dtype=object), dtype=object)
    is_bool = s.map(lambda v: isinstance(v, (bool, np.bool_)))
    out = pd.to_numeric(s.where(~is_bool, other="<bool>"), errors="coerce").to_numpy(dtype=float)
    bad = (np.isnan(out) & s.notna().to_numpy() & ~s.map(lambda v: isinstance(v, float) and np.isnan(v)).to_numpy()) | is_bool.to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)[:3]
        detail = ", ".join(f"row {index[r]!r}: {s.iloc[r]!r}" for r in rows)
        raise ValueError(f"frame '{frame}', field '{field_name}': non-numeric value(s) ({detail}); expected a number or null")
    if np.isinf(out).any():
        r = int(np.flatnonzero(np.isinf(out))[0])
        raise ValueError(f"frame '{frame}', row {index[r]!r}, field '{field_name}': infinite value {out[r]!r}")
    return out


def _check_range(x: np.ndarray, lo: float, hi: float, frame: str, field_name: str, index: Sequence[Any]) -> None:
    bad = ~np.isnan(x) & ((x < lo) | (x > hi))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"frame '{frame}', row {index[r]!r}, field '{field_name}': value {x[r]!r} outside [{lo}, {hi}]"
            f" ({int(bad.sum())} such row(s))"
        )


def _prompt_ids(df: pd.DataFrame, frame: str) -> np.ndarray:
    """``prompt_id`` from the top-level column, else from ``metadata['prompt_id']``."""
    index = list(df.index)
    top = df["prompt_id"] if "prompt_id" in df.columns else pd.Series([None] * len(df), index=df.index)
    meta = df["metadata"] if "metadata" in df.columns else pd.Series([None] * len(df), index=df.index)
    ids: list[str] = []
    for i, (t, m) in enumerate(zip(top.to_numpy(dtype=object), meta.to_numpy(dtype=object), strict=True)):
        v = t
        if v is None or (isinstance(v, float) and np.isnan(v)):
            v = m.get("prompt_id") if isinstance(m, Mapping) else None
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v) == "":
            raise ValueError(f"frame '{frame}', row {index[i]!r}, field 'prompt_id': missing (neither top-level nor metadata.prompt_id)")
        ids.append(str(v))
    return np.array(ids, dtype=object)


def _covariates(df: pd.DataFrame, covariates: tuple[str, ...], frame: str, strict: bool = True) -> dict[str, np.ndarray]:
    """Covariate columns; a covariate absent from a fresh/probe frame (``strict=False``) is NaN."""
    out: dict[str, np.ndarray] = {}
    for c in covariates:
        source = DERIVED_COVARIATES.get(c)
        if source is not None and source in df.columns and c not in df.columns:
            out[c] = word_count(df[source].to_numpy(dtype=object))
        elif c in df.columns:
            out[c] = _numeric(df[c], frame, c, list(df.index))
        elif not strict:
            out[c] = np.full(len(df), np.nan)
        else:
            raise ValueError(
                f"frame '{frame}': covariate '{c}' is neither a column nor derivable "
                f"(derivable: {', '.join(f'{k} from {v}' for k, v in DERIVED_COVARIATES.items())})"
            )
    return out


def _response_frame(df: pd.DataFrame, frame: str, covariates: tuple[str, ...], need_label: bool) -> pd.DataFrame:
    """Normalise a fresh-draw or probe frame to prompt_id, draw_idx, judge_score, oracle_label, covariates."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"frame '{frame}': expected a pandas DataFrame, got {type(df).__name__}")
    index = list(df.index)
    if "judge_score" not in df.columns:
        raise ValueError(f"frame '{frame}': missing required column 'judge_score'")
    if need_label and "oracle_label" not in df.columns:
        raise ValueError(f"frame '{frame}': missing required column 'oracle_label'")
    judge = _numeric(df["judge_score"], frame, "judge_score", index)
    _check_range(judge, 0.0, 1.0, frame, "judge_score", index)
    label = _numeric(df["oracle_label"], frame, "oracle_label", index) if "oracle_label" in df.columns else np.full(len(df), np.nan)
    out = pd.DataFrame(
        {
            "prompt_id": _prompt_ids(df, frame),
            "draw_idx": _numeric(df["draw_idx"], frame, "draw_idx", index) if "draw_idx" in df.columns else np.zeros(len(df)),
            "judge_score": judge,
            "oracle_label": label,
        }
    )
    for c, v in _covariates(df, covariates, frame, strict=False).items():
        out[c] = v
    # Optional: the policy's own generation log-prob and token count (target-typicality coverage).
    for c in ("logprob", "n_tokens"):
        if c in df.columns:
            out[c] = _numeric(df[c], frame, c, index)
    dup = out.duplicated(["prompt_id", "draw_idx"])
    if dup.any():
        r = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(f"frame '{frame}', row {index[r]!r}, field 'prompt_id'/'draw_idx': duplicate draw {out.prompt_id.iloc[r]!r}/{out.draw_idx.iloc[r]!r}")
    if need_label and np.isnan(label).all():
        raise ValueError(f"frame '{frame}', field 'oracle_label': a probe needs oracle labels, all are missing")
    return out


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
        n_dropped: Rows dropped per frame because their judge score was missing.
    """

    logged: pd.DataFrame
    logprobs: pd.DataFrame
    fresh: dict[str, pd.DataFrame]
    probes: dict[str, pd.DataFrame] = field(default_factory=dict)
    covariates: tuple[str, ...] = KNOWN_COVARIATES
    n_dropped: dict[str, int] = field(default_factory=dict)

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
    ) -> "CJEDataset":
        """Validate and normalise frames in the reference library's JSONL layout.

        Args:
            logged: Logged rows with ``prompt``, ``response``, ``base_policy_logprob``,
                ``target_policy_logprobs`` (dict policy -> float | None), ``judge_score``, optional
                ``oracle_label``, and ``prompt_id`` at top level or inside ``metadata``.
            fresh_draws: Policy -> frame with ``prompt_id``, ``judge_score``, ``draw_idx``,
                optional ``oracle_label`` (and ``response`` for the length covariate).
            probes: Policy -> oracle-labelled probe frame (same columns, labels required).
            covariates: Covariates for the two-stage calibrator; ``response_length`` and
                ``prompt_length`` are derived from ``response`` / ``prompt`` when not given as
                columns. ``None``: every derivable covariate whose text column the logged frame has.

        Rows whose judge score is missing are dropped and counted in ``n_dropped``; a missing
        ``base_policy_logprob`` or target log-prob stays NaN (excluded from that policy's weights).

        Raises:
            ValueError: naming the frame, row and field of the first invalid value.
        """
        if not isinstance(logged, pd.DataFrame):
            raise ValueError(f"frame 'logged': expected a pandas DataFrame, got {type(logged).__name__}")
        if covariates is None:
            covariates = tuple(c for c, source in DERIVED_COVARIATES.items() if source in logged.columns)
        covariates = tuple(covariates)
        for col in ("judge_score",):
            if col not in logged.columns:
                raise ValueError(f"frame 'logged': missing required column '{col}'")
        index = list(logged.index)
        pid = _prompt_ids(logged, "logged")
        judge = _numeric(logged["judge_score"], "logged", "judge_score", index)
        _check_range(judge, 0.0, 1.0, "logged", "judge_score", index)
        label = _numeric(logged["oracle_label"], "logged", "oracle_label", index) if "oracle_label" in logged.columns else np.full(len(logged), np.nan)
        base = _numeric(logged["base_policy_logprob"], "logged", "base_policy_logprob", index) if "base_policy_logprob" in logged.columns else np.full(len(logged), np.nan)
        _check_range(base, -np.inf, 0.0, "logged", "base_policy_logprob", index)

        tpl = logged["target_policy_logprobs"].to_numpy(dtype=object) if "target_policy_logprobs" in logged.columns else np.array([None] * len(logged), dtype=object)
        names: set[str] = set()
        for i, d in enumerate(tpl):
            if d is None or (isinstance(d, float) and np.isnan(d)):
                continue
            if not isinstance(d, Mapping):
                raise ValueError(f"frame 'logged', row {index[i]!r}, field 'target_policy_logprobs': expected a dict policy -> log-prob, got {type(d).__name__}")
            names.update(str(k) for k in d)
        lp_cols: dict[str, np.ndarray] = {}
        for p in sorted(names):
            raw = [d.get(p) if isinstance(d, Mapping) else None for d in tpl]
            lp = _numeric(raw, "logged", f"target_policy_logprobs.{p}", index)
            _check_range(lp, -np.inf, 0.0, "logged", f"target_policy_logprobs.{p}", index)
            lp_cols[p] = lp

        frame = pd.DataFrame({"prompt_id": pid, "judge_score": judge, "oracle_label": label, "base_logprob": base})
        for c, v in _covariates(logged, covariates, "logged").items():
            frame[c] = v
        if "n_tokens" in logged.columns:  # optional: tokens of the logged response (target typicality)
            frame["n_tokens"] = _numeric(logged["n_tokens"], "logged", "n_tokens", index)
        lps = pd.DataFrame(lp_cols, index=frame.index)

        n_dropped: dict[str, int] = {}
        keep = ~np.isnan(judge)
        n_dropped["logged"] = int((~keep).sum())
        frame = frame.loc[keep].reset_index(drop=True)
        lps = lps.loc[keep].reset_index(drop=True)
        if len(frame) == 0:
            raise ValueError("frame 'logged': no rows with a judge score")

        fresh: dict[str, pd.DataFrame] = {}
        for p, df in (fresh_draws or {}).items():
            f = _response_frame(df, f"fresh_draws[{p}]", covariates, need_label=False)
            n_dropped[f"fresh_draws[{p}]"] = int(f.judge_score.isna().sum())
            fresh[str(p)] = f.loc[f.judge_score.notna()].reset_index(drop=True)
        prb: dict[str, pd.DataFrame] = {}
        for p, df in (probes or {}).items():
            f = _response_frame(df, f"probes[{p}]", covariates, need_label=True)
            ok = f.judge_score.notna() & f.oracle_label.notna()
            n_dropped[f"probes[{p}]"] = int((~ok).sum())
            prb[str(p)] = f.loc[ok].reset_index(drop=True)
        return cls(logged=frame, logprobs=lps, fresh=fresh, probes=prb, covariates=covariates, n_dropped=n_dropped)
