"""`kedro run --env local_llm` end to end on a real model (tiny sample; in-process)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from .conftest import PROJECT_ROOT, copy_project

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_local_llm_environment_runs_the_whole_experiment(tmp_path):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path)
    shutil.copytree(PROJECT_ROOT / "conf" / "local_llm", project / "conf" / "local_llm")
    bootstrap_project(project)
    params = {
        "prompts": {"output_samples": 3, "pool_size": 50},
        "policy_defaults": {"max_tokens": 12},
        "labeling": {"probe_size": 2},
        "backend": {"local_transformers": {"token_store": str(project / "data/02_intermediate/tokens.sqlite")}},
    }
    with KedroSession.create(project_path=project, env="local_llm", runtime_params=params) as session:
        session.run()

    responses = pd.read_parquet(project / "data/03_primary/responses.parquet")
    assert len(responses) == 3 * 4 and responses["response"].str.len().gt(0).all()
    logprobs = pd.read_parquet(project / "data/03_primary/logprobs.parquet")
    assert (logprobs["logprob"].dropna() < 0).all()
    check = pd.read_json(project / "data/08_reporting/teacher_forcing_check.json", typ="series")
    assert bool(check["passed"])
    labels = pd.read_csv(project / "data/03_primary/oracle_labels.csv")
    assert len(labels) >= 3  # the LLM oracle rated every logged response
    estimates = pd.read_csv(project / "data/07_model_output/policy_estimates.csv")
    assert set(estimates["policy"]) == {"pi_0", "pi_hot", "pi_cot", "pi_concise"}
    assert estimates["truth"].isna().all()  # a real model has no known truth
    # Three labels are far too few to calibrate: the rows say so instead of reporting numbers.
    calibrated = estimates[estimates["estimator"] != "naive"]
    assert (calibrated["status"] == "refused").all()
    assert (project / "data/08_reporting/report.html").stat().st_size > 10_000
