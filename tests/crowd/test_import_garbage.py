"""Property-based: the importer never crashes and never loses a valid row without a reason."""

import csv
import io
import math

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena_cje.crowd import RawFile, parse_ratings, validate_ratings

TASKS = [f"t{i:03d}" for i in range(8)]
MAPPING = pd.DataFrame({"task_id": TASKS, "kind": "item"})

valid_votes = st.lists(
    st.tuples(st.sampled_from(TASKS), st.integers(0, 30).map(lambda i: f"W{i:04d}"), st.integers(0, 10)),
    max_size=25,
    unique_by=lambda v: (v[0], v[1]),
)
junk_text = st.text(max_size=12)
junk_rating = st.one_of(
    junk_text,
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "9" * 400, "", " ", "11", "-1", "10.0000001", "７"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
)
# Junk workers start with "j" so they never collide with a valid vote's (task, worker) pair.
junk_rows = st.lists(
    st.tuples(st.one_of(st.sampled_from(TASKS), junk_text), st.one_of(junk_text.map(lambda s: "j" + s), st.just("")), junk_rating),
    max_size=15,
)


def _encode(text: str, encoding: str) -> bytes:
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode("utf-8")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    valid=valid_votes,
    junk=junk_rows,
    order=st.randoms(use_true_random=False),
    separator=st.sampled_from([",", ";", "\t", "|"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1"]),
    blank_lines=st.integers(0, 3),
    duplicate_valid=st.booleans(),
    decimal_comma=st.booleans(),
    extra_column=st.booleans(),
)
def test_garbage_never_crashes_and_valid_rows_survive(
    valid, junk, order, separator, encoding, blank_lines, duplicate_valid, decimal_comma, extra_column
):
    rows = [("valid", v) for v in valid] + [("junk", j) for j in junk]
    order.shuffle(rows)
    if duplicate_valid and valid:
        rows.append(("dup", valid[0]))  # exact duplicate row, after the original
    out = io.StringIO()
    writer = csv.writer(out, delimiter=separator, lineterminator="\r\n")
    header = ["task_id", "worker_id", "rating"] + (["comment"] if extra_column else [])
    writer.writerow(header)
    for i, (_, (task, worker, rating)) in enumerate(rows):
        if isinstance(rating, int) and decimal_comma:
            rating = f"{rating},0"
        writer.writerow([task, worker, rating] + (["x, y; z"] if extra_column else []))
        if i < blank_lines:
            out.write("\r\n")
    data = _encode(out.getvalue(), encoding)

    parsed = parse_ratings(RawFile("garbage.csv", data))
    kept, quarantined = validate_ratings(parsed.rows, MAPPING, 0, 10, source="garbage.csv")

    # Nothing disappears: every data row is either kept or quarantined with a reason. A row whose
    # every field is empty or white space is a line of bare separators, which the parser
    # documents as blank.
    written = [r for r in rows if extra_column or any(str(field).strip() for field in r[1])]
    assert len(kept) + len(quarantined) == len(parsed.rows) == len(written)
    assert quarantined["reason"].map(lambda r: isinstance(r, str) and r != "").all()
    # Every valid vote is kept with its value.
    got = {(t, w): r for t, w, r in kept[["task_id", "worker_id", "rating"]].itertuples(index=False)}
    for task, worker, rating in valid:
        assert got[(task, worker)] == float(rating)
    if duplicate_valid and valid:
        assert quarantined["reason"].str.startswith("duplicate vote").any()
    assert kept["rating"].map(lambda r: 0 <= r <= 10 and math.isfinite(r)).all()


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_never_crash(data):
    parsed = parse_ratings(RawFile("random.bin", data))
    kept, quarantined = validate_ratings(parsed.rows, MAPPING, 0, 10)
    assert len(kept) + len(quarantined) == len(parsed.rows)


@settings(max_examples=100, deadline=None)
@given(header=st.lists(st.text(max_size=10), max_size=5), body=st.lists(st.lists(st.text(max_size=8), max_size=5), max_size=6),
       separator=st.sampled_from([",", ";"]))
def test_wrong_columns_are_reported_not_raised(header, body, separator):
    out = io.StringIO()
    writer = csv.writer(out, delimiter=separator)
    writer.writerow(header)
    writer.writerows(body)
    parsed = parse_ratings(out.getvalue().encode())
    kept, quarantined = validate_ratings(parsed.rows, MAPPING, 0, 10)
    assert len(kept) + len(quarantined) == len(parsed.rows)
    if parsed.file_problems and len(parsed.rows):
        assert kept.empty
