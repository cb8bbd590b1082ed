"""Acceptance: a 0-10 judge works end to end on the simulated backend and gives the same verdicts as the 0-1 judge."""

import numpy as np
import pandas as pd
import pytest
import yaml

from ..conftest import copy_project


def _run(tmp_path, name: str, scale: list[float]):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    (tmp_path / name).mkdir()
    project = copy_project(tmp_path / name)
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump({
        "prompts": {"output_samples": 200, "pool_size": 1000}, "judge": {"scale": scale}}))
    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        session.run()
    out = project / "data"
    return {
        "judge": pd.read_parquet(out / "03_primary" / "judge_scores.parquet"),
        "estimates": pd.read_csv(out / "07_model_output" / "policy_estimates.csv"),
        "decisions": pd.read_csv(out / "07_model_output" / "policy_decisions.csv"),
        "report": (out / "08_reporting" / "report.md").read_text(),
    }


@pytest.mark.slow
def test_zero_to_ten_judge_end_to_end_matches_the_unit_judge(tmp_path):
    unit, ten = _run(tmp_path, "unit", [0, 1]), _run(tmp_path, "ten", [0, 10])
    # The judge answers on its own scale ...
    s1, s10 = unit["judge"]["judge_score"].to_numpy(float), ten["judge"]["judge_score"].to_numpy(float)
    assert np.nanmax(s10) > 1.5 and np.allclose(s10, 10 * s1, equal_nan=True)
    # ... and every calibrated estimate, status and decision is the same (naive is on the unit version of the scale).
    e1, e10 = unit["estimates"], ten["estimates"]
    assert (e1[["policy", "estimator", "status"]] == e10[["policy", "estimator", "status"]]).all().all()
    cols = ["estimate", "ci_lower", "ci_upper"]
    assert np.allclose(e1[cols].to_numpy(float), e10[cols].to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True)
    keys = ["estimator", "best", "runner_up", "decision_ready"]
    pd.testing.assert_frame_equal(unit["decisions"][keys], ten["decisions"][keys])
    verdicts = [line for line in unit["report"].splitlines() if line.startswith(("- [", "Best policy"))]
    assert verdicts and verdicts == [line for line in ten["report"].splitlines() if line.startswith(("- [", "Best policy"))]
