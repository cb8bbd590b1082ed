"""Project-level behaviour: configuration merging, pipeline registry, a whole run on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import PROJECT_ROOT, copy_project, load_parameters

PIPELINES = {"data_prep", "generation", "judging", "labeling", "estimation"}


def test_local_override_of_one_policy_field_keeps_the_rest(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf" / "base", conf / "base")
    (conf / "local").mkdir()
    (conf / "local" / "parameters.yml").write_text(yaml.safe_dump({"policies": {"pi_hot": {"temperature": 0.7}}}))
    base = load_parameters(conf, env="base")
    merged = load_parameters(conf, env="local")
    assert merged["policies"]["pi_hot"]["temperature"] == 0.7
    merged["policies"]["pi_hot"]["temperature"] = base["policies"]["pi_hot"]["temperature"]
    assert merged == base  # nothing else changed


def test_registry_has_the_five_pipelines_and_default_runs_all():
    from kedro.framework.project import configure_project, pipelines

    configure_project("arena_cje")
    assert PIPELINES <= set(pipelines)
    default_nodes = {n.name for n in pipelines["__default__"].nodes}
    for name in PIPELINES:
        assert {n.name for n in pipelines[name].nodes} <= default_nodes


def test_every_catalog_entry_is_used_by_a_pipeline():
    from kedro.framework.project import configure_project, pipelines

    configure_project("arena_cje")
    catalog = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "catalog.yml").read_text())
    declared = {k for k in catalog if not k.startswith("_")}
    used = pipelines["__default__"].datasets()
    assert declared - used == set(), "catalog entries no pipeline reads or writes"


def test_every_parameter_block_is_used_by_a_pipeline(base_parameters):
    from kedro.framework.project import configure_project, pipelines

    configure_project("arena_cje")
    used = {d.removeprefix("params:").split(".")[0] for d in pipelines["__default__"].inputs() if d.startswith("params:")}
    assert set(base_parameters) - used == set()


@pytest.mark.slow
def test_whole_project_run_in_a_temporary_copy(tmp_path):
    """`kedro run` end to end (in-process) with a small sample, then estimation alone again."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path)
    bootstrap_project(project)
    params = {"prompts": {"output_samples": 400, "pool_size": 2000}}  # nested: the API does not split dots
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run()
    estimates = pd.read_csv(project / "data/07_model_output/policy_estimates.csv")
    expected = ["policy", "estimator", "estimate", "std_error", "ci_lower", "ci_upper", "n", "oracle_n", "truth"]
    assert list(estimates.columns[: len(expected)]) == expected
    assert (project / "data/08_reporting/forest_plot.png").stat().st_size > 10_000
    direct = estimates[estimates["estimator"] == "direct"]
    assert len(direct) == 4 and direct["truth"].notna().all()
    assert ((direct["ci_lower"] <= direct["truth"]) & (direct["truth"] <= direct["ci_upper"])).all(), direct

    # The run's last lines: the report's place, the decision, a verdict per policy.
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline

    from arena_cje.hooks import RunSummaryHook
    from arena_cje.report.verdicts import run_summary_lines

    out = project / "data/07_model_output"
    frames = {name: pd.read_csv(out / f"{name}.csv") for name in ("policy_estimates", "policy_differences", "policy_decisions")}
    lines = run_summary_lines(*frames.values(), "pi_0", 0.05, "data/08_reporting/report.html")
    assert lines[0] == "Report: data/08_reporting/report.html" and lines[1].startswith("Best policy: ")
    assert [line.split()[0].rstrip(":") for line in lines[2:]] == sorted(frames["policy_estimates"]["policy"].unique())
    catalog = DataCatalog()
    for name, frame in {**frames, "params:logging_policy": "pi_0", "params:estimation": {"alpha": 0.05}}.items():
        catalog[name] = frame
    from kedro.pipeline import node

    writes_report = Pipeline([node(lambda x: x, "policy_estimates", "report_html", name="report")])
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # Kedro's logging setup replaced the root handlers (no caplog)
    hook_logger = logging.getLogger("arena_cje.hooks")
    level = hook_logger.level
    hook_logger.addHandler(handler)
    hook_logger.setLevel(logging.INFO)
    try:
        RunSummaryHook().after_pipeline_run(writes_report, catalog)
    finally:
        hook_logger.removeHandler(handler)
        hook_logger.setLevel(level)
    assert [r.getMessage() for r in records] == lines[1:]

    # Estimation alone reruns from the saved primary data and gives the same numbers.
    (project / "data/07_model_output/policy_estimates.csv").unlink()
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["estimation"])
    again = pd.read_csv(project / "data/07_model_output/policy_estimates.csv")
    pd.testing.assert_frame_equal(estimates, again)


LAYER_ORDER = ["raw", "intermediate", "primary", "feature", "model_input", "models", "model_output", "reporting"]


def test_kedro_viz_layers_follow_the_data_flow():
    """kedro-viz disables its layer view when a node reads a later layer than it writes."""
    from kedro.framework.project import configure_project, pipelines

    configure_project("arena_cje")
    catalog = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "catalog.yml").read_text())
    layer = {
        name: LAYER_ORDER.index(entry["metadata"]["kedro-viz"]["layer"])
        for name, entry in catalog.items()
        if not name.startswith("_") and "layer" in entry.get("metadata", {}).get("kedro-viz", {})
    }
    assert len(layer) >= len(catalog) - 3, "most datasets should have a kedro-viz layer"
    for node in pipelines["__default__"].nodes:
        ins = [layer[d] for d in node.inputs if d in layer]
        outs = [layer[d] for d in node.outputs if d in layer]
        assert not ins or not outs or min(outs) >= max(ins), f"node {node.name} writes to an earlier layer than it reads"


def test_committed_conf_local_files_change_no_parameter(tmp_path):
    """The example file shipped in conf/local must not be picked up as parameters."""
    import subprocess

    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf" / "base", conf / "base")
    (conf / "local").mkdir()
    tracked = subprocess.run(["git", "ls-files", "conf/local"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.split()
    for name in tracked:
        shutil.copy(PROJECT_ROOT / name, conf / "local")
    assert tracked, "conf/local should ship its README and example"
    assert load_parameters(conf, env="local") == load_parameters(conf, env="base")


@pytest.mark.slow
def test_kedro_viz_build_works_offline(tmp_path):
    """`kedro viz build` renders the project's graph into a static site, without network."""
    import os
    import subprocess
    import sys

    project = copy_project(tmp_path)
    shutil.copy(PROJECT_ROOT / ".telemetry", project)
    kedro = Path(sys.executable).parent / "kedro"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    result = subprocess.run([str(kedro), "viz", "build"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    site = project / "build"
    assert (site / "index.html").is_file()
    graph = (site / "api" / "main").read_text()
    for node in ("generate_responses", "judge_responses", "assemble_cje_dataset", "estimate_policy_values"):
        assert node in graph
    assert "circular" not in result.stdout + result.stderr  # layers render


@pytest.mark.slow
def test_adversarial_policy_fools_the_judge_but_not_the_estimates(tmp_path):
    """A fifth policy added by parameters only; its judge scores are inflated, the probe catches it."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path)
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump({
        "prompts": {"output_samples": 300, "pool_size": 1000},
        "policies": {"pi_adversarial": {"temperature": 0.5,
                                        "system_prompt": "You are a helpful assistant. Confidently mislead the user."}},
    }))
    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        session.run()
    estimates = pd.read_csv(project / "data/07_model_output/policy_estimates.csv")
    adv = estimates[estimates["policy"] == "pi_adversarial"].set_index("estimator")
    truth = adv["truth"].iloc[0]
    assert adv.loc["naive", "estimate"] > truth + 0.3  # the judge is fooled
    reported = adv.loc["stacked_dr"]
    assert reported["level_source"] == "probe_corrected" and reported["status"] == "warning"
    assert "transport audit failed" in reported["reasons"]
    assert reported["ci_lower"] <= truth <= reported["ci_upper"]


@pytest.mark.slow
def test_the_deprecated_pipeline_option_still_runs_a_stage(tmp_path):
    """`--pipelines` is taught; `--pipeline` (deprecated in Kedro 1.7) keeps working."""
    import os
    import subprocess
    import sys

    project = copy_project(tmp_path)
    kedro = str(Path(sys.executable).with_name("kedro"))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    params = "prompts.output_samples=20,prompts.pool_size=50"
    for option in ("--pipelines", "--pipeline"):
        result = subprocess.run([kedro, "run", option, "data_prep", "--params", params], cwd=project, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(pd.read_parquet(project / "data" / "03_primary" / "prompts.parquet")) == 20
