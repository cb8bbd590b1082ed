"""The labeling round trip in memory: export -> simulated platform file -> import -> oracle labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import arena_cje.pipelines.labeling.nodes as labeling_nodes
from arena_cje.crowd import RawFile
from arena_cje.pipelines.labeling.pipeline import create_export_pipeline, create_import_pipeline, create_pipeline

from ..crowd.fakes import FakeWorld
from .helpers import run_in_memory

POLICIES = ["pi_0", "pi_hot", "pi_cot", "pi_concise"]


@pytest.fixture
def world(monkeypatch):
    fake = FakeWorld()
    monkeypatch.setattr(labeling_nodes, "backend_from_params", lambda backend: fake)
    return fake


@pytest.fixture
def run_inputs():
    rng = np.random.default_rng(0)
    n = 120
    prompts = pd.DataFrame(
        {"prompt_id": [f"p{i:04d}" for i in range(n)], "prompt": [f"Question number {i}?" for i in range(n)],
         "split": np.where(rng.random(n) < 0.25, "calibration", "evaluation")}
    )
    # Response texts name neither policy nor prompt id, so the export can be checked for leaks.
    rows = [(pid, pol, 0, f"Reply {rng.integers(10**9)}", None) for pid in prompts["prompt_id"] for pol in POLICIES]
    responses = pd.DataFrame(rows, columns=["prompt_id", "policy", "draw_idx", "response", "error"])
    responses["n_tokens"] = responses["response"].str.split().str.len() + 1  # + end of turn
    responses["logprob"] = -0.7 * responses["n_tokens"]
    responses.loc[5, ["response", "error"]] = ["", "timeout"]  # a failed generation is never labelled
    judge = responses[["prompt_id", "policy", "draw_idx"]].assign(judge_score=rng.random(len(responses)))
    logprobs = responses[["prompt_id", "policy"]].assign(logprob=-rng.random(len(responses)) * 50)
    return {"prompts": prompts, "responses": responses, "judge_scores": judge, "logprobs": logprobs}


def _params(parameters, **labeling):
    params = {**parameters, "labeling": {**parameters["labeling"], "probe_size": 20, "gold_items": 15, "duplicate_items": 10, **labeling}}
    return params


def test_round_trip_restores_every_item(parameters, world, run_inputs):
    params = _params(parameters)
    out = run_in_memory(create_pipeline(), run_inputs, params)
    items, mapping, tasks = out["label_items"], out["label_task_mapping"], out["label_tasks"]

    # Blinded export: only the Surge columns, no judge score, no policy or prompt id anywhere.
    assert list(tasks.columns) == ["task_id", "prompt", "response", "instructions", "rating_min", "rating_max"]
    exported = tasks.to_csv(index=False)
    assert not any(p in exported for p in POLICIES[1:]) and "p00" not in exported
    assert tasks["task_id"].is_unique and set(tasks["task_id"]) == set(mapping["task_id"])
    # Policies are shuffled, not in blocks: the policy changes often along the task order.
    order = mapping.set_index("task_id").loc[tasks["task_id"], "policy"].to_numpy()
    assert (order[1:] != order[:-1]).mean() > 0.3

    # The private mapping restores prompt and (for non-gold tasks) response for every task.
    prompts = run_inputs["prompts"].set_index("prompt_id")["prompt"]
    resp = run_inputs["responses"].set_index(["prompt_id", "policy", "draw_idx"])["response"]
    joined = tasks.merge(mapping, on="task_id")
    assert (joined["prompt"] == joined["prompt_id"].map(prompts)).all()
    real = joined[joined["kind"] != "gold"]
    assert (real["response"].to_numpy() == resp.loc[list(zip(real["prompt_id"], real["policy"], real["draw_idx"]))].to_numpy()).all()

    # Selection: the calibration slice of pi_0 plus probe_size per target policy.
    calib = run_inputs["prompts"].query("split == 'calibration'")["prompt_id"]
    assert set(items.query("purpose == 'calibration'")["prompt_id"]) == set(calib) - {"p0001"}  # row 5 = p0001/pi_hot failed
    assert items.query("purpose == 'probe'").groupby("policy").size().to_dict() == {p: 20 for p in POLICIES[1:]}

    # Import: the file the simulated platform wrote is parsed, validated, aggregated.
    raw = out["crowd_ratings"]
    assert isinstance(raw, RawFile) and raw.data.startswith(b"task_id,worker_id,rating")
    labels = out["oracle_labels"]
    assert list(labels.columns[:5]) == ["prompt_id", "policy", "draw_idx", "oracle_label", "n_votes"]
    assert labels.columns[-1] == "purpose"
    key = ["prompt_id", "policy", "draw_idx"]
    assert labels[key].merge(items[key]).shape[0] == len(labels)  # every label maps back to a selected item
    assert len(labels) >= 0.95 * len(items)
    assert labels["oracle_label"].between(0, 1).all()
    truth = np.array([world.true_quality("", r) for r in resp.loc[list(zip(labels["prompt_id"], labels["policy"], labels["draw_idx"]))]])
    assert np.corrcoef(truth, labels["oracle_label"])[0, 1] > 0.8

    # Every worker who gave a valid vote is scored on the gold items.
    quality = out["worker_quality"]
    assert set(quality["worker_id"]) == set(out["valid_ratings"]["worker_id"])
    assert quality["n_gold"].sum() == out["valid_ratings"]["task_id"].isin(mapping.query("kind == 'gold'")["task_id"]).sum()

    # The CJE dataset estimation reads carries the calibration labels.
    logged = out["cje_logged_data"]
    labelled = logged[logged["oracle_label"].notna()]
    assert set(labelled["prompt_id"]) <= set(calib)
    assert len(labelled) == (labels["purpose"] == "calibration").sum()
    assert set(out["cje_probe_slices"]) == set(POLICIES[1:])

    summary = out["labeling_summary"]
    json.dumps(summary, allow_nan=False)
    assert summary["labels"]["needed"] == len(items)
    assert summary["labels"]["collected"] == len(labels)
    assert summary["cost"]["expected"] == pytest.approx(len(tasks) * 3 * params["labeling"]["price_per_label"])
    assert summary["agreement"]["overall"] is not None and summary["agreement"]["overall"] > 0.5
    assert set(summary["agreement"]["by_policy"]) == set(POLICIES)


def test_import_reads_a_label_studio_export_and_fails_on_mostly_bad_files(parameters, world, run_inputs):
    params = _params(parameters, gold_items=0, duplicate_items=0)
    exported = run_in_memory(create_export_pipeline(), run_inputs, params)
    mapping = exported["label_task_mapping"]
    ls_tasks = exported["label_studio_tasks"]
    export = [
        {"id": i, "data": t["data"], "annotations": [
            {"completed_by": w, "result": [{"from_name": "rating", "to_name": "response", "type": "number", "value": {"number": 7}}]}
            for w in (1, 2, 3)
        ]}
        for i, t in enumerate(ls_tasks)
    ]
    inputs = {**run_inputs, "label_task_mapping": mapping, "crowd_ratings": RawFile("export.json", json.dumps(export).encode())}
    out = run_in_memory(create_import_pipeline(), inputs, params)
    assert len(out["oracle_labels"]) == len(mapping)
    assert (out["oracle_labels"]["oracle_label"] == 0.7).all()
    assert out["labeling_summary"]["file"]["format"] == "label_studio_json"

    garbage = b"task_id,worker_id,rating\n" + b"".join(f"{t},w,99\n".encode() for t in mapping["task_id"])
    inputs["crowd_ratings"] = RawFile("bad.csv", garbage)
    with pytest.raises(Exception, match=r"bad.csv: \d+ of \d+ rows are invalid"):
        run_in_memory(create_import_pipeline(), inputs, params)


@pytest.mark.parametrize("name", ["valid_ratings", "quarantined_ratings", "worker_quality"])
def test_catalog_keeps_worker_ids_as_text(tmp_path, name):
    """Label Studio's annotator ids are numbers ("4"); a CSV round trip between nodes must not turn
    them into ints (a failed join of dropped ids) nor strip leading zeros ("007")."""
    from kedro_datasets.pandas import CSVDataset

    from ..test_project import catalog_config, resolve_datasets

    entry, _ = resolve_datasets([name], catalog_config())[name]  # an explicit entry or a dataset factory's
    assert entry["type"] == "pandas.CSVDataset"
    dataset = CSVDataset(filepath=str(tmp_path / "f.csv"), load_args=entry.get("load_args"))
    dataset.save(pd.DataFrame({"task_id": ["t1", "t2"], "worker_id": ["007", "4"], "rating": [3.0, 4.0]}))
    assert dataset.load()["worker_id"].tolist() == ["007", "4"]


def test_assembled_dataset_leaves_out_prompts_whose_logged_response_failed(caplog):
    """A failed logged response (real backends) must not leave orphan fresh draws: the reader refuses them."""
    from arena_cje.pipelines.labeling.nodes import assemble_cje_dataset

    key = ["prompt_id", "policy", "draw_idx"]
    prompts = pd.DataFrame({"prompt_id": ["p1", "p2"], "prompt": ["A?", "B?"], "split": ["calibration", "evaluation"]})
    rows = [(pid, pol) for pid in ("p1", "p2") for pol in ("pi_0", "pi_x")]
    responses = pd.DataFrame({
        "prompt_id": [r[0] for r in rows], "policy": [r[1] for r in rows], "draw_idx": 0,
        "response": ["a", "b", "c", "d"], "logprob": -1.0, "n_tokens": 3,
        "error": [None, None, "HTTP 500 after 7 attempts", None],  # p2's logged response failed
    })
    logprobs = pd.DataFrame({"prompt_id": ["p1", "p1"], "policy": ["pi_0", "pi_x"], "logprob": [-1.0, -2.0]})
    judge = responses[key].assign(judge_score=0.5)
    oracle = pd.DataFrame({"prompt_id": ["p1", "p2"], "policy": ["pi_0", "pi_x"], "draw_idx": 0,
                           "oracle_label": [0.4, 0.6], "purpose": ["calibration", "probe"]})
    with caplog.at_level("WARNING"):
        logged, fresh, probes = assemble_cje_dataset(prompts, responses, logprobs, judge, oracle, "pi_0")
    assert list(logged["prompt_id"]) == ["p1"]
    assert all(set(frame["prompt_id"]) == {"p1"} for frame in fresh.values())
    assert all(set(frame["prompt_id"]) <= {"p1"} for frame in probes.values())
    assert "1 responses of 1 prompts left out" in caplog.text
