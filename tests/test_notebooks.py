"""The notebooks in notebooks/: committed without outputs, and executed on a fresh run of the project."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import PROJECT_ROOT, copy_project

NOTEBOOKS = PROJECT_ROOT / "notebooks"
NOTEBOOK_NAMES = ("explore_run.ipynb", "cje_import.ipynb")
# Small enough to be quick; half of its ~57 calibration labels still clears the 20-label gate.
RUN_PARAMETERS = {"prompts": {"output_samples": 200, "pool_size": 1000}}
POLICIES = {"pi_0", "pi_concise", "pi_cot", "pi_hot"}
KERNEL = "arena_cje_tests"


def test_committed_notebooks_carry_no_outputs():
    """Outputs and execution counts are stripped before committing (they are data, and they go stale)."""
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert set(NOTEBOOK_NAMES) <= set(found)
    for name in found:
        nb = json.loads((NOTEBOOKS / name).read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            assert cell.get("outputs") == [], f"{name}, cell {i}: has outputs; run scripts/strip_notebooks.py before committing"
            assert cell.get("execution_count") is None, f"{name}, cell {i}: has an execution count; run scripts/strip_notebooks.py"


@pytest.fixture(scope="module")
def run_project(tmp_path_factory) -> Path:
    """A default `kedro run` (small sample) in a temporary copy of the project, with the notebooks beside it.

    The run parameters go to conf/local so that the notebooks' own Kedro sessions see the same ones.
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path_factory.mktemp("notebooks"))
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(RUN_PARAMETERS))
    shutil.copytree(PROJECT_ROOT / "conf" / "cje_import", project / "conf" / "cje_import")
    shutil.copytree(NOTEBOOKS, project / "notebooks")
    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        session.run()
    return project


@pytest.fixture(scope="module", autouse=True)
def test_kernel(tmp_path_factory):
    """A kernel spec for this interpreter, found first: a user's own `python3` spec cannot take its place."""
    spec = tmp_path_factory.mktemp("jupyter") / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(spec.parents[1]), before]))
    yield KERNEL
    if before is None:
        os.environ.pop("JUPYTER_PATH")
    else:
        os.environ["JUPYTER_PATH"] = before


def execute(notebook: Path) -> list[dict]:
    """Run every cell in the notebook's folder (as Jupyter does); a cell that raises fails the test.

    Returns:
        The executed code cells.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(notebook.parent)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{notebook.name}: a cell raised\n{e}")
    return [c for c in nb.cells if c.cell_type == "code"]


def text_of(cell: dict) -> str:
    return "".join(o.get("text", "") for o in cell["outputs"] if o["output_type"] == "stream")


def n_images(cells: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for c in cells for o in c["outputs"])


@pytest.mark.slow
def test_explore_run_notebook_executes_and_prints_the_what_if(run_project):
    cells = execute(run_project / "notebooks" / "explore_run.ipynb")
    assert n_images(cells) == 2, "the forest and calibration plots are each shown once"
    # The what-if prints, per policy, the realised half-widths and the cost planner's prediction side by side.
    title, header, index_names, *rows = text_of(cells[-1]).strip().splitlines()
    assert title.startswith("half of the oracle labels")
    assert header.split() == ["labels_now", "half_width_now", "labels", "probe_labels", "half_width_realised",
                              "half_width_predicted", "realised_over_predicted"]
    assert index_names.split() == ["policy", "estimator"]
    table = {r.split()[0]: [float(x) for x in r.split()[2:]] for r in rows}
    assert set(table) == POLICIES, rows
    for policy, (m0, now, m, p, realised, predicted, ratio) in table.items():
        assert abs(m - m0 / 2) <= 0.15 * m0, (policy, m0, m)  # half the labels
        assert now > 0 and realised > 0 and predicted > 0 and p >= 0
        assert ratio == pytest.approx(realised / predicted, rel=0.05)


@pytest.mark.slow
def test_cje_import_notebook_estimates_the_runs_own_export(run_project, monkeypatch):
    monkeypatch.delenv("CJE_IMPORT_DIR", raising=False)  # default: no ../shared beside the copy -> the run's own export
    cells = execute(run_project / "notebooks" / "cje_import.ipynb")
    assert text_of(cells[0]).strip().endswith("data/05_model_input/cje")
    assert "oracle labels" in text_of(cells[2])
    assert "none in this folder" in text_of(cells[3])
    assert n_images(cells) == 2


@pytest.mark.slow
def test_cje_import_notebook_reads_the_reference_library_layout(run_project, arena_sample, monkeypatch):
    monkeypatch.setenv("CJE_IMPORT_DIR", str(arena_sample))
    cells = execute(run_project / "notebooks" / "cje_import.ipynb")
    assert text_of(cells[0]).strip() == str(arena_sample.resolve())
    assert "probes for ['clone', 'parallel_universe_prompt', 'unhelpful']" in text_of(cells[2])
    assert "'unhelpful': 0.146" in text_of(cells[3])  # ground_truth/ read for the forest plot's true values
    assert n_images(cells) == 2
