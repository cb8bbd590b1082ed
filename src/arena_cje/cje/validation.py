"""Validation of the rows of a CJE dataset: every error names the file, the line and the field.

:class:`CJEDataError` is the one error; a frame being validated is a :class:`Frame`, which knows
the file it was parsed from (``frame.attrs[SOURCE_ATTR]``, set by
:func:`arena_cje.cje.data.parse_jsonl`) or the name of an in-memory frame, so that its errors say
``file '<path>', line <n>, field '<name>': ...`` (``frame '<name>', row <label>, ...``). The
readers here turn one field into floats (null kept as NaN, non-numbers, booleans and infinities
refused), prompt ids into text, and check ranges, uniqueness, text fields, that fresh draws answer
logged prompts, and log-probs that look like a scoring failure upstream (exactly 0.0, or the same
under every policy of a row). The dataset built from the validated fields is
:class:`arena_cje.cje.data.CJEDataset`.
"""

from __future__ import annotations

import logging
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: ``DataFrame.attrs`` key holding the file a frame was parsed from (errors then name file and line).
SOURCE_ATTR = "cje_source"
MAX_LISTED = 5  # ids / lines quoted in one message


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
            where.append(f"{'line' if in_file else 'row'} {label_text(line)}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {problem}")

    def __reduce__(self):  # keyword-only __init__: rebuild from the attributes (pickling, multiprocessing)
        return (_rebuild_error, (self.problem, self.file, self.line, self.field, self.other_line, self.in_file))


def _rebuild_error(problem, file, line, field, other_line, in_file) -> CJEDataError:
    return CJEDataError(problem, file=file, line=line, field=field, other_line=other_line, in_file=in_file)


def label_text(v: Any) -> str:
    return str(v) if isinstance(v, (int, np.integer)) else repr(v)


def short_repr(v: Any, limit: int = 60) -> str:
    """A value as quoted in a message, cut to ``limit`` characters."""
    try:
        text = repr(v)
    except Exception:  # a foreign object whose repr fails must not hide the real error
        text = f"<{type(v).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_kind(v: Any) -> str:
    if isinstance(v, str):
        return "a string"
    if isinstance(v, Mapping):
        return "an object"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, (bool, np.bool_)):
        return "a boolean"
    return f"a {type(v).__name__}"


@dataclass(frozen=True)
class Frame:
    """A frame being validated, with the name its errors quote (file path or frame name)."""

    df: pd.DataFrame
    name: str
    in_file: bool

    @classmethod
    def of(cls, df: Any, default_name: str) -> "Frame":
        if not isinstance(df, pd.DataFrame):
            raise CJEDataError(f"expected a pandas DataFrame, got {type(df).__name__}", file=default_name, in_file=False)
        source = df.attrs.get(SOURCE_ATTR)
        return cls(df, str(source), True) if source else cls(df, default_name, False)

    def label(self, pos: int) -> Any:
        v = self.df.index[pos]
        return v.item() if isinstance(v, np.generic) else v

    def labels(self, positions: Sequence[int] | np.ndarray) -> str:
        picked = [label_text(self.label(int(i))) for i in list(positions)[:MAX_LISTED]]
        return ", ".join(picked) + (", ..." if len(positions) > MAX_LISTED else "")

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


def is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


# A plain decimal number written as a string ("0.5"); ASCII digits only (float() would take "７").
_NUMBER_TEXT = re.compile(r"[ \t]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*")


class _Unusable(Exception):
    """A value of the wrong type for its field (its description, for the message)."""


def _to_float(v: Any) -> float:
    """One value as float: numbers (and plain numeric strings) as is, null/NaN as NaN."""
    if is_missing(v):
        return float("nan")
    if isinstance(v, (bool, np.bool_)):
        raise _Unusable(f"a boolean {v!r}")
    if isinstance(v, numbers.Real):
        try:
            return float(v)
        except OverflowError:
            raise _Unusable(f"a number too large for a float ({short_repr(v, 30)})") from None
    if isinstance(v, str) and _NUMBER_TEXT.fullmatch(v):
        return float(v)
    raise _Unusable(f"{json_kind(v)} {short_repr(v)}")


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


def numeric_field(frame: Frame, field_name: str, values: Sequence[Any] | None) -> np.ndarray:
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


def check_range(frame: Frame, field_name: str, x: np.ndarray, lo: float, hi: float) -> None:
    bad = np.flatnonzero(~np.isnan(x) & ((x < lo) | (x > hi)))
    if bad.size:
        raise frame.error(f"value {float(x[bad[0]])!r} outside [{lo}, {hi}]{frame.also(bad)}", int(bad[0]), field_name)


def require_field(frame: Frame, column: str) -> None:
    if column not in frame.df.columns:
        raise frame.error(f"required field missing on every {frame.unit}", None, column)


def _id_text(v: Any) -> str:
    """A prompt id as text: strings as is, integers (and integral floats, e.g. 3.0) as digits."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # folds hash the UTF-8 bytes; a lone surrogate has none
            raise _Unusable(f"a string that is not valid Unicode (unpaired surrogate) {short_repr(v)}") from None
        return v
    if isinstance(v, (bool, np.bool_)):
        raise _Unusable(f"a boolean {v!r}")
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real) and np.isfinite(float(v)) and float(v).is_integer():
        return str(int(v))
    raise _Unusable(f"{json_kind(v)} {short_repr(v)}")


def prompt_ids(frame: pd.DataFrame, name: str = "frame") -> np.ndarray:
    """``prompt_id`` of each row of a reference-layout frame (top level, else ``metadata.prompt_id``).

    Raises:
        CJEDataError: a row has no usable id (the message names ``name`` or the frame's file, the
            row and the field).
    """
    return frame_prompt_ids(Frame.of(frame, name))


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


def frame_prompt_ids(frame: Frame) -> np.ndarray:
    """``prompt_id`` from the top-level field, else from ``metadata.prompt_id``."""
    n = len(frame.df)
    top = frame.values("prompt_id")
    if top is not None and _plain_ids(top):  # fast path: every id a non-empty valid string
        return top.copy()
    meta = frame.values("metadata")
    ids: list[str] = []
    for i in range(n):
        v, name = (top[i] if top is not None else None), "prompt_id"
        if is_missing(v):
            m = meta[i] if meta is not None else None
            v, name = (m.get("prompt_id") if isinstance(m, Mapping) else None), "metadata.prompt_id"
        if is_missing(v) or (isinstance(v, str) and v == ""):
            raise frame.error("missing (neither top-level prompt_id nor metadata.prompt_id); expected a string id",
                              i, "prompt_id")
        try:
            ids.append(_id_text(v))
        except _Unusable as e:
            raise frame.error(f"expected a string (or integer) id, got {e}", i, name) from None
    return np.array(ids, dtype=object)


def check_unique(frame: Frame, keys: Sequence[Any], field_name: str, what: str, why: str) -> None:
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
        raise frame.error(f"duplicate {what} {short_repr(keys[i])}: also on {frame.unit} {label_text(frame.label(j))} "
                          f"({len(dups)} duplicate {frame.unit}(s) in all); {why}", i, field_name, other_pos=j)


def check_text(frame: Frame, column: str) -> None:
    """A text field (prompt, response) must be a string or null."""
    values = frame.values(column)
    if values is None:
        return
    bad = [i for i, v in enumerate(values) if not (is_missing(v) or isinstance(v, str))]
    if bad:
        raise frame.error(f"expected a string or null, got {json_kind(values[bad[0]])} {short_repr(values[bad[0]])}"
                          f"{frame.also(bad)}", bad[0], column)


def check_known_prompts(frame: Frame, prompt_ids: np.ndarray, logged_ids: set[str], what: str) -> None:
    """Fresh draws and probes must answer prompts of the logged data (the estimators join on prompt_id)."""
    unknown = np.flatnonzero(~pd.Series(prompt_ids, dtype=object).isin(np.array(list(logged_ids), dtype=object)).to_numpy())
    if unknown.size:
        first = list(dict.fromkeys(prompt_ids[unknown]))[:MAX_LISTED]
        raise frame.error(
            f"{unknown.size} of {len(prompt_ids)} {what} are for prompts not in the logged data "
            f"(first: {', '.join(short_repr(p, 40) for p in first)}; {frame.unit}s {frame.labels(unknown)}); "
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


def check_suspect_logprobs(frame: Frame, base: np.ndarray, lps: pd.DataFrame, rows: np.ndarray, mode: str) -> None:
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


def log_dropped(frame: Frame, dropped: np.ndarray, what: str) -> int:
    """Count (and log) the rows dropped for lacking ``what``."""
    n = int(dropped.sum())
    if n:
        logger.warning("%s: %d %s(s) without %s dropped (%ss %s)", frame.name, n, frame.unit, what, frame.unit,
                       frame.labels(np.flatnonzero(dropped)))
    return n
