"""Reading and validating a CJE dataset in the reference library's JSONL layout.

The layout (``cje-eval``): ``logged_data.jsonl`` (one row per logged response),
``fresh_draws/{policy}_responses.jsonl`` (one file per target policy) and optionally
``probe_slice/{policy}_probe.jsonl`` (oracle-labelled probes). :func:`parse_jsonl` turns the bytes
of one file into a frame whose index is the file's line numbers (pure parsing: the Kedro dataset
``arena_cje.datasets.CJEJsonlDataset`` reads the file); :meth:`CJEDataset.from_frames` turns the
frames into flat numeric frames. The writer of the same layout (from a run's tables) is
:mod:`arena_cje.cje.reference_layout`.

Every input that cannot be used as given raises :class:`CJEDataError`, naming the file (or the
frame, for frames built in memory), the line (or row label) and the field. Missing values
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
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: covariate name -> the text column it is derived from (as its word count)
DERIVED_COVARIATES = {"response_length": "response", "prompt_length": "prompt"}
KNOWN_COVARIATES = tuple(DERIVED_COVARIATES)
#: What to do with suspect log-probs (exactly 0.0, or identical under every policy of a row).
SUSPECT_LOGPROB_MODES = ("warn", "error")
#: ``DataFrame.attrs`` key holding the file a frame was parsed from (errors then name file and line).
SOURCE_ATTR = "cje_source"
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
_MAX_LISTED = 5  # ids / lines quoted in one message


class CJEDataError(ValueError):
    """An input in the reference layout that cannot be used as given.

    The message starts with the location: ``file '<path>', line <n>, field '<name>': ...`` for data
    read from a file (``frame '<name>', row <label>, ...`` for frames built in memory), then says
    what is wrong and what was expected.

    Attributes:
        problem: What is wrong and what was expected.
        file: The file's path, or the frame's name (``logged``, ``fresh_draws[p]``, ``probes[p]``).
        line: 1-based line number in ``file`` (the row label of an in-memory frame); ``None`` for a
            problem of the whole file (empty file, a field absent from every line).
        field: The field concerned (``target_policy_logprobs.<policy>`` for a nested one); ``None``
            when the line itself is unreadable (broken JSON, not an object).
        other_line: For a duplicate, the line of its first occurrence.
        in_file: Whether ``file`` is a file (``line`` a line number) or an in-memory frame.
    """

    def __init__(self, problem: str, *, file: str, line: Any = None, field: str | None = None,
                 other_line: Any = None, in_file: bool = True) -> None:
        self.problem, self.file, self.line, self.field = problem, file, line, field
        self.other_line, self.in_file = other_line, in_file
        where = [f"file '{file}'" if in_file else f"frame '{file}'"]
        if line is not None:
            where.append(f"{'line' if in_file else 'row'} {_label(line)}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {problem}")

    def __reduce__(self):  # keyword-only __init__: rebuild from the attributes (pickling, multiprocessing)
        return (_rebuild_error, (self.problem, self.file, self.line, self.field, self.other_line, self.in_file))


def _rebuild_error(problem, file, line, field, other_line, in_file) -> CJEDataError:
    return CJEDataError(problem, file=file, line=line, field=field, other_line=other_line, in_file=in_file)


def _label(v: Any) -> str:
    return str(v) if isinstance(v, (int, np.integer)) else repr(v)


def _short(v: Any, limit: int = 60) -> str:
    """A value as quoted in a message, cut to ``limit`` characters."""
    try:
        text = repr(v)
    except Exception:  # a foreign object whose repr fails must not hide the real error
        text = f"<{type(v).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(v: Any) -> str:
    if isinstance(v, str):
        return "a string"
    if isinstance(v, Mapping):
        return "an object"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, (bool, np.bool_)):
        return "a boolean"
    return f"a {type(v).__name__}"


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
            raise CJEDataError(f"expected a JSON object {{...}} per line, got {_json_kind(obj)}", file=source, line=number)
        records.append(obj)
        lines.append(number)
    if not records:
        raise CJEDataError(f"empty file (no JSON line); expected {expected}", file=source)
    frame = pd.DataFrame(records, index=pd.Index(lines, name="line"), dtype=object)
    frame.attrs[SOURCE_ATTR] = source
    return frame


@dataclass(frozen=True)
class _Frame:
    """A frame being validated, with the name its errors quote (file path or frame name)."""

    df: pd.DataFrame
    name: str
    in_file: bool

    @classmethod
    def of(cls, df: Any, default_name: str) -> "_Frame":
        if not isinstance(df, pd.DataFrame):
            raise CJEDataError(f"expected a pandas DataFrame, got {type(df).__name__}", file=default_name, in_file=False)
        source = df.attrs.get(SOURCE_ATTR)
        return cls(df, str(source), True) if source else cls(df, default_name, False)

    def label(self, pos: int) -> Any:
        v = self.df.index[pos]
        return v.item() if isinstance(v, np.generic) else v

    def labels(self, positions: Sequence[int] | np.ndarray) -> str:
        picked = [_label(self.label(int(i))) for i in list(positions)[:_MAX_LISTED]]
        return ", ".join(picked) + (", ..." if len(positions) > _MAX_LISTED else "")

    def also(self, positions: Sequence[int] | np.ndarray) -> str:
        """`` (3 such lines: 4, 9, 12)`` when more than one position has the problem, else ``""``."""
        n = len(positions)
        return f" ({n} such {self.unit}s: {self.labels(positions)})" if n > 1 else ""

    @property
    def unit(self) -> str:
        return "line" if self.in_file else "row"

    def error(self, problem: str, pos: int | None = None, field: str | None = None,
              other_pos: int | None = None) -> CJEDataError:
        return CJEDataError(problem, file=self.name, line=None if pos is None else self.label(pos), field=field,
                            other_line=None if other_pos is None else self.label(other_pos), in_file=self.in_file)

    def values(self, column: str) -> np.ndarray | None:
        return self.df[column].to_numpy(dtype=object) if column in self.df.columns else None


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


# A plain decimal number written as a string ("0.5"); ASCII digits only (float() would take "７").
_NUMBER_TEXT = re.compile(r"[ \t]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*")


class _Unusable(Exception):
    """A value of the wrong type for its field (its description, for the message)."""


def _to_float(v: Any) -> float:
    """One value as float: numbers (and plain numeric strings) as is, null/NaN as NaN."""
    if _is_missing(v):
        return float("nan")
    if isinstance(v, (bool, np.bool_)):
        raise _Unusable(f"a boolean {v!r}")
    if isinstance(v, numbers.Real):
        try:
            return float(v)
        except OverflowError:
            raise _Unusable(f"a number too large for a float ({_short(v, 30)})") from None
    if isinstance(v, str) and _NUMBER_TEXT.fullmatch(v):
        return float(v)
    raise _Unusable(f"{_json_kind(v)} {_short(v)}")


def _plain_numbers(values: Sequence[Any]) -> np.ndarray | None:
    """``values`` as float when they are all real numbers (not booleans) or null, else None."""
    arr = values if isinstance(values, np.ndarray) else np.array(values, dtype=object)
    if arr.dtype.kind == "f":
        return arr.astype(float)
    if pd.api.types.infer_dtype(arr, skipna=True) not in ("floating", "integer", "mixed-integer-float", "empty"):
        return None
    try:
        out = pd.to_numeric(pd.Series(arr, dtype=object), errors="raise").to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if out.shape == (len(arr),) else None


def _numeric(frame: _Frame, field_name: str, values: Sequence[Any] | None) -> np.ndarray:
    """Convert a field to float, keeping null/``NaN`` as ``NaN`` (``values`` None: an absent column).

    Raises:
        CJEDataError: at the first non-numeric (or boolean, or too large) or infinite value.
    """
    if values is None:
        return np.full(len(frame.df), np.nan)
    out = _plain_numbers(values)
    if out is not None:  # fast path: only numbers and nulls (checked in C); else the per-value loop
        inf = np.flatnonzero(np.isinf(out))
        if inf.size:
            raise frame.error(f"infinite value {float(out[inf[0]])!r}; expected a finite number or null{frame.also(inf)}",
                              int(inf[0]), field_name)
        return out
    out = np.empty(len(values), dtype=float)
    bad: list[int] = []
    first_problem = ""
    for i, v in enumerate(values):
        try:
            out[i] = _to_float(v)
        except _Unusable as e:
            out[i] = np.nan
            if not bad:
                first_problem = str(e)
            bad.append(i)
    if bad:
        raise frame.error(f"expected a number or null, got {first_problem}{frame.also(bad)}", bad[0], field_name)
    inf = np.flatnonzero(np.isinf(out))
    if inf.size:
        raise frame.error(f"infinite value {float(out[inf[0]])!r}; expected a finite number or null{frame.also(inf)}",
                          int(inf[0]), field_name)
    return out


def _check_range(frame: _Frame, field_name: str, x: np.ndarray, lo: float, hi: float) -> None:
    bad = np.flatnonzero(~np.isnan(x) & ((x < lo) | (x > hi)))
    if bad.size:
        raise frame.error(f"value {float(x[bad[0]])!r} outside [{lo}, {hi}]{frame.also(bad)}", int(bad[0]), field_name)


def _require(frame: _Frame, column: str) -> None:
    if column not in frame.df.columns:
        raise frame.error(f"required field missing on every {frame.unit}", None, column)


def _id_text(v: Any) -> str:
    """A prompt id as text: strings as is, integers (and integral floats, e.g. 3.0) as digits."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # folds hash the UTF-8 bytes; a lone surrogate has none
            raise _Unusable(f"a string that is not valid Unicode (unpaired surrogate) {_short(v)}") from None
        return v
    if isinstance(v, (bool, np.bool_)):
        raise _Unusable(f"a boolean {v!r}")
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real) and np.isfinite(float(v)) and float(v).is_integer():
        return str(int(v))
    raise _Unusable(f"{_json_kind(v)} {_short(v)}")


def prompt_ids(frame: pd.DataFrame, name: str = "frame") -> np.ndarray:
    """``prompt_id`` of each row of a reference-layout frame (top level, else ``metadata.prompt_id``).

    Raises:
        CJEDataError: a row has no usable id (the message names ``name`` or the frame's file, the
            row and the field).
    """
    return _prompt_ids(_Frame.of(frame, name))


def _plain_ids(ids: np.ndarray) -> bool:
    """All ids are non-empty strings with UTF-8 bytes (what ``_id_text`` accepts as is), checked in C."""
    if len(ids) == 0 or pd.api.types.infer_dtype(ids, skipna=False) != "string":
        return False
    if (pd.Series(ids, dtype=object).str.len() == 0).any():
        return False
    try:
        "".join(ids).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _prompt_ids(frame: _Frame) -> np.ndarray:
    """``prompt_id`` from the top-level field, else from ``metadata.prompt_id``."""
    n = len(frame.df)
    top = frame.values("prompt_id")
    if top is not None and _plain_ids(top):  # fast path: every id a non-empty valid string
        return top.copy()
    meta = frame.values("metadata")
    ids: list[str] = []
    for i in range(n):
        v, name = (top[i] if top is not None else None), "prompt_id"
        if _is_missing(v):
            m = meta[i] if meta is not None else None
            v, name = (m.get("prompt_id") if isinstance(m, Mapping) else None), "metadata.prompt_id"
        if _is_missing(v) or (isinstance(v, str) and v == ""):
            raise frame.error("missing (neither top-level prompt_id nor metadata.prompt_id); expected a string id",
                              i, "prompt_id")
        try:
            ids.append(_id_text(v))
        except _Unusable as e:
            raise frame.error(f"expected a string (or integer) id, got {e}", i, name) from None
    return np.array(ids, dtype=object)


def _check_unique(frame: _Frame, keys: Sequence[Any], field_name: str, what: str, why: str) -> None:
    """Raise at the first repeated key, naming both lines."""
    if pd.Index(np.asarray(keys, dtype=object) if not isinstance(keys, list) else keys, dtype=object).is_unique:
        return
    first: dict[Any, int] = {}
    dups: list[tuple[int, int]] = []
    for i, k in enumerate(keys):
        if k in first:
            dups.append((i, first[k]))
        else:
            first[k] = i
    if dups:
        i, j = dups[0]
        raise frame.error(f"duplicate {what} {_short(keys[i])}: also on {frame.unit} {_label(frame.label(j))} "
                          f"({len(dups)} duplicate {frame.unit}(s) in all); {why}", i, field_name, other_pos=j)


def _check_text(frame: _Frame, column: str) -> None:
    """A text field (prompt, response) must be a string or null."""
    values = frame.values(column)
    if values is None:
        return
    bad = [i for i, v in enumerate(values) if not (_is_missing(v) or isinstance(v, str))]
    if bad:
        raise frame.error(f"expected a string or null, got {_json_kind(values[bad[0]])} {_short(values[bad[0]])}"
                          f"{frame.also(bad)}", bad[0], column)


def word_count(texts: Sequence[Any]) -> np.ndarray:
    """Word count of each text (``len(str.split())``); ``NaN`` for missing texts."""
    return np.array([float(len(t.split())) if isinstance(t, str) else np.nan for t in texts], dtype=float)


def response_length(responses: Sequence[Any]) -> np.ndarray:
    """Word count of each response; ``NaN`` for missing responses."""
    return word_count(responses)


def _covariates(frame: _Frame, covariates: tuple[str, ...], strict: bool = True) -> dict[str, np.ndarray]:
    """Covariate columns; a covariate absent from a fresh/probe frame (``strict=False``) is NaN."""
    df = frame.df
    out: dict[str, np.ndarray] = {}
    for c in covariates:
        source = DERIVED_COVARIATES.get(c)
        if source is not None and source in df.columns and c not in df.columns:
            _check_text(frame, source)
            out[c] = word_count(df[source].to_numpy(dtype=object))
        elif c in df.columns:
            out[c] = _numeric(frame, c, frame.values(c))
        elif not strict:
            out[c] = np.full(len(df), np.nan)
        else:
            raise frame.error(
                f"covariate '{c}' is neither a field nor derivable "
                f"(derivable: {', '.join(f'{k} from {v}' for k, v in DERIVED_COVARIATES.items())})", None, c
            )
    return out


def _response_frame(frame: _Frame, covariates: tuple[str, ...], need_label: bool) -> pd.DataFrame:
    """Normalise a fresh-draw or probe frame to prompt_id, draw_idx, judge_score, oracle_label, covariates."""
    _require(frame, "judge_score")
    if need_label:
        _require(frame, "oracle_label")
    judge = _numeric(frame, "judge_score", frame.values("judge_score"))
    _check_range(frame, "judge_score", judge, 0.0, 1.0)
    label = _numeric(frame, "oracle_label", frame.values("oracle_label"))
    pid = _prompt_ids(frame)
    draw = _numeric(frame, "draw_idx", frame.values("draw_idx")) if "draw_idx" in frame.df.columns else np.zeros(len(frame.df))
    if pd.DataFrame({"p": pid, "d": draw}).duplicated().any():  # NaN draws compare equal, as None below
        _check_unique(frame, [(p, None if np.isnan(d) else float(d)) for p, d in zip(pid, draw, strict=True)],
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
            out[c] = _numeric(frame, c, frame.values(c))
    if need_label and np.isnan(label).all():
        raise frame.error(f"a probe needs oracle labels, all {len(label)} are missing", None, "oracle_label")
    return out


def _check_known_prompts(frame: _Frame, prompt_ids: np.ndarray, logged_ids: set[str], what: str) -> None:
    """Fresh draws and probes must answer prompts of the logged data (the estimators join on prompt_id)."""
    unknown = np.flatnonzero(~pd.Series(prompt_ids, dtype=object).isin(np.array(list(logged_ids), dtype=object)).to_numpy())
    if unknown.size:
        first = list(dict.fromkeys(prompt_ids[unknown]))[:_MAX_LISTED]
        raise frame.error(
            f"{unknown.size} of {len(prompt_ids)} {what} are for prompts not in the logged data "
            f"(first: {', '.join(_short(p, 40) for p in first)}; {frame.unit}s {frame.labels(unknown)}); "
            "expected the prompt_ids of logged_data.jsonl (same spelling, top level or metadata.prompt_id)",
            int(unknown[0]), "prompt_id",
        )


def suspect_logprob_rows(base: np.ndarray, logprobs: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Logged rows whose log-probs look like a scoring failure upstream.

    Args:
        base: Base (logging) policy log-prob of each row (NaN when missing).
        logprobs: Target policies' log-probs of the same rows (NaN when missing).

    Returns:
        ``(zero_base, zero_target, identical)``: the base log-prob is exactly 0.0 (probability
        one); each target policy's log-prob is exactly 0.0 (a frame like ``logprobs``); the base
        and at least two target log-probs are present and all equal (with a single target, equal
        to the base is what a clone of the logging policy gives, so that is not flagged).
    """
    base = np.asarray(base, dtype=float)
    lp = logprobs.to_numpy(dtype=float).reshape(len(base), -1)
    present = ~np.isnan(lp)
    same = np.where(present, lp == base[:, None], True).all(axis=1)
    identical = ~np.isnan(base) & (present.sum(axis=1) >= 2) & same
    zero_target = pd.DataFrame(lp == 0.0, index=logprobs.index, columns=logprobs.columns)
    return base == 0.0, zero_target, identical


def _check_suspect_logprobs(frame: _Frame, base: np.ndarray, lps: pd.DataFrame, rows: np.ndarray, mode: str) -> None:
    """Warn about (mode ``warn``) or refuse (``error``) suspect log-probs on the rows in ``rows``."""
    zero_base, zero_target, identical = suspect_logprob_rows(base[rows], lps.iloc[rows])
    zero = zero_base | zero_target.to_numpy().any(axis=1)
    if not (zero.any() or identical.any()):
        return
    where = rows[np.flatnonzero(zero)]
    same = rows[np.flatnonzero(identical)]
    if mode == "error":
        i = int(np.flatnonzero(zero | identical)[0])
        if zero[i]:
            cols = [c for c in zero_target.columns if zero_target.iloc[i][c]]
            fld = "base_policy_logprob" if zero_base[i] else f"target_policy_logprobs.{cols[0]}"
            problem = (f"log-prob exactly 0.0 (probability one: the reference library's old placeholder for a "
                       f"failed scoring call){frame.also(where)}")
        else:
            fld = "target_policy_logprobs"
            problem = (f"the same log-prob {float(base[rows[i]])!r} under the base and every target policy (a scoring "
                       f"failure upstream?){frame.also(same)}")
        raise frame.error(problem + "; fix the scores or set estimation.suspect_logprobs: warn to estimate anyway",
                          int(rows[i]), fld)
    if where.size:
        logger.warning("%s: %d %s(s) with a log-prob of exactly 0.0 (probability one; %ss %s): counted in the "
                       "estimates' reasons and weight diagnostics", frame.name, where.size, frame.unit, frame.unit,
                       frame.labels(where))
    if same.size:
        logger.warning("%s: %d %s(s) with the same log-prob under every policy (%ss %s): counted in the estimates' "
                       "reasons and weight diagnostics", frame.name, same.size, frame.unit, frame.unit,
                       frame.labels(same))


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
        picked = ", ".join(_label(self.labels[i]) for i in pos[:_MAX_LISTED]) + (", ..." if pos.size > _MAX_LISTED else "")
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
        lf = _Frame.of(logged, "logged")
        if covariates is None:
            covariates = tuple(c for c, source in DERIVED_COVARIATES.items() if source in lf.df.columns)
        covariates = tuple(covariates)
        if len(lf.df) == 0:
            raise lf.error("no rows; expected " + LAYOUTS["logged"])
        _require(lf, "judge_score")
        pid = _prompt_ids(lf)
        _check_unique(lf, pid, "prompt_id", "prompt_id",
                      "logged data must have one row per prompt (estimates cluster by prompt and join fresh draws on it)")
        judge = _numeric(lf, "judge_score", lf.values("judge_score"))
        _check_range(lf, "judge_score", judge, 0.0, 1.0)
        label = _numeric(lf, "oracle_label", lf.values("oracle_label"))
        base = _numeric(lf, "base_policy_logprob", lf.values("base_policy_logprob"))
        _check_range(lf, "base_policy_logprob", base, -np.inf, 0.0)
        lps = _target_logprobs(lf)

        frame = pd.DataFrame({"prompt_id": pd.Series(pid, dtype=object), "judge_score": judge, "oracle_label": label,
                              "base_logprob": base})  # object ids: see _response_frame
        for c, v in _covariates(lf, covariates).items():
            frame[c] = v
        if "n_tokens" in lf.df.columns:  # optional: tokens of the logged response (target typicality)
            frame["n_tokens"] = _numeric(lf, "n_tokens", lf.values("n_tokens"))

        keep = ~np.isnan(judge)
        if not keep.any():
            raise lf.error(f"no {lf.unit} has a judge score (all {len(judge)} are null)", None, "judge_score")
        n_dropped = {"logged": _log_dropped(lf, ~keep, "a judge score")}
        _check_suspect_logprobs(lf, base, lps, np.flatnonzero(keep), suspect_logprobs)
        source = RowSource(lf.name, lf.in_file, tuple(lf.label(int(i)) for i in np.flatnonzero(keep)))
        frame = frame.loc[keep].reset_index(drop=True)
        lps = lps.loc[keep].reset_index(drop=True)

        logged_ids = set(pid)
        fresh: dict[str, pd.DataFrame] = {}
        for p, df in (fresh_draws or {}).items():
            ff = _Frame.of(df, f"fresh_draws[{p}]")
            f = _response_frame(ff, covariates, need_label=False)
            _check_known_prompts(ff, f["prompt_id"].to_numpy(dtype=object), logged_ids, "fresh draws")
            ok = f.judge_score.notna().to_numpy()
            n_dropped[f"fresh_draws[{p}]"] = _log_dropped(ff, ~ok, "a judge score")
            fresh[str(p)] = f.loc[ok].reset_index(drop=True)
        prb: dict[str, pd.DataFrame] = {}
        for p, df in (probes or {}).items():
            pf = _Frame.of(df, f"probes[{p}]")
            f = _response_frame(pf, covariates, need_label=True)
            _check_known_prompts(pf, f["prompt_id"].to_numpy(dtype=object), logged_ids, "probe responses")
            ok = (f.judge_score.notna() & f.oracle_label.notna()).to_numpy()
            n_dropped[f"probes[{p}]"] = _log_dropped(pf, ~ok, "a judge score and an oracle label")
            prb[str(p)] = f.loc[ok].reset_index(drop=True)
        return cls(logged=frame, logprobs=lps, fresh=fresh, probes=prb, covariates=covariates, n_dropped=n_dropped,
                   logged_source=source)


def _target_logprobs(frame: _Frame) -> pd.DataFrame:
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
        if _is_missing(d):
            continue
        if not isinstance(d, Mapping):
            raise frame.error(f"expected an object {{policy: log-prob}}, got {_json_kind(d)} {_short(d)}", i,
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
        lp = _numeric(frame, f"target_policy_logprobs.{p}", raw)
        _check_range(frame, f"target_policy_logprobs.{p}", lp, -np.inf, 0.0)
        cols[p] = lp
    return pd.DataFrame(cols, index=pd.RangeIndex(n))


def _log_dropped(frame: _Frame, dropped: np.ndarray, what: str) -> int:
    """Count (and log) the rows dropped for lacking ``what``."""
    n = int(dropped.sum())
    if n:
        logger.warning("%s: %d %s(s) without %s dropped (%ss %s)", frame.name, n, frame.unit, what, frame.unit,
                       frame.labels(np.flatnonzero(dropped)))
    return n
