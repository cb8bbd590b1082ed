"""Property-based: the JSONL importer (logged data, fresh draws, probes) either raises a CJEDataError
that points at a defective line and field, or returns a dataset holding every valid row (issue 15).

Each example writes a layout of valid rows and defective ones (a field replaced by a random value:
wrong type, NaN/inf, huge numbers, unicode; a field deleted; a broken or non-object line; blank
lines) and reads it as ``kedro run --env cje_import`` does (``parse_jsonl`` per file, then
``CJEDataset.from_frames``). Properties:

* nothing but ``CJEDataError`` is ever raised;
* an error names a file of the layout; when it names a line, that line (or, for a duplicate, the
  first occurrence) is a defective one; when it names a field, it is the defective line's field
  (or the prompt id the defect broke); a file-level error (no line) only for a file without any
  valid row;
* a broken or non-object line is never skipped: it always raises;
* without an error, every valid row is in the dataset with its values, and every object line is
  either a row of the dataset or counted in ``n_dropped``.

``max_examples`` = 1,000 (derandomized in CI by the ``ci`` profile of tests/conftest.py); the inner
loop ``make test-fast`` sets ``ARENA_CJE_FUZZ_EXAMPLES=200`` (about 12 s instead of 60 s on 2 busy
cores), ``make test`` and CI keep the 1,000.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from arena_cje.cje import CJEDataError, CJEDataset, parse_jsonl

POLICIES = ("pa", "pb")
ODD_TEXT = ["", " ", "\u2028", "\x85", "\x00", "é", "\U0001f600", "7", "-0.5", "null", "NaN", "true", "{", "\"", "\\", "a\nb"]
# JSON tokens json.dumps cannot write: numbers beyond a float, non-standard literals.
RAW_TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400, "-0.0", "0e0", "1E-400"]


@dataclass(frozen=True)
class Raw:
    """A literal JSON token written as is."""

    token: str


def dumps(obj, ascii: bool = True) -> str:
    """json.dumps with ``Raw`` tokens spliced in; ``ascii=False`` writes non-ASCII characters raw."""
    raws: list[str] = []

    def default(o):
        if isinstance(o, Raw):
            raws.append(o.token)
            return f"__raw{len(raws) - 1}__"
        raise TypeError(type(o).__name__)

    text = json.dumps(obj, default=default, ensure_ascii=ascii)
    for i, token in enumerate(raws):
        text = text.replace(f'"__raw{i}__"', token, 1)
    return text


text_values = st.one_of(st.text(max_size=12), st.sampled_from(ODD_TEXT))
junk_values = st.one_of(
    st.sampled_from([None, float("nan"), Raw("NaN")]),  # missing: a dropped row (judge score) or a NaN
    text_values,
    st.just("lone \ud800 surrogate"),  # raw (ensure_ascii=False) it makes the line invalid UTF-8
    st.booleans(),
    st.none(),
    st.integers(-(10**30), 10**30),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([Raw(t) for t in RAW_TOKENS]),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["pa", "pb", "zz", ""]), st.one_of(st.floats(-5, 5), st.text(max_size=3), st.none()),
                    max_size=2),
)
logprob = st.floats(-1e6, -1e-6)
unit = st.floats(0, 1)


@dataclass
class File:
    """One JSONL file being built: its lines and what each line is."""

    name: str
    lines: list[str] = field(default_factory=list)
    valid: dict[int, dict] = field(default_factory=dict)  # line -> valid row
    junk: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # line -> (kind, field)

    def add(self, text: str, row: dict | None = None, junk: tuple[str, str | None] | None = None) -> None:
        self.lines.append(text)
        number = len(self.lines)
        if row is not None:
            self.valid[number] = row
        if junk is not None:
            self.junk[number] = junk

    @property
    def data(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode("utf-8", "surrogatepass")

    @property
    def object_lines(self) -> int:
        return len(self.valid) + sum(kind in ("field", "missing") for kind, _ in self.junk.values())


# Strategies are built once (building them inside the composites costs more than the test itself).
booleans = st.booleans()
optional_logprob = st.one_of(logprob, st.none())
optional_unit = st.one_of(unit, st.none())
defect_kinds = st.sampled_from(["field"] * 6 + ["missing"] * 2 + ["broken", "nonobject", "blank"])
blank_lines = st.sampled_from(["", " ", "\t", "\r"])
garbage_lines = st.text(min_size=1, max_size=15).filter(lambda t: _not_json_object(t))
non_objects = st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.text(max_size=5), st.none())
defect_rates = st.sampled_from([0, 1, 3])  # out of 10 rows: clean layouts, a few defects, many
tenths = st.integers(0, 9)


@st.composite
def logged_row(draw, pid: str) -> dict:
    base = draw(logprob)
    targets = {p: draw(optional_logprob) for p in POLICIES if p == "pa" or draw(booleans)}
    if all(v == base for v in targets.values() if v is not None):
        targets["pa"] = base - 1.0  # never "identical under every policy" (a suspect row) by accident
    row = {"prompt": draw(text_values), "response": draw(text_values), "base_policy_logprob": base,
           "target_policy_logprobs": targets, "judge_score": draw(unit)}
    if draw(booleans):
        row["oracle_label"] = draw(optional_unit)
    if draw(booleans):
        row["prompt_id"] = pid
    else:
        row["metadata"] = {"prompt_id": pid, "note": draw(text_values)}
    return row


@st.composite
def draw_row(draw, pid: str, labelled: bool) -> dict:
    row = {"prompt_id": pid, "judge_score": draw(unit), "draw_idx": 0, "response": draw(text_values)}
    if labelled or draw(booleans):
        row["oracle_label"] = draw(unit) if labelled else draw(optional_unit)
    return row


@st.composite
def defect(draw, row: dict, ascii: bool) -> tuple[str, tuple[str, str | None]]:
    """A defective version of ``row``: (line text, (kind, field))."""
    kind = draw(defect_kinds)
    if kind == "blank":
        return draw(blank_lines), ("blank", None)
    if kind == "broken":
        good = dumps(row, ascii)
        cut = draw(st.integers(1, max(1, len(good) - 1)))
        return (good[:cut] if draw(booleans) else draw(garbage_lines)), ("broken", None)
    if kind == "nonobject":
        return dumps(draw(non_objects)), ("nonobject", None)
    row = json.loads(json.dumps(row))
    names = [k for k in row if k != "metadata"] + [f"target_policy_logprobs.{p}" for p in row.get("target_policy_logprobs", {})]
    names += ["metadata.prompt_id"] if "metadata" in row else []
    name = draw(st.sampled_from(names))
    parent, _, child = name.partition(".")
    holder, key = (row[parent], child) if child else (row, parent)
    if kind == "missing":
        del holder[key]
    else:
        holder[key] = draw(junk_values)
    return dumps(row, ascii), (kind, name)


def _not_json_object(text: str) -> bool:
    """Text that is one non-blank line and not a JSON object."""
    if "\n" in text or not text.strip(" \t\r"):
        return False
    try:
        return not isinstance(json.loads(text), dict)
    except ValueError:
        return True


@st.composite
def layouts(draw) -> tuple[File, dict[str, File], dict[str, File], str]:
    ascii = draw(booleans)
    rate = draw(defect_rates)
    pids = draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8, unique=True))
    logged = File("logged_data.jsonl")
    valid_pids = [p for p in pids if p == pids[0] or draw(tenths) >= rate]
    rows = [(p, draw(logged_row(p))) for p in pids]
    for pid, row in draw(st.permutations(rows)):
        if pid in valid_pids:
            logged.add(dumps(row, ascii), row=row)
        else:
            text, junk = draw(defect(row, ascii))
            logged.add(text, junk=junk)
    fresh, probes = {}, {}
    for policy in POLICIES:
        for folder, files, labelled in (("fresh_draws", fresh, False), ("probe_slice", probes, True)):
            if folder == "probe_slice" and draw(booleans):
                continue
            f = File(f"{folder}/{policy}.jsonl")
            for pid in draw(st.lists(st.sampled_from(valid_pids), min_size=1, max_size=4, unique=True)):
                row = draw(draw_row(pid, labelled))
                if draw(tenths) < rate:
                    text, junk = draw(defect(row, ascii))
                    f.add(text, junk=junk)
                else:
                    f.add(dumps(row, ascii), row=row)
            files[policy] = f
    return logged, fresh, probes, draw(st.sampled_from(["warn", "error"]))


def _fields_a_defect_can_break(name: str | None) -> set[str]:
    if name is None:
        return set()
    root = name.split(".")[0]
    if root in ("base_policy_logprob", "target_policy_logprobs"):
        # A log-prob defect can make the row suspect (0.0, or identical under every policy): the
        # error then names the log-prob it checks first.
        return {"base_policy_logprob", "target_policy_logprobs.*"}
    if root in ("prompt_id", "metadata"):
        return {"prompt_id", "metadata.prompt_id"}
    if root == "draw_idx":
        return {"draw_idx", "prompt_id"}  # a draw_idx of "0" or 0.0 duplicates draw 0 of the same prompt
    return {name}


def check_error(e: CJEDataError, files: dict[str, File]) -> None:
    assert e.file in files, e
    f = files[e.file]
    if e.line is None:
        assert not f.valid, f"a file-level error for a file with valid rows: {e}"
        return
    blamed = [n for n in (e.line, e.other_line) if n in f.junk]
    assert blamed, f"the error points at valid line(s) only: {e}"
    if e.field is None:
        assert e.problem.startswith("not UTF-8 text") or any(f.junk[n][0] in ("broken", "nonobject") for n in blamed), e
        return
    allowed: set[str] = set()
    for n in blamed:
        allowed |= _fields_a_defect_can_break(f.junk[n][1])
    ok = e.field in allowed or (e.field.startswith("target_policy_logprobs") and "target_policy_logprobs.*" in allowed)
    assert ok, f"field {e.field!r} is not what line(s) {blamed} broke ({[f.junk[n] for n in blamed]}): {e}"


def check_dataset(data: CJEDataset, logged: File, fresh: dict[str, File], probes: dict[str, File]) -> None:
    assert len(data.logged) + data.n_dropped["logged"] == logged.object_lines
    by_pid = {pid: i for i, pid in enumerate(data.logged["prompt_id"])}
    for row in logged.valid.values():
        pid = row.get("prompt_id", row.get("metadata", {}).get("prompt_id"))
        i = by_pid[pid]  # KeyError = a valid row silently dropped
        got = data.logged.iloc[i]
        assert got.judge_score == row["judge_score"] and got.base_logprob == row["base_policy_logprob"]
        assert _same(got.oracle_label, row.get("oracle_label"))
        for p, v in row["target_policy_logprobs"].items():
            assert _same(data.logprobs.iloc[i][p], v)
    for name, files in (("fresh_draws", fresh), ("probes", probes)):
        for policy, f in files.items():
            frame = (data.fresh if name == "fresh_draws" else data.probes).get(policy)
            n = 0 if frame is None else len(frame)
            assert n + data.n_dropped.get(f"{name}[{policy}]", 0) == f.object_lines
            if f.valid:
                got = {(r.prompt_id, r.draw_idx): r for r in frame.itertuples()}
                for row in f.valid.values():
                    r = got[(row["prompt_id"], 0.0)]
                    assert r.judge_score == row["judge_score"] and _same(r.oracle_label, row.get("oracle_label"))


def _same(got: float, expected) -> bool:
    return math.isnan(got) if expected is None else got == expected


#: Examples of the importer property; ``make test-fast`` lowers it, ``make test`` (CI) runs the full 1,000.
EXAMPLES = int(os.environ.get("ARENA_CJE_FUZZ_EXAMPLES", "1000"))


@settings(max_examples=EXAMPLES, deadline=None, report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(layout=layouts())
def test_importer_raises_a_located_error_or_keeps_every_valid_row(layout):
    logged, fresh, probes, mode = layout
    files = {f.name: f for f in (logged, *fresh.values(), *probes.values())}
    try:
        data = CJEDataset.from_frames(
            parse_jsonl(logged.data, logged.name, "logged"),
            {p: parse_jsonl(f.data, f.name, "fresh_draws") for p, f in fresh.items()},
            {p: parse_jsonl(f.data, f.name, "probe") for p, f in probes.items()},
            suspect_logprobs=mode,
        )
    except CJEDataError as e:
        event(f"CJEDataError ({'file' if e.line is None else 'line'}-level, {'no field' if e.field is None else 'field'})")
        check_error(e, files)
        return
    event("dataset returned" + (" (with defective lines)" if any(f.junk for f in files.values()) else ""))
    assert not any(kind in ("broken", "nonobject") for f in files.values() for kind, _ in f.junk.values()), \
        "a broken line was skipped"
    check_dataset(data, logged, fresh, probes)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_parse_or_raise_a_located_error(data):
    try:
        frame = parse_jsonl(data, "random.jsonl", "logged")
    except CJEDataError as e:
        assert e.file == "random.jsonl" and (e.line is None or e.line >= 1)
        return
    assert len(frame) >= 1 and frame.index.is_unique
