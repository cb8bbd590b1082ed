"""Shared fixtures: the project's parameters, small enough for fast in-memory pipeline runs."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings
from kedro.config import OmegaConfigLoader

from arena_cje.settings import CONFIG_LOADER_ARGS

# CI replays the same examples every run (a red CI is then reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARENA_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "arena_sample"


def load_parameters(conf_source: Path = PROJECT_ROOT / "conf", env: str | None = None) -> dict:
    """Parameters exactly as `kedro run` would see them (base + env, soft-merged)."""
    loader = OmegaConfigLoader(conf_source=str(conf_source), env=env, **CONFIG_LOADER_ARGS)
    return loader["parameters"]


@pytest.fixture(scope="session")
def base_parameters() -> dict:
    return load_parameters(env="base")


@pytest.fixture
def parameters(base_parameters) -> dict:
    """A mutable copy of conf/base parameters with a small run size."""
    params = copy.deepcopy(base_parameters)
    params["prompts"]["output_samples"] = 200
    params["prompts"]["pool_size"] = 1000
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
    shutil.copytree(PROJECT_ROOT / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    (project / "src").mkdir()
    for layer in (PROJECT_ROOT / "data").iterdir():
        if layer.is_dir():
            (project / "data" / layer.name).mkdir(parents=True)
    return project
