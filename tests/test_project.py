"""Project-level behaviour: configuration merging, pipeline registry, a whole run on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import PROJECT_ROOT, copy_project, load_parameters

PIPELINES = {"data_prep", "generation", "judging", "labeling", "estimation", "reporting"}


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


def _registered() -> dict:
    from kedro.framework.project import configure_project, pipelines

    configure_project("arena_cje")
    return pipelines


def test_registry_has_the_stages_in_their_namespaces_and_default_runs_all():
    pipelines = _registered()
    assert PIPELINES <= set(pipelines)
    default_nodes = {n.name for n in pipelines["__default__"].nodes}
    assert len(default_nodes) == sum(len(pipelines[name].nodes) for name in PIPELINES)  # each node in one stage
    for name in PIPELINES:
        nodes = pipelines[name].nodes
        assert {n.name for n in nodes} <= default_nodes
        # Each stage is one Kedro namespace (a collapsible modular pipeline in kedro-viz) ...
        assert {n.namespace for n in nodes} == {name}, name
        assert all(n.name.startswith(f"{name}.") for n in nodes)
    # ... and the two halves of labeling are in labeling's.
    for half in ("labeling_export", "labeling_import"):
        assert {n.name for n in pipelines[half].nodes} < {n.name for n in pipelines["labeling"].nodes}
    # Datasets are not prefixed: the stages still connect through the catalog's names.
    for name in PIPELINES:
        assert not any(d.startswith(f"{name}.") for d in pipelines[name].datasets()), name


def test_api_nodes_and_report_nodes_are_tagged():
    """`api`: the nodes that send requests to a model, judge or oracle backend; `report`: the reporting stage."""
    pipelines = _registered()
    default = pipelines["__default__"]
    api = {n.name for n in default.only_nodes_with_tags("api").nodes}
    assert api == {"generation.generate_responses", "generation.teacher_force_logged_responses",
                   "generation.measure_echo_noise", "judging.judge_responses", "labeling.collect_ratings"}
    # Every node that builds a backend is tagged, except the true values (only a simulated world has them: no request).
    builds_backend = {n.name for n in default.nodes if "params:backend" in n.inputs}
    assert builds_backend - api == {"generation.compute_true_values"}
    assert {n.name for n in default.only_nodes_with_tags("report").nodes} == {n.name for n in pipelines["reporting"].nodes}


def test_reporting_reads_only_what_estimation_persisted():
    """`kedro run --pipelines reporting` must not re-estimate: it reads estimation's saved outputs, in the catalog."""
    pipelines = _registered()
    reporting, estimation = pipelines["reporting"], pipelines["estimation"]
    assert not {n.name for n in reporting.nodes} & {n.name for n in estimation.nodes}
    from_estimation = reporting.inputs() & estimation.all_outputs()
    assert from_estimation >= {"estimation_result", "policy_estimates", "policy_differences", "comparisons",
                               "policy_decisions"}
    catalog = catalog_config()
    assert all(name in catalog and catalog[name]["type"] != "MemoryDataset" for name in from_estimation)


def catalog_config(env: str = "base") -> dict:
    """The catalog as Kedro reads it: explicit entries and dataset factory patterns."""
    from kedro.config import OmegaConfigLoader

    from arena_cje.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)
    return dict(loader["catalog"])


def resolve_datasets(names, catalog: dict) -> dict[str, tuple[dict, str | None]]:
    """Each name's configuration (explicit, or from the pattern it matches) and that pattern (None if explicit)."""
    from kedro.io.catalog_config_resolver import CatalogConfigResolver

    resolver = CatalogConfigResolver(config=catalog, default_runtime_patterns={"{default}": {"type": "MemoryDataset"}})
    resolved = {}
    for name in names:
        if name in catalog:
            resolved[name] = (catalog[name], None)
        elif (pattern := resolver.match_dataset_pattern(name)) is not None:
            resolved[name] = (resolver.resolve_pattern(name), pattern)
    return resolved


#: Datasets that are not persisted: two within-run hand-overs of labeling (the run's identity, ``kedro_run``, is
#: a declared MemoryDataset with an empty default, so a run without RunProvenanceHook does not fail).
IN_MEMORY = {"crowd_ratings_fingerprint", "labeling_import_report"}


def test_every_catalog_entry_and_factory_is_used_by_a_pipeline():
    pipelines = _registered()
    catalog = catalog_config()
    used = {d for d in pipelines["__default__"].datasets() if not d.startswith("params:")}
    explicit = {k for k in catalog if "{" not in k}
    patterns = {k for k in catalog if "{" in k}
    assert explicit - used == set(), "catalog entries no pipeline reads or writes"
    resolved = resolve_datasets(used, catalog)
    matched = {pattern for _, pattern in resolved.values() if pattern}
    assert patterns - matched == set(), "dataset factories no pipeline dataset matches"
    # The factories stand for exactly the entries they replaced, at the same paths.
    by_pattern = {p: sorted(n for n, (_, q) in resolved.items() if q == p) for p in patterns}
    assert by_pattern == {
        "{name}_plot": ["calibration_plot", "differences_plot", "forest_plot", "weight_diagnostics_plot"],
        "label_task{suffix}": ["label_task_mapping", "label_tasks", "label_tasks_generic"],
        "{outcome}_ratings": ["quarantined_ratings", "valid_ratings"],
    }
    for name in by_pattern["{name}_plot"]:
        assert resolved[name][0]["filepath"] == f"data/08_reporting/{name}.png"
    for name in by_pattern["label_task{suffix}"] + by_pattern["{outcome}_ratings"]:
        assert resolved[name][0]["filepath"] == f"data/03_primary/labeling/{name}.csv"
    # Nothing else is left to a default MemoryDataset (a new dataset meant to be persisted would be).
    assert used - set(resolved) == IN_MEMORY


def test_every_parameter_block_is_used_by_a_pipeline(base_parameters):
    pipelines = _registered()
    used = {d.removeprefix("params:").split(".")[0] for d in pipelines["__default__"].inputs() if d.startswith("params:")}
    assert set(base_parameters) - used == set()


def test_every_parameter_a_node_reads_is_declared_and_no_node_reads_them_all(base_parameters):
    pipelines = _registered()
    for node in pipelines["__default__"].nodes:
        assert "parameters" not in node.inputs, f"{node.name} reads the whole parameters dict"
        for name in (d for d in node.inputs if d.startswith("params:")):
            value = base_parameters
            for part in name.removeprefix("params:").split("."):
                assert isinstance(value, dict) and part in value, f"{node.name}: {name} is not in conf/base/parameters.yml"
                value = value[part]


def test_the_report_shows_every_parameter_block(base_parameters):
    """The configuration section: every block (estimation as the result applied it, backend by name)."""
    from arena_cje.pipelines.reporting.pipeline import CONFIGURATION_BLOCKS

    assert set(CONFIGURATION_BLOCKS) | {"logging_policy", "estimation"} == set(base_parameters)
    assert CONFIGURATION_BLOCKS["backend"] == "params:backend.name"  # never the resolved block (credentials)


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
    import pickle

    result = pickle.loads((out / "estimation_result.pkl").read_bytes())
    assert result.config.alpha == 0.05
    for name, frame in {**frames, "params:logging_policy": "pi_0", "estimation_result": result}.items():
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
    pipelines = _registered()
    datasets = {d for d in pipelines["__default__"].datasets() if not d.startswith("params:")}
    resolved = resolve_datasets(datasets, catalog_config())  # explicit entries and dataset factories
    layer = {
        name: LAYER_ORDER.index(entry["metadata"]["kedro-viz"]["layer"])
        for name, (entry, _) in resolved.items()
        if "layer" in (entry.get("metadata") or {}).get("kedro-viz", {})
    }
    unlayered = datasets - set(layer) - IN_MEMORY
    assert unlayered == {"crowd_ratings", "crowd_ratings_archive"}, unlayered  # the catalog says why
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


def test_kedro_viz_build_shows_each_stage_as_a_modular_pipeline(tmp_path):
    """`kedro viz build` (offline) renders the graph; its JSON has the stages as collapsible namespaces.

    About 10 s (15 s with the 2 cores busy): not marked slow.
    """
    import json
    import os
    import subprocess
    import sys

    project = copy_project(tmp_path)
    kedro = Path(sys.executable).parent / "kedro"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    result = subprocess.run([str(kedro), "viz", "build"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    site = project / "build"
    assert (site / "index.html").is_file()
    graph = json.loads((site / "api" / "main").read_text())
    assert "circular" not in result.stdout + result.stderr and graph["layers"]  # the layer view renders

    registry = _registered()
    assert {p["id"] for p in graph["pipelines"]} == set(registry)  # reporting included
    tree = graph["modular_pipelines"]
    stages = {c["id"] for c in tree["__root__"]["children"] if c["type"] == "modularPipeline"}
    assert stages == PIPELINES  # six collapsible boxes at the top level, nothing else namespaced
    tasks = [n for n in graph["nodes"] if n["type"] == "task"]
    assert len(tasks) == len(registry["__default__"].nodes)
    for stage in PIPELINES:
        children = {c["id"] for c in tree[stage]["children"] if c["type"] == "task"}
        in_stage = {n["full_name"] for n in tasks if n["id"] in children}
        assert in_stage == {n.name for n in registry[stage].nodes}, stage
        assert all(n["modular_pipelines"] == [stage] for n in tasks if n["id"] in children)
    assert {t["id"] for t in graph["tags"]} == {"api", "report"}


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


def test_project_settings_filter_no_warning():
    """Importing settings.py adds no warning filter: deprecations (ours, Kedro's `--pipeline`) stay visible."""
    import importlib
    import sys
    import warnings

    with warnings.catch_warnings():
        before = list(warnings.filters)
        sys.modules.pop("arena_cje.settings", None)
        importlib.import_module("arena_cje.settings")
        assert warnings.filters == before
