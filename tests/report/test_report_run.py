"""Acceptance: the default `kedro run` writes the report, and every section of it has content."""


import pytest

from ..conftest import copy_project
from .test_report import check_report_html


@pytest.mark.slow
def test_default_kedro_run_writes_the_report(tmp_path):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path)
    bootstrap_project(project)
    params = {"prompts": {"output_samples": 200, "pool_size": 1000}}
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run()
    out = project / "data" / "08_reporting"
    content = check_report_html((out / "report.html").read_text())
    assert content["labeling"]["table"] == 1  # the labeling summary is there in a full run
    markdown = (out / "report.md").read_text()
    for png in ("forest_plot", "calibration_plot", "weight_diagnostics_plot", "differences_plot"):
        assert (out / f"{png}.png").stat().st_size > 10_000
        assert f"]({png}.png)" in markdown
    assert (out / "label_budget.csv").exists() and (out / "stage_summary.csv").exists()
    # Every pairwise comparison and the decision are tables of the run and the verdict section states them.
    import pandas as pd

    comparisons = pd.read_csv(project / "data" / "07_model_output" / "comparisons.csv")
    decisions = pd.read_csv(project / "data" / "07_model_output" / "policy_decisions.csv")
    direct = comparisons[comparisons["estimator"] == "direct"]
    assert len(direct) == 6 and direct[["p_value", "p_bh", "p_bonferroni"]].notna().all().all()
    assert (direct["p_bonferroni"] >= direct["p_value"]).all()
    assert set(decisions["estimator"]) >= {"direct", "stacked_dr"}
    assert "Best policy: " in content["verdicts"]["text"]
    # results.json: the same tables, with what fed them (every policy's fresh draws and probe, hashed).
    import json

    results = json.loads((project / "data" / "07_model_output" / "results.json").read_text())
    policies = {"pi_0", "pi_hot", "pi_cot", "pi_concise"}
    assert set(results["inputs"]["cje_fresh_draws"]) == policies
    assert set(results["inputs"]["cje_probe_slices"]) == policies - {"pi_0"}
    assert len(results["comparisons"]) == len(comparisons)
    assert results["run"]["run_id"] and results["run"]["pipeline_names"] is None  # the default pipeline
