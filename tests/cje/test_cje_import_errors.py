"""Defective inputs in the reference layout: each gets a CJEDataError naming file, line and field,
or a counted warning (issue 15).

Every defect is applied to a copy of a layout on disk and read through the ``cje_import``
environment's own catalog (``CJEJsonlDataset``) and the estimation node, exactly as
``kedro run --pipelines estimation --env cje_import --params "cje_import.path=DIR"`` reads it. The
layouts: a small synthetic one (always) and a copy of the shared arena sample (skipped when absent).
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from arena_cje.cje import CJEDataError, CJEDataset, parse_jsonl
from arena_cje.pipelines.estimation.nodes import estimate_policy_values, tabulate_estimates
from arena_cje.settings import CONFIG_LOADER_ARGS

PROJECT_ROOT = Path(__file__).resolve().parents[2]

TARGETS = ("pa", "pb")


def write_synthetic_layout(root: Path, n: int = 60, seed: int = 0) -> Path:
    """A small valid layout: n prompts, base + two targets, 40 oracle labels, a probe of ``pa``."""
    rng = np.random.default_rng(seed)
    (root / "fresh_draws").mkdir(parents=True)
    (root / "probe_slice").mkdir()
    logged = []
    for i in range(n):
        base = float(-rng.uniform(5, 30))
        judge = float(rng.uniform(0, 1))
        row = {
            "prompt": f"question {i} about things", "response": "an answer " * int(rng.integers(1, 9)),
            "base_policy_logprob": base,
            "target_policy_logprobs": {t: min(base + float(rng.normal(0, 1)), -0.01) for t in TARGETS},
            "metadata": {"prompt_id": f"p{i:03d}"}, "judge_score": judge,
        }
        if i < 40:
            row["oracle_label"] = float(np.clip(judge + rng.normal(0, 0.1), 0, 1))
        logged.append(row)
    _write(root / "logged_data.jsonl", logged)
    for policy in ("base", *TARGETS):
        draws = [{"prompt_id": f"p{i:03d}", "prompt": f"question {i} about things", "response": "a fresh answer",
                  "judge_score": float(rng.uniform(0, 1)), "draw_idx": 0} for i in range(n)]
        _write(root / "fresh_draws" / f"{policy}_responses.jsonl", draws)
    probe = [{"prompt_id": f"p{i:03d}", "response": "a fresh answer", "judge_score": float(rng.uniform(0, 1)),
              "oracle_label": float(rng.uniform(0, 1)), "draw_idx": 0} for i in range(25)]
    _write(root / "probe_slice" / "pa_probe.jsonl", probe)
    return root


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(params=["synthetic", "arena_sample"])
def layout(request, tmp_path) -> Path:
    """A writable copy of a valid layout."""
    if request.param == "synthetic":
        return write_synthetic_layout(tmp_path / "synthetic")
    sample = request.getfixturevalue("arena_sample")  # skips when absent
    target = tmp_path / "arena_sample"
    for sub in ("fresh_draws", "probe_slice"):  # never ground_truth/
        shutil.copytree(sample / sub, target / sub)
    shutil.copy(sample / "logged_data.jsonl", target)
    return target


def read_layout(path: Path) -> tuple[DataCatalog, dict]:
    """The cje_import environment's catalog and parameters for ``cje_import.path=path``."""
    loader = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), env="cje_import",
                               runtime_params={"cje_import": {"path": str(path)}}, **CONFIG_LOADER_ARGS)
    return DataCatalog.from_config(loader["catalog"]), loader["parameters"]


def estimate(path: Path, **estimation):
    """The estimation node on the layout at ``path`` (fast estimators unless told otherwise)."""
    catalog, params = read_layout(path)
    est = copy.deepcopy(params["estimation"])
    est.update({"estimators": ["naive", "snips", "direct", "dr_cpo"], "calibrator": "isotonic"}, **estimation)
    result = estimate_policy_values(catalog.load("cje_logged_data"), catalog.load("cje_fresh_draws"),
                                    catalog.load("cje_probe_slices"), est)
    return result, tabulate_estimates(result, catalog.load("policy_truth"))


def edit_line(path: Path, number: int, change) -> dict:
    """Apply ``change`` to the JSON object on line ``number`` (1-based); return the new object."""
    lines = path.read_text().split("\n")
    row = json.loads(lines[number - 1])
    change(row)
    lines[number - 1] = json.dumps(row)
    path.write_text("\n".join(lines))
    return row


def set_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().split("\n")
    lines[number - 1] = text
    path.write_text("\n".join(lines))


def first_target(path: Path) -> str:
    return sorted(json.loads(path.read_text().split("\n")[0])["target_policy_logprobs"])[0]


def data_error(exc: BaseException) -> CJEDataError:
    """The CJEDataError behind ``exc`` (Kedro's catalog prefixes load errors with the dataset name)."""
    while exc is not None and not isinstance(exc, CJEDataError):
        exc = exc.__cause__
    assert exc is not None, "no CJEDataError in the exception chain"
    return exc


def raises_at(path: Path, file: Path, line: int | None, field: str | None, match: str) -> CJEDataError:
    with pytest.raises(Exception, match=match) as info:
        estimate(path)
    e = data_error(info.value)
    assert Path(e.file) == file and e.line == line and e.field == field and e.in_file, e
    assert str(e).startswith(f"file '{file}'" + (f", line {line}" if line is not None else "")), e
    return e


# --- the table of issue 15, one row each --------------------------------------------------------


def test_string_logprob_names_file_line_field(layout):
    logged = layout / "logged_data.jsonl"
    t = first_target(logged)
    edit_line(logged, 5, lambda r: r["target_policy_logprobs"].update({t: "-12.x"}))
    e = raises_at(layout, logged, 5, f"target_policy_logprobs.{t}", "expected a number or null, got a string '-12.x'")
    assert e.other_line is None


def test_judge_score_out_of_range_names_file_line_field(layout):
    logged = layout / "logged_data.jsonl"
    edit_line(logged, 3, lambda r: r.update(judge_score=7.5))
    raises_at(layout, logged, 3, "judge_score", r"value 7\.5 outside \[0\.0, 1\.0\]")


def test_positive_logprob_names_file_line_field(layout):
    logged = layout / "logged_data.jsonl"
    edit_line(logged, 8, lambda r: r.update(base_policy_logprob=2.5))
    raises_at(layout, logged, 8, "base_policy_logprob", r"value 2\.5 outside \[-inf, 0\.0\]")


def test_broken_json_line_names_file_and_line(layout):
    logged = layout / "logged_data.jsonl"
    text = logged.read_text().split("\n")[10]
    set_line(logged, 11, text[: len(text) // 2])  # a line cut in the middle, as a crashed writer leaves it
    raises_at(layout, logged, 11, None, r"not valid JSON \(.*, column \d+\); expected one JSON object per line")


@pytest.mark.parametrize("which", ["logged", "fresh", "probe"])
def test_empty_file_names_the_file_and_the_layout_expected(layout, which):
    path = {"logged": layout / "logged_data.jsonl",
            "fresh": sorted((layout / "fresh_draws").glob("*.jsonl"))[0],
            "probe": sorted((layout / "probe_slice").glob("*.jsonl"))[0]}[which]
    path.write_text("\n")  # an empty file (a newline only: blank lines are not rows)
    expected = {"logged": "logged_data.jsonl: one JSON object per line",
                "fresh": r"fresh_draws/\{policy\}_responses.jsonl",
                "probe": r"probe_slice/\{policy\}_probe.jsonl"}[which]
    raises_at(layout, path, None, None, f"empty file \\(no JSON line\\); expected {expected}")


def test_duplicate_prompt_id_in_logged_data_names_both_lines(layout):
    logged = layout / "logged_data.jsonl"
    first = json.loads(logged.read_text().split("\n")[1])
    pid = first["metadata"]["prompt_id"]
    edit_line(logged, 7, lambda r: r["metadata"].update(prompt_id=pid))  # a different row, the same prompt_id
    e = raises_at(layout, logged, 7, "prompt_id", f"duplicate prompt_id '{pid}': also on line 2 .*one row per prompt")
    assert e.other_line == 2


def test_duplicate_draw_within_one_policys_fresh_draws_names_both_lines(layout):
    fresh = sorted((layout / "fresh_draws").glob("*.jsonl"))[-1]
    pid = json.loads(fresh.read_text().split("\n")[0])["prompt_id"]
    edit_line(fresh, 4, lambda r: r.update(prompt_id=pid))
    e = raises_at(layout, fresh, 4, "prompt_id", rf"duplicate draw \(prompt_id, draw_idx\) \('{pid}', 0.0\): also on line 1")
    assert e.other_line == 1


@pytest.mark.parametrize("which", ["fresh", "probe"])
def test_prompts_missing_from_the_logged_data_are_counted_and_named(layout, which):
    path = sorted((layout / ("fresh_draws" if which == "fresh" else "probe_slice")).glob("*.jsonl"))[0]
    for number, new_id in ((2, "not_logged_1"), (5, "not_logged_2")):
        edit_line(path, number, lambda r, new_id=new_id: r.update(prompt_id=new_id))
    what = "fresh draws" if which == "fresh" else "probe responses"
    e = raises_at(layout, path, 2, "prompt_id",
                  rf"2 of \d+ {what} are for prompts not in the logged data \(first: 'not_logged_1', 'not_logged_2'; lines 2, 5\)")
    assert "expected the prompt_ids of logged_data.jsonl" in e.problem


def _zero_targets(row: dict) -> None:
    row["target_policy_logprobs"] = {t: 0.0 for t in row["target_policy_logprobs"]}


def _same_everywhere(row: dict) -> None:
    row["target_policy_logprobs"] = {t: row["base_policy_logprob"] for t in row["target_policy_logprobs"]}


@pytest.mark.parametrize(("change", "reason", "column"), [
    (_zero_targets, "with a log-prob of exactly 0.0", "n_zero_logprob"),
    (_same_everywhere, "with the same log-prob under every policy", "n_identical_logprobs"),
])
def test_suspect_logprobs_are_a_counted_warning_or_an_error(tmp_path, change, reason, column):
    """The synthetic layout (no suspect rows of its own); the arena sample's real ones are below."""
    layout = write_synthetic_layout(tmp_path)
    logged = layout / "logged_data.jsonl"
    for number in (4, 9):
        edit_line(logged, number, change)
    result, table = estimate(layout)
    table = table[table.policy.isin(TARGETS)]
    weighted = table[table.estimator.isin(["snips", "dr_cpo"])]
    assert len(weighted) == 4 and (weighted.status != "ok").all()
    assert weighted.reasons.str.contains(f"2 logged row\\(s\\) {reason} .*lines 4, 9 of logged_data.jsonl").all()
    unweighted = table[table.estimator.isin(["naive", "direct"])]  # these never read log-probs
    assert not unweighted.reasons.str.contains(reason).any()
    diagnostics = result.weights_table.set_index("policy")
    assert diagnostics.loc[list(TARGETS), column].tolist() == [2, 2]
    # The parameter turns the warning into an error naming the first such line.
    field = f"target_policy_logprobs.{TARGETS[0]}" if column == "n_zero_logprob" else "target_policy_logprobs"
    with pytest.raises(CJEDataError, match="set estimation.suspect_logprobs: warn to estimate anyway") as info:
        estimate(layout, suspect_logprobs="error")
    assert (Path(info.value.file), info.value.line, info.value.field) == (logged, 4, field)
    assert "(2 such lines: 4, 9)" in info.value.problem


def test_the_arena_samples_own_zero_logprobs_are_counted(arena_sample):
    """Lines 351 and 574 of the real sample score 0.0 (574: "SolidGoldMagikarp" under base and clone)."""
    result, table = estimate(arena_sample, estimators=["snips"])
    reasons = table.set_index("policy")["reasons"]
    assert "2 logged row(s) with a log-prob of exactly 0.0" in reasons["parallel_universe_prompt"]
    assert "lines 351, 574 of logged_data.jsonl" in reasons["parallel_universe_prompt"]
    assert "1 logged row(s) with a log-prob of exactly 0.0 (failed" not in reasons["clone"]
    assert "line 574 of logged_data.jsonl" in reasons["clone"] and "line 574 of" in reasons["unhelpful"]
    with pytest.raises(CJEDataError) as info:
        estimate(arena_sample, suspect_logprobs="error")
    assert (info.value.line, info.value.field) == (351, "target_policy_logprobs.parallel_universe_prompt")


def test_unchanged_layouts_read_without_error(layout):
    result, table = estimate(layout, estimators=["naive"])
    assert set(table.policy) >= {"pa", "pb"} or set(table.policy) >= {"clone", "unhelpful"}


# --- smaller pieces ---------------------------------------------------------------------------


def test_parse_jsonl_keeps_line_numbers_and_skips_blank_lines():
    frame = parse_jsonl(b'\xef\xbb\xbf{"a": 1}\r\n\n  \n{"a": "x\xe2\x80\xa8y", "b": null}\n', "f.jsonl", "logged")
    assert frame.index.tolist() == [1, 4] and frame.attrs["cje_source"] == "f.jsonl"
    assert frame.loc[4, "a"] == "x\u2028y" and frame.loc[1, "a"] == 1  # values as parsed, no dtype guessing


@pytest.mark.parametrize(("data", "line", "match"), [
    (b'{"a": 1}\n[1, 2]\n', 2, "expected a JSON object .* got a list"),
    (b'{"a": 1}\n{"a": \xff}\n', 2, "not UTF-8 text"),
    (b'{"a": 1}\n{"a": ' + b"9" * 5000 + b"}\n", 2, "not usable JSON"),
    (b'{"a": 1}\n' + b"[" * 100_000 + b"\n", 2, "not usable JSON"),
])
def test_parse_jsonl_names_the_line_of_an_unreadable_line(data, line, match):
    with pytest.raises(CJEDataError, match=match) as info:
        parse_jsonl(data, "f.jsonl", "fresh_draws")
    assert (info.value.file, info.value.line, info.value.field) == ("f.jsonl", line, None)


def test_errors_survive_pickling_with_their_attributes():
    e = CJEDataError("bad", file="f.jsonl", line=3, field="judge_score", other_line=1)
    back = pickle.loads(pickle.dumps(e))
    assert (str(back), back.file, back.line, back.field, back.other_line) == (str(e), "f.jsonl", 3, "judge_score", 1)


def test_integral_prompt_ids_match_across_files_and_odd_ones_are_refused():
    logged = parse_jsonl(b'{"prompt_id": 7, "judge_score": 0.5}\n{"prompt_id": "x", "judge_score": 0.5}\n', "l.jsonl", "logged")
    fresh = parse_jsonl(b'{"prompt_id": 7.0, "judge_score": 0.4}\n', "f.jsonl", "fresh_draws")
    assert CJEDataset.from_frames(logged, {"t": fresh}).fresh["t"].prompt_id.tolist() == ["7"]
    bad = parse_jsonl(b'{"prompt_id": [7], "judge_score": 0.5}\n', "l.jsonl", "logged")
    with pytest.raises(CJEDataError, match=r"line 1, field 'prompt_id': expected a string \(or integer\) id, got a list"):
        CJEDataset.from_frames(bad)
