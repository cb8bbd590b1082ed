"""Raw bytes of a labeling platform's result file -> one row of strings per vote.

Nothing here raises on bad input: every problem becomes a *row problem* (the row is kept with a
``problem`` text so validation quarantines it) or a *file problem* (reported, and every data row of
the file is quarantined with that reason). Handles UTF-8 (with or without BOM), UTF-16/32 with BOM,
Windows-1252 / Latin-1 fallbacks, comma / semicolon / tab / pipe separators, blank lines, ragged
rows, and Label Studio's exports: full ``JSON``, and the flat ``JSON-MIN``, ``CSV`` and ``TSV``
(which carry a control's value as ``[{"number": 7}]``, one row per annotation, newest first).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

#: Columns every parsed vote has (strings; ``None`` where the file had nothing).
VOTE_COLUMNS = ["task_id", "worker_id", "rating"]
#: Columns of :func:`parse_ratings` output: the votes plus where they came from.
PARSED_COLUMNS = ["source", "row", "location", *VOTE_COLUMNS, "problem"]

#: Header names platforms use for our three fields (compared after :func:`_normalise_header`).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "task_id": ("task_id", "taskid", "task", "item_id", "external_id"),
    "worker_id": (
        "worker_id", "workerid", "worker", "rater_id", "rater", "annotator_id", "annotator",
        "labeler_id", "labeler", "completed_by", "user_id", "surger_id",
    ),
    "rating": ("rating", "score", "answer", "label", "rating_0_10", "overall_rating"),
}

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SEPARATORS = ",;\t|"


@dataclass(frozen=True)
class RawFile:
    """A platform result file exactly as received: its name (for messages) and its bytes."""

    name: str
    data: bytes

    @classmethod
    def coerce(cls, value: RawFile | bytes | str, name: str = "crowd_ratings.csv") -> RawFile:
        """Accept a :class:`RawFile`, raw bytes or already-decoded text (encoded back as UTF-8)."""
        if isinstance(value, RawFile):
            return value
        if isinstance(value, str):
            return cls(name, value.encode("utf-8"))
        if isinstance(value, bytes | bytearray | memoryview):
            return cls(name, bytes(value))
        raise TypeError(f"{name}: expected bytes, text or RawFile, got {type(value).__name__}")


@dataclass
class ParsedRatings:
    """Result of :func:`parse_ratings`.

    Attributes:
        rows: One row per vote found, columns :data:`PARSED_COLUMNS`; ``problem`` is ``None`` when
            the row is well formed (its values are still unchecked: see ``validate``).
        file_problems: Problems that concern the whole file (no task id column, bad JSON, ...).
        encoding: The text encoding used to decode the bytes.
        format: ``csv``, ``json_records``, ``label_studio_json`` (full export),
            ``label_studio_json_min`` or ``label_studio_csv`` (the flat exports; TSV is
            ``label_studio_csv`` with separator tab).
        separator: The CSV separator found (``None`` for JSON).
    """

    rows: pd.DataFrame
    file_problems: list[str] = field(default_factory=list)
    encoding: str = "utf-8"
    format: str = "csv"
    separator: str | None = ","


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Decode ``data`` to text, never failing.

    Order: a byte-order mark decides; else strict UTF-8; else UTF-16 when the bytes look like it
    (many NULs); else Windows-1252; else Latin-1 (which maps every byte, so it cannot fail).

    Returns:
        ``(text, encoding)``.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding).lstrip("\ufeff"), encoding
            except UnicodeDecodeError:
                break
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if data and data.count(0) > len(data) // 4:
        for encoding in ("utf-16-le", "utf-16-be"):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError:
                continue
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def parse_ratings(raw: RawFile | bytes | str, name: str = "crowd_ratings.csv") -> ParsedRatings:
    """Parse a platform result file (CSV of any common dialect, or Label Studio JSON).

    Args:
        raw: The file (``RawFile``, bytes, or text).
        name: File name used in messages when ``raw`` is not a ``RawFile``.

    Returns:
        A :class:`ParsedRatings`; never raises on malformed content.
    """
    file = RawFile.coerce(raw, name)
    text, encoding = decode_bytes(file.data)
    text = text.replace("\x00", "")  # stray NULs break the csv module and are never meaningful
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        parsed = _parse_json(file.name, stripped)
    else:
        parsed = _parse_csv(file.name, text)
    parsed.encoding = encoding
    return parsed


def _normalise_header(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lstrip("\ufeff").lower()).strip("_")


def _find_columns(header: list[str]) -> tuple[dict[str, int], list[str]]:
    """Map our field names to header positions (first alias that matches wins)."""
    normalised = [_normalise_header(h) for h in header]
    found: dict[str, int] = {}
    for column, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in normalised:
                found[column] = normalised.index(alias)
                break
    missing = [c for c in VOTE_COLUMNS if c not in found]
    return found, missing


def _sniff_separator(text: str) -> str:
    """The separator: the one that splits the header into our columns; else csv.Sniffer on the
    first lines; else the most common candidate in the first line."""
    lines = [line for line in text.splitlines() if line.strip()][:20]
    if not lines:
        return ","
    for separator in _SEPARATORS:
        header = next(csv.reader([lines[0]], delimiter=separator), [])
        if not _find_columns(header)[1]:
            return separator
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=_SEPARATORS).delimiter
    except csv.Error:
        counts = {sep: lines[0].count(sep) for sep in _SEPARATORS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def _empty(name: str, problems: list[str], fmt: str, separator: str | None) -> ParsedRatings:
    return ParsedRatings(pd.DataFrame(columns=PARSED_COLUMNS), problems, format=fmt, separator=separator)


def _parse_csv(name: str, text: str) -> ParsedRatings:
    separator = _sniff_separator(text)
    try:
        records = _read_csv_records(text, separator)
    except csv.Error as exc:  # e.g. a field larger than the csv module's limit
        return _empty(name, [f"{name}: unreadable CSV ({exc})"], "csv", separator)
    if not records:
        return _empty(name, [f"{name}: no header row (file is empty)"], "csv", separator)
    header_line, header = records[0]
    columns, missing = _find_columns(header)
    problems = []
    file_problem = None
    if missing:
        file_problem = f"file lacks column(s) {missing} (header: {header})"
        problems.append(f"{name}: {file_problem}")
    annotation_column = _label_studio_annotation_column(header)
    rows, order = [], []
    for line, fields in records[1:]:
        values = {c: _cell(fields, i) for c, i in columns.items()}
        problem = file_problem
        if problem is None and len(fields) != len(header):
            problem = f"malformed row: {len(fields)} fields, header has {len(header)}"
        if annotation_column is not None:
            annotation = _cell(fields, annotation_column)
            if not (annotation or "").strip() and problem is None:
                continue  # a task exported without any annotation: no vote
            order.append(annotation)
            if problem is None:
                rating, problem = unwrap_label_studio_value(values.get("rating"))
                values["rating"] = _text(rating)
        rows.append(
            {"source": name, "row": line, "location": f"line {line}",
             **{c: values.get(c) for c in VOTE_COLUMNS}, "problem": problem}
        )
    fmt = "csv"
    if annotation_column is not None:
        rows, fmt = _in_submission_order(rows, order), "label_studio_csv"
    return ParsedRatings(pd.DataFrame(rows, columns=PARSED_COLUMNS), problems, format=fmt, separator=separator)


def _read_csv_records(text: str, separator: str) -> list[tuple[int, list[str]]]:
    """Non-blank records with the physical line each starts on (1-based)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    records = []
    previous_end = 0
    for fields in reader:
        start = previous_end + 1
        previous_end = reader.line_num
        if not any(f.strip() for f in fields):
            continue  # blank line (or a line of empty separators): not a vote
        records.append((start, fields))
    return records


def _cell(fields: list[str], index: int) -> str | None:
    return fields[index] if index < len(fields) else None


def _parse_json(name: str, text: str) -> ParsedRatings:
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        return _empty(name, [f"{name}: not valid JSON ({exc})"], "json", None)
    if isinstance(payload, dict):
        payload = payload.get("tasks", payload.get("data", [payload]))
    if not isinstance(payload, list):
        return _empty(name, [f"{name}: JSON is not a list of tasks"], "json", None)
    if any(isinstance(t, dict) and "annotations" in t for t in payload):
        return _parse_label_studio(name, payload)
    return _parse_json_records(name, payload)


def _parse_label_studio(name: str, tasks: list[Any]) -> ParsedRatings:
    """Label Studio's full JSON export: tasks with ``data`` and a list of ``annotations``."""
    rows = []
    for t, task in enumerate(tasks, start=1):
        if not isinstance(task, dict):
            rows.append(_json_row(name, len(rows) + 1, f"task {t}", None, None, None, "task is not a JSON object"))
            continue
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        task_id = _text(data.get("task_id", task.get("task_id")))
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            annotations = []
        # Submission order (annotation ids grow), so "first vote kept" means first submitted.
        numbered = sorted(enumerate(annotations, start=1), key=lambda pair: _annotation_order(pair[1]))
        for a, annotation in numbered:
            where = f"task {t}, annotation {a}"
            if not isinstance(annotation, dict):
                rows.append(_json_row(name, len(rows) + 1, where, task_id, None, None, "annotation is not a JSON object"))
                continue
            if annotation.get("was_cancelled"):
                continue  # the annotator skipped the task: no vote was given
            worker = annotation.get("completed_by")
            if isinstance(worker, dict):
                worker = worker.get("email") or worker.get("id")
            rating, problem = _label_studio_rating(annotation.get("result"))
            rows.append(_json_row(name, len(rows) + 1, where, task_id, _text(worker), rating, problem))
    return ParsedRatings(pd.DataFrame(rows, columns=PARSED_COLUMNS), [], format="label_studio_json", separator=None)


def _label_studio_rating(result: Any) -> tuple[str | None, str | None]:
    """The rating inside an annotation's ``result`` list (Number, Rating or Choices control)."""
    if not isinstance(result, list) or not result:
        return None, "annotation has no result"
    for item in result:
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict):
            continue
        for key in ("number", "rating"):
            if key in value:
                return _text(value[key]), None
        choices = value.get("choices")
        if isinstance(choices, list) and choices:
            return _text(choices[0]), None
    return None, "annotation result has no number, rating or choice"


def _parse_json_records(name: str, records: list[Any]) -> ParsedRatings:
    """Flat JSON records (Label Studio ``JSON-MIN``, or a CSV converted to JSON)."""
    label_studio = any(isinstance(r, dict) and _label_studio_annotation_column(list(r)) is not None for r in records)
    rows, order = [], []
    for r, record in enumerate(records, start=1):
        where = f"record {r}"
        if not isinstance(record, dict):
            rows.append(_json_row(name, r, where, None, None, None, "record is not a JSON object"))
            order.append(None)
            continue
        keys = list(record)
        columns, missing = _find_columns(keys)
        values = {c: record[keys[i]] for c, i in columns.items()}
        problem = f"record lacks field(s) {missing}" if missing else None
        if label_studio:
            annotation = record.get("annotation_id")
            if annotation is None and "annotator" not in record:
                continue  # a task exported without any annotation: no vote
            order.append(_text(annotation))
            if problem is None:
                values["rating"], problem = unwrap_label_studio_value(values.get("rating"))
        rows.append(_json_row(name, r, where, _text(values.get("task_id")), _text(values.get("worker_id")),
                              _text(values.get("rating")), problem))
    if not label_studio:
        return ParsedRatings(pd.DataFrame(rows, columns=PARSED_COLUMNS), [], format="json_records", separator=None)
    rows = _in_submission_order(rows, order)
    return ParsedRatings(pd.DataFrame(rows, columns=PARSED_COLUMNS), [], format="label_studio_json_min", separator=None)


#: Keys of a Label Studio control's value that hold our rating (Number, Rating, Choices).
_LABEL_STUDIO_VALUE_KEYS = ("number", "rating", "choices")


def unwrap_label_studio_value(value: Any) -> tuple[Any, str | None]:
    """A rating cell of Label Studio's flat exports -> the plain value, and a problem or ``None``.

    JSON-MIN, CSV and TSV write a ``Number`` control as ``[{"number": 7}]`` (a JSON text in the
    CSV/TSV cell), a ``Rating`` as ``[{"rating": 4}]``, a single ``Choices`` as ``"7"`` or
    ``{"choices": ["7"]}``. Plain values pass through unchanged.

    Returns:
        ``(value, None)``, or ``(original, problem)`` when the cell holds several values.
    """
    parsed = value
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            parsed = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value, None  # not JSON after all: validation reports it as not a number
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        return parsed, None
    if len(parsed) != 1:
        return value, f"annotation holds {len(parsed)} values, expected one rating"
    item = parsed[0]
    if isinstance(item, dict):
        for key in _LABEL_STUDIO_VALUE_KEYS:
            if key in item:
                inner = item[key]
                if isinstance(inner, list):
                    if len(inner) != 1:
                        return value, f"annotation holds {len(inner)} choices, expected one rating"
                    inner = inner[0]
                return inner, None
        return value, f"annotation value has none of {list(_LABEL_STUDIO_VALUE_KEYS)}"
    return item, None


def _label_studio_annotation_column(header: list[Any]) -> int | None:
    """Position of ``annotation_id`` when the header is a Label Studio flat export's, else ``None``.

    Those exports always have ``annotation_id`` and ``annotator`` (plus ``id``, the task's number
    inside Label Studio, which is not our ``task_id``)."""
    names = [_normalise_header(str(h)) for h in header]
    if "annotation_id" in names and "annotator" in names:
        return names.index("annotation_id")
    return None


def _annotation_order(annotation: Any) -> tuple[int, float]:
    """Sort key of an annotation (or its id): by numeric id; unknown ids last, order kept."""
    raw = annotation.get("id") if isinstance(annotation, dict) else annotation
    try:
        return 0, float(raw)
    except (TypeError, ValueError):
        return 1, 0.0


def _in_submission_order(rows: list[dict[str, Any]], annotation_ids: list[Any]) -> list[dict[str, Any]]:
    """Rows sorted by annotation id (stable). Label Studio lists a task's newest annotation first;
    sorted, "the first vote of a worker on a task is kept" means the first one submitted."""
    order = sorted(range(len(rows)), key=lambda i: _annotation_order(annotation_ids[i]))
    return [rows[i] for i in order]


def _json_row(name: str, row: int, where: str, task: Any, worker: Any, rating: Any, problem: str | None) -> dict[str, Any]:
    return {"source": name, "row": row, "location": where, "task_id": task, "worker_id": worker, "rating": rating, "problem": problem}


def _text(value: Any) -> str | None:
    """JSON scalar -> string (``None`` stays ``None``; lists/objects are rendered, then fail validation)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)[:200]
