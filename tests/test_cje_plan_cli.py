"""``kedro cje-plan``: the planner as a command that needs no labels (simulated-world pilot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from arena_cje.cli import format_plan_table

from .conftest import copy_project

KEDRO = str(Path(sys.executable).with_name("kedro"))


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    return subprocess.run([KEDRO, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cje_plan_prints_allocations_within_budget_from_the_simulated_world(tmp_path):
    """~40 s: Kedro start-up plus a 200-prompt simulated pilot under 2 fold partitions."""
    project = copy_project(tmp_path)
    result = _kedro(project, "cje-plan", "--budget", "80", "--budget", "200", "--comparison", "pi_cot-pi_0",
                    "--prompt-cost", "0.01", "--partitions", "2", "--params", "prompts.output_samples=200")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "simulated world (200 prompts, 50 labels" in out and "$0.30 per label" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("pi_cot - pi_0")]
    assert len(rows) == 2
    (b1, n1, m1, p1, c1, h1, mde1), (b2, n2, m2, p2, c2, h2, mde2) = [[float(x) for x in r[3:]] for r in rows]
    assert c1 <= b1 and c2 <= b2 and m1 < n1 and p1 >= 50  # probes of labeling.probe_size for every target
    assert h2 < h1 and mde2 < mde1 and mde1 > h1 / 2  # more money, narrower; MDE ~ (1.96 + 0.84) SE


@pytest.mark.slow
def test_cje_plan_without_prices_asks_for_a_prompt_cost(tmp_path):
    """~30 s of Kedro start-up; the command stops before any pilot."""
    result = _kedro(copy_project(tmp_path), "cje-plan", "--budget", "50")
    assert result.returncode != 0 and "--prompt-cost" in result.stderr
    assert "Traceback" not in result.stderr


def test_plan_table_format_has_one_line_per_plan():
    import pandas as pd

    t = pd.DataFrame([{"comparison": "a - b", "budget": 10.0, "n_prompts": 100, "calibration_labels": 20,
                       "probe_labels": 0, "cost": 9.9, "half_width": 0.05, "mde": 0.07}])
    lines = format_plan_table(t, 0.05, 0.8)
    assert lines[2].split() == ["a", "-", "b", "10.00", "100", "20", "0", "9.90", "0.0500", "0.0700"]
    assert "95% CI" in lines[-1] and "80% power" in lines[-1]
