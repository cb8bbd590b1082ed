"""Shared fixtures: the project's parameters, small enough for fast in-memory pipeline runs.

Tests are hermetic: they run in a throwaway working directory and the caches a run fills (the
simulated truth, request records, token ids) are temporary directories, so a test run writes
nothing into the repository's ``data/``. (The local model's one-off GGUF conversion is shared on
purpose, in ``$ARENA_CJE_CACHE`` or ``~/.cache/arena_cje``, outside the repository.)
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase
from kedro.config import OmegaConfigLoader

from arena_cje.settings import CONFIG_LOADER_ARGS

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# CI replays the same examples every run (a red CI is then reproducible); local runs explore and
# keep failing examples in the repository's (git-ignored) .hypothesis/, wherever the cwd is.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True,
                          database=DirectoryBasedExampleDatabase(PROJECT_ROOT / ".hypothesis" / "examples"))
settings.load_profile("ci" if os.environ.get("CI") else "dev")

ARENA_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "arena_sample"


def load_parameters(conf_source: Path = PROJECT_ROOT / "conf", env: str | None = None) -> dict:
    """Parameters exactly as `kedro run` would see them (base + env, soft-merged)."""
    loader = OmegaConfigLoader(conf_source=str(conf_source), env=env, **CONFIG_LOADER_ARGS)
    return loader["parameters"]


@pytest.fixture(scope="session")
def base_parameters() -> dict:
    return load_parameters(env="base")


_DATA_FILES = pytest.StashKey[dict]()


def _data_files() -> dict[Path, int]:
    """Every file under the repository's data/ with its modification time (ns)."""
    return {p: p.stat().st_mtime_ns for p in (PROJECT_ROOT / "data").rglob("*") if p.is_file()}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_DATA_FILES] = _data_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a test wrote into the repository's data/ (tests must be hermetic)."""
    before = session.config.stash.get(_DATA_FILES, None)
    if before is None:
        return
    written = sorted(str(p.relative_to(PROJECT_ROOT)) for p, t in _data_files().items() if before.get(p) != t)
    if written:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"tests wrote {len(written)} file(s) into the repository's data/ (use temporary directories; "
                   f"or a `kedro run` ran in this checkout meanwhile): {', '.join(written[:5])}")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def run_outside_the_repository(tmp_path_factory):
    """Run the whole session in a throwaway working directory.

    Whatever a test or a library writes relative to the working directory (a relative
    ``cache_dir``; kedro-viz's ``.viz/stats.json``, which its hook writes into the Kedro project
    found from the cwd after every session run) lands there, never in the repository.
    """
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture(scope="session")
def simulated_truth_cache(tmp_path_factory) -> Path:
    """The simulated backend's true-value cache for this test session (computed once per session)."""
    return tmp_path_factory.mktemp("simulated_truth")


@pytest.fixture
def parameters(base_parameters, simulated_truth_cache) -> dict:
    """A mutable copy of conf/base parameters with a small run size and temporary caches."""
    params = copy.deepcopy(base_parameters)
    params["prompts"]["output_samples"] = 200
    params["prompts"]["pool_size"] = 1000
    params["backend"]["simulated"]["cache_dir"] = str(simulated_truth_cache)
    return params


@pytest.fixture(scope="session")
def arena_sample() -> Path:
    if not ARENA_SAMPLE.is_dir():
        pytest.skip(f"real-data sample not found at {ARENA_SAMPLE}")
    return ARENA_SAMPLE


def copy_project(tmp_path: Path) -> Path:
    """A runnable copy of the project in ``tmp_path``: conf/base, an empty conf/local and data/.

    The package itself comes from the virtual environment; ``src/`` only has to exist for
    ``bootstrap_project``.
    """
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project)
    shutil.copy(PROJECT_ROOT / ".telemetry", project)  # the committed "no telemetry" answer
    shutil.copytree(PROJECT_ROOT / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    (project / "src").mkdir()
    for layer in (PROJECT_ROOT / "data").iterdir():
        if layer.is_dir():
            (project / "data" / layer.name).mkdir(parents=True)
    return project
