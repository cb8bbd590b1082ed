import codecs
import csv
import io

import pandas as pd
import pytest

from arena_cje.crowd import RawFile, decode_bytes, parse_rating, parse_ratings, validate_ratings

MAPPING = pd.DataFrame({"task_id": ["t1", "t2", "t3"], "kind": "item"})


def _validate(data, min_votes=1):
    parsed = parse_ratings(RawFile("f.csv", data))
    return parsed, *validate_ratings(parsed.rows, MAPPING, 0, 10, min_votes=min_votes)


def test_every_rejection_reason_with_file_and_row():
    text = (
        "task_id,worker_id,rating\n"
        "t1,w1,7\n"          # line 2 ok
        "t9,w1,7\n"          # unknown task
        "t1,,7\n"            # missing worker
        "t1,w2,seven\n"      # not a number
        "t1,w3,11\n"         # out of range
        "t1,w1,3\n"          # duplicate vote by w1 (first kept)
        "t2,w1,nan\n"        # NaN
        "t2,w1\n"            # malformed
        "t3,w4,1e999\n"      # overflows to inf
    )
    parsed, valid, bad = _validate(text.encode())
    assert valid[["task_id", "worker_id", "rating"]].values.tolist() == [["t1", "w1", 7.0]]
    reasons = dict(zip(bad["row"], bad["reason"]))
    assert reasons[3] == "unknown task_id"
    assert reasons[4] == "missing worker_id"
    assert reasons[5] == "rating is not a number"
    assert reasons[6] == "rating outside [0, 10]"
    assert reasons[7].startswith("duplicate vote by the same worker (first vote at row 2")
    assert reasons[8] == "rating is not a number"
    assert reasons[9].startswith("malformed row")
    assert reasons[10] == "rating is not a number"
    assert set(bad["source"]) == {"f.csv"}
    assert len(valid) + len(bad) == len(parsed.rows) == 9


def test_too_few_votes_quarantines_the_task():
    text = "task_id,worker_id,rating\nt1,a,1\nt1,b,2\nt2,a,5\n"
    _, valid, bad = _validate(text.encode(), min_votes=2)
    assert set(valid["task_id"]) == {"t1"}
    assert bad["reason"].tolist() == ["too few votes: task has 1 valid vote(s), min_votes=2"]


@pytest.mark.parametrize(
    "encoding,bom", [("utf-8", b""), ("utf-8", codecs.BOM_UTF8), ("utf-16", b""), ("cp1252", b"")]
)
def test_encodings_and_bom(encoding, bom):
    text = "task_id;worker_id;rating\r\nt1;Jos\u00e9;7,5\r\n\r\nt2;b;3\r\n"
    parsed, valid, bad = _validate(bom + text.encode(encoding))
    assert bad.empty, bad
    assert parsed.separator == ";"
    assert valid["worker_id"].tolist() == ["Jos\u00e9", "b"]
    assert valid["rating"].tolist() == [7.5, 3.0]
    assert valid["row"].tolist() == [2, 4]  # physical lines, blank line counted


def test_header_aliases_and_extra_columns():
    text = "Task ID\tAnnotator\tprompt\tScore\nt1\tw\thello, world\t4\n"
    _, valid, bad = _validate(text.encode())
    assert bad.empty and valid["rating"].tolist() == [4.0]


def test_missing_column_quarantines_every_row_with_reason():
    parsed, valid, bad = _validate(b"task_id,rating\nt1,3\nt2,4\n")
    assert valid.empty and len(bad) == 2
    assert all("lacks column(s) ['worker_id']" in r for r in bad["reason"])
    assert parsed.file_problems


def test_label_studio_export():
    export = [
        {"id": 1, "data": {"task_id": "t1", "prompt": "p", "response": "r"},
         "annotations": [
             {"completed_by": {"id": 3, "email": "a@x.org"}, "result": [{"type": "number", "value": {"number": 8}}]},
             {"completed_by": 4, "result": [{"value": {"rating": 6}}]},
             {"completed_by": 5, "was_cancelled": True, "result": []},
             {"completed_by": 6, "result": []},
         ]},
        {"id": 2, "data": {"task_id": "t2"}, "annotations": [{"completed_by": 3, "result": [{"value": {"choices": ["2"]}}]}]},
    ]
    import json

    parsed, valid, bad = _validate(json.dumps(export).encode())
    assert parsed.format == "label_studio_json"
    assert valid[["task_id", "worker_id", "rating"]].values.tolist() == [["t1", "a@x.org", 8.0], ["t1", "4", 6.0], ["t2", "3", 2.0]]
    assert bad["location"].tolist() == ["task 1, annotation 4"] and bad["reason"].tolist() == ["annotation has no result"]


def test_broken_json_is_a_file_problem_not_a_crash():
    parsed = parse_ratings(b'[{"task_id": "t1",')
    assert parsed.rows.empty and "not valid JSON" in parsed.file_problems[0]


def test_decode_never_fails_and_parse_rating_rules():
    assert decode_bytes(bytes(range(256)))[1] in {"cp1252", "latin-1"}
    assert [parse_rating(v) for v in ["7", " 7.0 ", "7,5", "-0", "nan", "inf", "1e999", "1_0", "", None]] == [
        7.0, 7.0, 7.5, 0.0, None, None, None, None, None, None
    ]


# Shapes of Label Studio 1.23.2's flat exports (a real server's output, trimmed): one row per
# annotation, a task's newest annotation first, the Number control as [{"number": 8}], the
# annotator as a user id; skipped (cancelled) annotations are not exported.
LS_JSON_MIN = """[
{"task_id": "t1", "prompt": "p", "response": "r", "id": 1, "rating": [{"number": 8}], "annotator": 1,
 "annotation_id": 5, "created_at": "2026-11-30T09:07:08.174550Z", "updated_at": "2026-11-30T09:07:08.174582Z", "lead_time": null},
{"task_id": "t1", "prompt": "p", "response": "r", "id": 1, "rating": [{"number": 7}], "annotator": 1,
 "annotation_id": 1, "created_at": "2026-11-30T09:07:07.022604Z", "updated_at": "2026-11-30T09:07:07.022644Z", "lead_time": null},
{"task_id": "t2", "prompt": "p", "response": "r", "id": 2, "rating": [{"number": 7.5}], "annotator": 2,
 "annotation_id": 4, "created_at": "2026-11-30T09:07:07.910252Z", "updated_at": "2026-11-30T09:07:07.910281Z", "lead_time": null}
]"""
LS_CSV = (
    '"annotation_id","annotator","created_at","id","lead_time","prompt","rating","response","task_id","updated_at"\n'
    '5,"1","2026-11-30T09:07:08.174550Z",1,"","p, with a comma","[{""number"":8}]","r","t1","2026-11-30T09:07:08.174582Z"\n'
    '1,"1","2026-11-30T09:07:07.022604Z",1,"","p","[{""number"":7}]","r","t1","2026-11-30T09:07:07.022644Z"\n'
    '4,"2","2026-11-30T09:07:07.910252Z",2,"","p","[{""number"":7.5}]","r","t2","2026-11-30T09:07:07.910281Z"\n'
)


def _as_tsv(text: str) -> str:
    rows = csv.reader(io.StringIO(text))
    out = io.StringIO()
    csv.writer(out, delimiter="\t", quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n").writerows(rows)
    return out.getvalue()


@pytest.mark.parametrize(
    "data,fmt,separator",
    [
        (LS_JSON_MIN, "label_studio_json_min", None),
        (LS_CSV, "label_studio_csv", ","),
        (_as_tsv(LS_CSV), "label_studio_csv", "\t"),
    ],
    ids=["json-min", "csv", "tsv"],
)
def test_label_studio_flat_exports(data, fmt, separator):
    parsed, valid, bad = _validate(data.encode())
    assert (parsed.format, parsed.separator) == (fmt, separator)
    # The rating is unwrapped from [{"number": x}]; the annotator's user id is the worker id; the
    # second annotation of user 1 on t1 (id 5, listed first) is the duplicate, the first one kept.
    assert valid[["task_id", "worker_id", "rating"]].values.tolist() == [["t1", "1", 7.0], ["t2", "2", 7.5]]
    assert bad["rating"].tolist() == ["8"] and bad["reason"].str.startswith("duplicate vote by the same worker").all()


def test_label_studio_flat_export_oddities():
    import json

    records = json.loads(LS_JSON_MIN)
    records[2]["rating"] = [{"number": 3}, {"number": 4}]  # two Number regions in one annotation
    records.append({"task_id": "t3", "prompt": "p", "response": "r", "id": 3})  # exported without annotation
    parsed, valid, bad = _validate(json.dumps(records).encode())
    assert len(parsed.rows) == 3  # the unannotated task is no vote
    assert bad.set_index("task_id").loc["t2", "reason"] == "annotation holds 2 values, expected one rating"


@pytest.mark.parametrize(
    "cell,expected",
    [
        ('[{"number": 7}]', (7, None)),
        ([{"number": 7.5}], (7.5, None)),
        ('[{"rating": 4}]', (4, None)),
        ({"choices": ["6"]}, ("6", None)),
        ("7", ("7", None)),
        (7, (7, None)),
        ("[not json", ("[not json", None)),
        ("[]", ("[]", "annotation holds 0 values, expected one rating")),
        ('[{"choices": ["1", "2"]}]', ('[{"choices": ["1", "2"]}]', "annotation holds 2 choices, expected one rating")),
        ('[{"text": ["seven"]}]', ('[{"text": ["seven"]}]', "annotation value has none of ['number', 'rating', 'choices']")),
    ],
)
def test_unwrap_label_studio_value(cell, expected):
    from arena_cje.crowd.parse import unwrap_label_studio_value

    assert unwrap_label_studio_value(cell) == expected
