"""CJEDataset / EstimationConfig validation and stable folds."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from arena_cje.cje import CJEDataset, EstimationConfig, fold_of


def _logged(**over):
    rows = [
        {"prompt": "a", "response": "one two three", "base_policy_logprob": -3.0,
         "target_policy_logprobs": {"t": -2.0, "u": None}, "metadata": {"prompt_id": "x1"}, "judge_score": 0.5,
         "oracle_label": 0.4},
        {"prompt": "b", "response": "one", "base_policy_logprob": -1.0,
         "target_policy_logprobs": {"t": -1.5, "u": -0.5}, "prompt_id": "x2", "judge_score": 0.9, "oracle_label": None},
    ]
    df = pd.DataFrame(rows)
    for k, v in over.items():
        df[k] = v
    return df


def test_from_frames_parses_reference_layout():
    d = CJEDataset.from_frames(_logged(), {"t": pd.DataFrame({"prompt_id": ["x1"], "judge_score": [0.7], "draw_idx": [0], "response": ["a b"]})})
    assert list(d.logged.prompt_id) == ["x1", "x2"]  # metadata and top-level prompt_id
    assert d.logged.response_length.tolist() == [3.0, 1.0]  # word count
    assert np.isnan(d.logprobs.loc[0, "u"]) and d.logprobs.loc[1, "u"] == -0.5  # missing stays NaN
    assert d.n_labelled == 1
    assert d.policies == ["t", "u"]
    assert d.fresh["t"].response_length.tolist() == [2.0]


def test_missing_logprob_is_excluded_and_counted_not_imputed():
    from arena_cje.cje.weights import hajek_weights

    d = CJEDataset.from_frames(_logged())
    mask, logw, w = hajek_weights(d.logprobs["u"].to_numpy(), d.logged.base_logprob.to_numpy())
    assert mask.tolist() == [False, True] and logw.tolist() == [0.5] and w.tolist() == [1.0]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("judge_score", ["0.5", "high"], "frame 'logged', row 1, field 'judge_score': .*got a string 'high'"),
        ("judge_score", [0.5, 1.7], "frame 'logged', row 1, field 'judge_score'"),
        ("base_policy_logprob", [-1.0, 2.0], "frame 'logged', row 1, field 'base_policy_logprob'"),
        ("oracle_label", [True, 0.1], "frame 'logged', row 0, field 'oracle_label': .*boolean True"),
    ],
)
def test_validation_errors_name_frame_row_field(column, value, message):
    with pytest.raises(ValueError, match=message):
        CJEDataset.from_frames(_logged(**{column: value}))


def test_bad_target_logprob_and_missing_prompt_id_are_named():
    df = _logged()
    df.at[1, "target_policy_logprobs"] = {"t": "oops"}
    with pytest.raises(ValueError, match=r"row 1, field 'target_policy_logprobs.t': .*'oops'"):
        CJEDataset.from_frames(df)
    df = _logged()
    df.at[1, "prompt_id"] = None
    with pytest.raises(ValueError, match=r"frame 'logged', row 1, field 'prompt_id'"):
        CJEDataset.from_frames(df)


def test_probe_requires_labels_and_fresh_rejects_duplicates():
    with pytest.raises(ValueError, match=r"frame 'probes\[t\]'.*oracle_label"):
        CJEDataset.from_frames(_logged(), probes={"t": pd.DataFrame({"prompt_id": ["x1"], "judge_score": [0.2]})})
    dup = pd.DataFrame({"prompt_id": ["x1", "x1"], "judge_score": [0.2, 0.3], "draw_idx": [0, 0]})
    with pytest.raises(ValueError, match=r"frame 'fresh_draws\[t\]', row 1"):
        CJEDataset.from_frames(_logged(), {"t": dup})


def test_missing_judge_scores_are_dropped_and_counted():
    d = CJEDataset.from_frames(_logged(judge_score=[None, 0.3]))
    assert len(d.logged) == 1 and d.n_dropped["logged"] == 1


def test_config_rejects_unknown_keys_by_name():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_fold'\]"):
        EstimationConfig.from_params({"n_fold": 5})
    with pytest.raises(ValueError, match=r"gates: unknown key\(s\) \['ess'\]"):
        EstimationConfig.from_params({"gates": {"ess": 0.1}})
    with pytest.raises(ValueError, match="unknown estimator"):
        EstimationConfig.from_params({"estimators": ["dm"]})
    c = EstimationConfig.from_params({"estimators": ["naive", "snips", "direct"], "n_folds": 5, "alpha": 0.05})
    assert c.estimators == ("naive", "snips", "direct") and c.n_folds == 5


def test_folds_are_stable_across_processes_and_balanced():
    ids = [f"arena_{i}" for i in range(2000)]
    here = fold_of(ids, 5)
    code = "from arena_cje.cje import fold_of; print(''.join(map(str, fold_of([f'arena_{i}' for i in range(2000)], 5))))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": s, "PATH": ""}).stdout.strip() for s in ("1", "2")}
    assert outs == {"".join(map(str, here))}
    counts = np.bincount(here, minlength=5)
    assert counts.min() > 330  # roughly 400 each


def test_prompt_length_is_derived_when_prompts_are_present():
    logged = _logged(prompt=["what is two plus two", "hi"])
    fresh = {"t": pd.DataFrame({"prompt_id": ["x1"], "prompt": ["what is two plus two"], "judge_score": [0.7],
                                "draw_idx": [0], "response": ["a b"]})}
    d = CJEDataset.from_frames(logged, fresh)
    assert d.covariates == ("response_length", "prompt_length")
    assert d.logged.prompt_length.tolist() == [5.0, 1.0]
    assert d.fresh["t"].prompt_length.tolist() == [5.0]
    # Without a prompt column only the response length is derived; asking for it explicitly names the way.
    assert CJEDataset.from_frames(logged.drop(columns="prompt")).covariates == ("response_length",)
    with pytest.raises(ValueError, match="prompt_length from prompt"):
        CJEDataset.from_frames(logged.drop(columns="prompt"), covariates=("prompt_length",))
