"""The reference-layout writer and its reader agree: writer -> JSONL files -> reader gives back the run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from arena_cje.cje.data import CJEDataset
from arena_cje.cje.reference_layout import DRAW_COLUMNS, build_reference_layout
from arena_cje.cje.audit import with_inclusion_probs
from arena_cje.datasets import CJEJsonlDataset

POLICIES = ["pi_0", "pi_a", "pi_b"]
KEY = ["prompt_id", "policy", "draw_idx"]


def _run_tables(n: int = 12, seed: int = 3) -> dict[str, pd.DataFrame]:
    """A small run: every (prompt, policy) responds; one teacher-forcing call failed; one judge score missing."""
    rng = np.random.default_rng(seed)
    ids = [f"p{i:02d}" for i in range(n)]
    prompts = pd.DataFrame({"prompt_id": ids, "prompt": [f"Question {i} é?" for i in range(n)],
                            "split": ["calibration" if i % 3 == 0 else "evaluation" for i in range(n)]})
    rows = [(pid, pol) for pol in POLICIES for pid in ids]
    responses = pd.DataFrame({
        "prompt_id": [r[0] for r in rows], "policy": [r[1] for r in rows], "draw_idx": 0,
        "response": [f"answer {pid} by {pol} 😀" for pid, pol in rows],
        "logprob": -rng.uniform(5, 50, len(rows)), "n_tokens": rng.integers(3, 40, len(rows)), "error": None,
    })
    logprobs = pd.DataFrame({"prompt_id": [r[0] for r in rows], "policy": [r[1] for r in rows],
                             "logprob": -rng.uniform(5, 50, len(rows))})
    logprobs.loc[(logprobs["prompt_id"] == "p04") & (logprobs["policy"] == "pi_a"), "logprob"] = np.nan  # failed call
    judge = responses[KEY].assign(judge_score=rng.uniform(0, 1, len(rows)))
    judge.loc[(judge["prompt_id"] == "p05") & (judge["policy"] == "pi_b"), "judge_score"] = np.nan
    calibration = prompts.loc[prompts["split"] == "calibration", "prompt_id"]
    oracle = pd.concat([
        pd.DataFrame({"prompt_id": calibration, "policy": "pi_0", "draw_idx": 0, "purpose": "calibration",
                      "oracle_label": rng.uniform(0, 1, len(calibration)), "inclusion_prob": len(calibration) / n}),
        pd.DataFrame({"prompt_id": ["p01", "p02", "p07"], "policy": "pi_a", "draw_idx": 0, "purpose": "probe",
                      "oracle_label": [0.2, 0.9, 0.5], "inclusion_prob": [0.5, 0.25, 0.25]}),
    ], ignore_index=True)
    return {"prompts": prompts, "responses": responses, "logprobs": logprobs, "judge_scores": judge,
            "oracle_labels": oracle}


def _jsonl(frame: pd.DataFrame) -> bytes:
    """JSONL text as the catalog's save arguments write it (``lines``, ``records``)."""
    return frame.to_json(lines=True, orient="records").encode("utf-8")


def _save_and_load(frame: pd.DataFrame, path, layout: str) -> pd.DataFrame:
    """Through the project's Kedro dataset, as a run writes and estimation reads the file."""
    dataset = CJEJsonlDataset(filepath=str(path), layout=layout)
    dataset.save(frame)
    return dataset.load()


def test_writer_then_reader_restores_the_run_through_jsonl_files(tmp_path):
    t = _run_tables()
    layout = build_reference_layout(**t, logging_policy="pi_0")
    logged = _save_and_load(layout.logged, tmp_path / "logged_data.jsonl", "logged")
    fresh = {p: _save_and_load(f, tmp_path / f"{p}_responses.jsonl", "fresh_draws") for p, f in layout.fresh_draws.items()}
    probes = {p: _save_and_load(f, tmp_path / f"{p}_probe.jsonl", "probe") for p, f in layout.probe_slices.items()}
    data = with_inclusion_probs(CJEDataset.from_frames(logged, fresh, probes), probes)

    # Logged rows: pi_0's responses, every policy's teacher-forced log-prob, calibration labels only.
    n = len(t["prompts"])
    assert list(data.logged["prompt_id"]) == list(t["prompts"]["prompt_id"]) and data.n_dropped["logged"] == 0
    lp = t["logprobs"].pivot(index="prompt_id", columns="policy", values="logprob").loc[data.logged["prompt_id"]]
    assert sorted(data.logprobs.columns) == POLICIES
    for policy in POLICIES:  # pandas' JSON writer keeps 10 decimals; NaN stays NaN
        np.testing.assert_allclose(data.logprobs[policy].to_numpy(), lp[policy].to_numpy(), rtol=0, atol=1e-10)
    assert np.isnan(data.logprobs.loc[data.logged["prompt_id"] == "p04", "pi_a"]).all()
    np.testing.assert_allclose(data.logged["base_logprob"].to_numpy(), lp["pi_0"].to_numpy(), rtol=0, atol=1e-10)
    labels = t["oracle_labels"].query("purpose == 'calibration'").set_index("prompt_id")["oracle_label"]
    np.testing.assert_allclose(data.logged["oracle_label"].to_numpy(), labels.reindex(data.logged["prompt_id"]).to_numpy(),
                               rtol=0, atol=1e-10)
    assert data.n_labelled == (t["prompts"]["split"] == "calibration").sum()

    # Fresh draws: every policy's own responses, with their generation log-prob and judge score.
    assert sorted(data.fresh) == POLICIES
    resp = t["responses"].set_index(["prompt_id", "policy"])
    judge = t["judge_scores"].set_index(["prompt_id", "policy"])["judge_score"]
    for policy, frame in data.fresh.items():
        idx = list(zip(frame["prompt_id"], [policy] * len(frame)))
        np.testing.assert_allclose(frame["logprob"].to_numpy(), resp.loc[idx, "logprob"].to_numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(frame["judge_score"].to_numpy(), judge.loc[idx].to_numpy(), rtol=0, atol=1e-10)
    assert len(data.fresh["pi_b"]) == n - 1 and data.n_dropped["fresh_draws[pi_b]"] == 1  # missing judge score
    assert list(layout.fresh_draws["pi_a"].columns) == DRAW_COLUMNS

    # Probes: the oracle-labelled pi_a responses with their inclusion probabilities.
    assert list(data.probes) == ["pi_a"]
    probe = data.probes["pi_a"].sort_values("prompt_id")
    assert list(probe["prompt_id"]) == ["p01", "p02", "p07"]
    assert list(probe["oracle_label"]) == [0.2, 0.9, 0.5] and list(probe["inclusion_prob"]) == [0.5, 0.25, 0.25]


def test_missing_values_are_written_as_null_never_as_numbers():
    layout = build_reference_layout(**_run_tables(), logging_policy="pi_0")
    text = _jsonl(layout.logged).decode()
    row = next(json.loads(line) for line in text.splitlines() if '"p04"' in line)
    assert row["target_policy_logprobs"]["pi_a"] is None and row["oracle_label"] is None
    assert row["metadata"] == {"prompt_id": "p04", "split": "evaluation", "policy": "pi_0"}
    assert "NaN" not in text


def test_prompts_without_a_logged_response_are_left_out_and_counted(caplog):
    t = _run_tables()
    t["responses"].loc[(t["responses"]["prompt_id"] == "p02") & (t["responses"]["policy"] == "pi_0"), "error"] = "HTTP 500"
    with caplog.at_level("WARNING"):
        layout = build_reference_layout(**t, logging_policy="pi_0")
    assert layout.n_orphans == 2 and "2 responses of 1 prompts left out" in caplog.text
    assert all("p02" not in set(f["prompt_id"]) for f in [*layout.fresh_draws.values(), *layout.probe_slices.values()])
    CJEDataset.from_frames(layout.logged, layout.fresh_draws, layout.probe_slices)  # the reader accepts it


@pytest.mark.parametrize("with_inclusion", [True, False])
def test_probe_slices_carry_inclusion_probs_only_when_the_labels_do(with_inclusion):
    t = _run_tables()
    if not with_inclusion:
        t["oracle_labels"] = t["oracle_labels"].drop(columns="inclusion_prob")
    layout = build_reference_layout(**t, logging_policy="pi_0")
    assert ("inclusion_prob" in layout.probe_slices["pi_a"].columns) is with_inclusion
