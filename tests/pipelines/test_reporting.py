"""The ``reporting`` pipeline re-renders the report from estimation's saved outputs, and estimation
writes ``results.json`` with its provenance. Whole Kedro sessions (hooks included) in a project copy,
on a small layout in the reference format read through the ``cje_import`` environment.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ..cje.test_cje_import_errors import edit_line, write_synthetic_layout
from ..conftest import PROJECT_ROOT, copy_project

#: Fast estimators (the pipeline's wiring is under test here, not the estimators).
ESTIMATION = {"estimators": ["naive", "direct", "dr_cpo"], "calibrator": "isotonic"}


def run(project: Path, layout: Path, pipelines: list[str], **params) -> str:
    """``kedro run --env cje_import --pipelines ...`` in-process; returns the session id."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    runtime = {"cje_import": {"path": str(layout)}, "estimation": dict(ESTIMATION), **params}
    with KedroSession.create(project_path=project, env="cje_import", runtime_params=runtime) as session:
        session.run(pipeline_names=pipelines)
        return session.session_id


@pytest.fixture(scope="module")
def estimated(tmp_path_factory) -> tuple[Path, Path, str]:
    """A project copy after `kedro run --pipelines estimation` (no report yet); its session id."""
    root = tmp_path_factory.mktemp("reporting")
    project = copy_project(root)
    shutil.copytree(PROJECT_ROOT / "conf" / "cje_import", project / "conf" / "cje_import")
    layout = write_synthetic_layout(root / "layout")
    return project, layout, run(project, layout, ["estimation"])


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}


def test_reporting_alone_renders_the_report_without_re_estimating(estimated):
    project, layout, _ = estimated
    model_output, reporting = project / "data" / "07_model_output", project / "data" / "08_reporting"
    before = snapshot(model_output)
    assert {"estimation_result.pkl", "policy_estimates.csv", "results.json"} <= set(before)
    assert not (reporting / "report.html").exists()  # estimation alone writes no report

    # The estimates were made at alpha 0.05; a different alpha now must not change what the report states.
    run(project, layout, ["reporting"], estimation={**ESTIMATION, "alpha": 0.2})

    assert snapshot(model_output) == before  # nothing of estimation was rewritten: it did not run
    html, markdown = (reporting / "report.html").read_text(), (reporting / "report.md").read_text()
    assert "Best policy" in html and "95% CI" in markdown and "80% CI" not in markdown
    estimates = pd.read_csv(model_output / "policy_estimates.csv")
    for row in estimates.dropna(subset=["estimate"]).itertuples():  # the persisted numbers are the ones shown
        assert f"| {row.policy} | {row.estimator} | {row.estimate:.4g} |" in markdown
    for png in ("forest_plot", "calibration_plot", "weight_diagnostics_plot", "differences_plot"):
        assert (reporting / f"{png}.png").stat().st_size > 5_000
        # The page embeds the very file the plot node saved (drawn once), which the Markdown links.
        embedded = base64.b64encode((reporting / f"{png}.png").read_bytes()).decode()
        assert f"alt='{png}' src='data:image/png;base64,{embedded}'" in html and f"]({png}.png)" in markdown
    assert (reporting / "label_budget.csv").exists() and (reporting / "stage_summary.csv").exists()


def test_results_json_records_tables_configuration_versions_hashes_and_run_id(estimated):
    project, _, session_id = estimated
    text = (project / "data" / "07_model_output" / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert results["run"]["run_id"] == session_id and results["run"]["env"] == "cje_import"
    assert results["run"]["pipeline_names"] == ["estimation"]
    assert set(results["packages"]) >= {"arena_cje", "kedro", "numpy", "pandas", "scikit-learn", "scipy"}
    assert all(results["packages"][name] for name in ("arena_cje", "kedro", "numpy", "pandas", "scipy"))
    config = results["configuration"]["estimation_config"]
    assert config["estimators"] == ESTIMATION["estimators"] and config["alpha"] == 0.05
    assert config["gates"]["hill_warn"] > 0  # the full applied settings, defaults filled in
    assert results["configuration"]["parameters"]["estimation"]["calibrator"] == "isotonic"

    estimates = pd.read_csv(project / "data" / "07_model_output" / "policy_estimates.csv")
    as_json = pd.DataFrame(results["estimates"])
    assert len(as_json) == len(estimates) and list(as_json.columns) == list(estimates.columns)
    pd.testing.assert_series_equal(as_json["estimate"], estimates["estimate"], check_exact=False, rtol=1e-12)
    assert len(results["comparisons"]) == len(pd.read_csv(project / "data" / "07_model_output" / "comparisons.csv"))
    assert {"decisions", "differences"} <= set(results)

    inputs = results["inputs"]
    assert inputs["cje_logged_data"]["rows"] == 60
    assert set(inputs["cje_fresh_draws"]) == {"base", "pa", "pb"} and set(inputs["cje_probe_slices"]) == {"pa"}
    assert all(len(f["sha256"]) == 64 for f in [inputs["cje_logged_data"], *inputs["cje_fresh_draws"].values()])


def test_a_changed_input_changes_its_hash_and_nothing_else(tmp_path):
    project = copy_project(tmp_path)
    shutil.copytree(PROJECT_ROOT / "conf" / "cje_import", project / "conf" / "cje_import")
    layout = write_synthetic_layout(tmp_path / "layout")
    results = project / "data" / "07_model_output" / "results.json"
    first_id = run(project, layout, ["estimation"])
    first = json.loads(results.read_text())
    same_id = run(project, layout, ["estimation"])
    same = json.loads(results.read_text())
    assert same["inputs"] == first["inputs"]  # same data, same hashes ...
    assert same_id != first_id and same["run"]["run_id"] == same_id  # ... a new run id per session

    edit_line(layout / "logged_data.jsonl", 1, lambda row: row.update(oracle_label=0.123))  # one label
    run(project, layout, ["estimation"])
    changed = json.loads(results.read_text())["inputs"]
    assert changed["cje_logged_data"]["sha256"] != first["inputs"]["cje_logged_data"]["sha256"]
    assert changed["cje_fresh_draws"] == first["inputs"]["cje_fresh_draws"]
    assert changed["cje_probe_slices"] == first["inputs"]["cje_probe_slices"]


def test_frame_hash_is_the_content_not_the_index_or_key_order():
    import numpy as np

    from arena_cje.provenance import frame_sha256

    frame = pd.DataFrame({"judge_score": [0.25, 0.5], "metadata": [{"prompt_id": "a", "n": 1}, {"prompt_id": "b"}],
                          "prompt": ["x", None]})
    digest = frame_sha256(frame)
    assert frame_sha256(frame.set_axis([7, 9])) == digest  # line numbers are not content
    reordered = frame.assign(metadata=[{"n": 1, "prompt_id": "a"}, {"prompt_id": "b"}])
    assert frame_sha256(reordered) == digest  # nested dicts by canonical JSON
    changes = [
        frame.assign(judge_score=[0.25, np.nextafter(0.5, 1.0)]),  # the last bit of one number
        frame.assign(metadata=[{"prompt_id": "a", "n": 2}, {"prompt_id": "b"}]),
        frame.assign(prompt=["x", "y"]),
        frame.rename(columns={"prompt": "prompts"}),
        frame.iloc[::-1],
    ]
    assert len({frame_sha256(c) for c in changes} | {digest}) == len(changes) + 1


def test_the_provenance_hook_gives_each_run_its_own_identity():
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline, node

    from arena_cje.hooks import RunProvenanceHook

    records = Pipeline([node(lambda run: run, "kedro_run", "out", name="record")])
    other = Pipeline([node(lambda x: x, "a", "b", name="other")])
    hook = RunProvenanceHook()
    seen = []
    for run_id in ("2026-01-01T00.00.00.000Z", "2026-01-01T00.00.01.000Z"):
        catalog = DataCatalog()
        hook.before_pipeline_run({"run_id": run_id, "env": "local", "kedro_version": "1.7.0", "tags": (),
                                  "node_names": ["record"], "pipeline_names": None}, records, catalog)
        seen.append(catalog.load("kedro_run"))
        untouched = DataCatalog()
        hook.before_pipeline_run({"run_id": run_id}, other, untouched)
        assert "kedro_run" not in untouched  # only runs that record provenance get it
    common = {"env": "local", "kedro_version": "1.7.0", "pipeline_names": None, "runtime_params": None,
              "node_names": ["record"]}  # an empty filter (tags) is left out
    assert seen == [{"run_id": "2026-01-01T00.00.00.000Z", **common}, {"run_id": "2026-01-01T00.00.01.000Z", **common}]


def test_a_run_without_the_provenance_hook_records_no_run_id(caplog):
    """Without RunProvenanceHook the catalog's empty ``kedro_run`` is read: the run does not fail, the
    results say there was no run id; with the hook the same catalog entry is filled in place."""
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline, node
    from kedro.runner import SequentialRunner

    from arena_cje.hooks import RunProvenanceHook
    from arena_cje.provenance import NO_RUN_ID, results_record

    from ..test_project import catalog_config

    def record(run):
        return results_record(tables={}, config=None, parameters={}, inputs={}, run=run)["run"]

    pipeline = Pipeline([node(record, "kedro_run", "record", name="record")])
    entry = {"kedro_run": catalog_config()["kedro_run"]}

    catalog = DataCatalog.from_config(entry)
    SequentialRunner().run(pipeline, catalog)  # no hook: must not fail on a missing input
    assert catalog.load("record") == {"run_id": None, "note": NO_RUN_ID}

    catalog = DataCatalog.from_config(entry)
    with caplog.at_level(logging.WARNING):
        RunProvenanceHook().before_pipeline_run({"run_id": "2026-01-01T00.00.00.000Z"}, pipeline, catalog)
    SequentialRunner().run(pipeline, catalog)
    seen = catalog.load("record")
    assert seen["run_id"] == "2026-01-01T00.00.00.000Z" and "note" not in seen
    assert "Replacing dataset" not in caplog.text
