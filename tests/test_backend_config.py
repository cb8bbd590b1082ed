"""Backend configuration: per-backend option blocks, project-root paths, Kedro credentials, dry run.

Every environment in ``conf/`` builds its backend the way ``kedro run --env X`` does; the
Fireworks environment is started from the command line as a user would, with no key and with a
key but no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arena_cje.dry_run import ARENA_MEAN_PROMPT_CHARS, plan_run
from arena_cje.experiment import MissingCredentialsError, backend_config, resolve_backend_params

from .conftest import PROJECT_ROOT, copy_project, load_parameters

ENVS = sorted(p.name for p in (PROJECT_ROOT / "conf").iterdir() if p.is_dir() and p.name != "local")
KEDRO = str(Path(sys.executable).with_name("kedro"))


def test_every_environment_is_tested_here():
    assert {"base", "fireworks", "local_llm", "vllm_local", "cje_import"} <= set(ENVS)


@pytest.mark.parametrize("env", ENVS)
def test_every_environment_builds_its_own_backend(env, tmp_path, monkeypatch):
    """The merged parameters of each environment give the chosen backend only its own options."""
    params = load_parameters(env=env)
    if params["backend"]["name"] == "local_transformers":
        pytest.importorskip("torch")  # checking its options imports the backend's module
    name, options = backend_config(params["backend"])
    monkeypatch.setenv("FIREWORKS_API_KEY", "fw_test")
    resolved = resolve_backend_params(params["backend"], tmp_path, {}, env)
    assert set(resolved) == {"name", name}
    if name == "simulated":
        assert Path(resolved[name]["cache_dir"]).is_relative_to(tmp_path)
    if name == "openai_compatible":
        assert Path(resolved[name]["store_path"]).is_relative_to(tmp_path)
        resolved[name]["store_path"] = None  # building must not touch the project's record
    from arena_cje.backends import make_backend

    backend = make_backend(name, **resolved[name])
    assert type(backend).__name__.lower().startswith(name.split("_")[0])
    if hasattr(backend, "close"):
        backend.close()


def test_base_options_do_not_leak_into_another_backend():
    """conf/base's simulated options (seed, cache_dir) stay in their block under every env."""
    params = load_parameters(env="fireworks")
    assert params["backend"]["simulated"]["cache_dir"]  # still there after the soft merge ...
    name, options = backend_config(params["backend"])
    assert name == "openai_compatible" and "cache_dir" not in options and "seed" not in options  # ... not read


def test_unknown_option_names_the_key_and_the_backend():
    with pytest.raises(ValueError, match=r"backend\.simulated: unknown option\(s\) \['temprature'\] for backend 'simulated'"):
        backend_config({"name": "simulated", "simulated": {"temprature": 1.0}})


def test_the_old_shared_options_block_is_refused_with_the_new_place():
    with pytest.raises(ValueError, match=r"`backend\.options` is no longer read.*`backend\.openai_compatible`"):
        backend_config({"name": "openai_compatible", "options": {"base_url": "http://x"}})


def test_relative_paths_resolve_against_the_project_root_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = {"name": "openai_compatible", "openai_compatible": {"base_url": "http://127.0.0.1:1/v1",
                                                                 "store_path": "data/02_intermediate/r.sqlite"}}
    resolved = resolve_backend_params(block, "/srv/project")
    assert resolved["openai_compatible"]["store_path"] == "/srv/project/data/02_intermediate/r.sqlite"
    absolute = {**block, "openai_compatible": {**block["openai_compatible"], "store_path": "/abs/r.sqlite"}}
    assert resolve_backend_params(absolute, "/srv/project")["openai_compatible"]["store_path"] == "/abs/r.sqlite"


def test_kedro_credentials_give_the_api_key_and_the_environment_variable_wins(monkeypatch):
    block = {"name": "openai_compatible", "openai_compatible": {
        "base_url": "https://api.example/v1", "credentials": "fireworks", "api_key_env": "ARENA_TEST_KEY"}}
    monkeypatch.delenv("ARENA_TEST_KEY", raising=False)
    resolved = resolve_backend_params(block, None, {"fireworks": {"api_key": "fw_from_credentials"}})
    assert resolved["openai_compatible"]["api_key"] == "fw_from_credentials"
    assert "credentials" not in resolved["openai_compatible"]
    monkeypatch.setenv("ARENA_TEST_KEY", "fw_from_env")
    assert "api_key" not in resolve_backend_params(block, None, {"fireworks": {"api_key": "x"}})["openai_compatible"]
    monkeypatch.delenv("ARENA_TEST_KEY")
    with pytest.raises(MissingCredentialsError, match=r"ARENA_TEST_KEY environment variable or `fireworks: \{api_key: \.\.\.\}` in conf/fireworks/credentials\.yml"):
        resolve_backend_params(block, None, {}, "fireworks")


def test_a_local_server_needs_no_key():
    params = load_parameters(env="vllm_local")
    resolved = resolve_backend_params(params["backend"], "/p", {})
    assert "api_key" not in resolved["openai_compatible"]


def test_dry_run_counts_calls_per_stage_from_the_parameters():
    params = load_parameters(env="fireworks")
    params["prompts"]["output_samples"] = 100
    rows = {(r.stage, r.policy): r for r in plan_run(params)}
    policies = list(params["policies"])
    for name in policies:
        assert rows[("generate", name)].calls == 100
        assert rows[("generate", name)].max_output_tokens == 100 * params["policy_defaults"]["max_tokens"]
        assert rows[("teacher_force", name)].calls == 100
        assert rows[("teacher_force", name)].max_output_tokens == 0
    judged = 100 * len(policies)
    assert rows[("judge", "judge")].calls == judged
    assert rows[("judge", "judge_rescore")].calls == round(judged * params["backend"]["openai_compatible"]["judge_rescore_fraction"])
    # Cost = tokens x the configured price per 1k tokens.
    model = params["policy_defaults"]["model"]
    price = params["backend"]["openai_compatible"]["prices"][model]
    gen = rows[("generate", policies[0])]
    assert gen.max_cost_usd == pytest.approx((gen.input_tokens * price["prompt"] + gen.max_output_tokens * price["completion"]) / 1000)
    # Longer prompts, more input tokens.
    longer = {(r.stage, r.policy): r for r in plan_run(params, [int(4 * ARENA_MEAN_PROMPT_CHARS)] * 100)}
    assert longer[("generate", policies[0])].input_tokens > gen.input_tokens


def test_dry_run_counts_the_llm_oracle_when_it_labels():
    params = load_parameters(env="vllm_local")
    rows = {(r.stage, r.policy): r for r in plan_run(params)}
    n = params["prompts"]["output_samples"]
    labeling = params["labeling"]
    expected = round(n * params["split"]["calibration_fraction"]) + labeling["probe_size"] * (len(params["policies"]) - 1)
    assert rows[("oracle", "llm_oracle")].calls == expected * labeling["votes_per_item"]


def _fireworks_project(tmp_path: Path) -> Path:
    project = copy_project(tmp_path)
    shutil.copytree(PROJECT_ROOT / "conf" / "fireworks", project / "conf" / "fireworks")
    return project


def _kedro(project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "FIREWORKS_API_KEY"}
    environ.update(env or {}, KEDRO_DISABLE_TELEMETRY="true")
    return subprocess.run([KEDRO, *args], cwd=project, env=environ, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_fireworks_check_models_without_a_key_says_so_in_one_line(tmp_path):
    result = _kedro(_fireworks_project(tmp_path), "check-models", "--env", "fireworks")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    message = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(message) == 1, result.stderr
    assert "FIREWORKS_API_KEY" in message[0] and "conf/fireworks/credentials.yml" in message[0]


@pytest.mark.slow
def test_fireworks_check_models_without_network_names_the_host(tmp_path):
    project = _fireworks_project(tmp_path)
    # Port 9 on loopback refuses connections: the same answer as an unreachable host, without
    # sending anything off this machine.
    result = _kedro(project, "check-models", "--env", "fireworks", "--params",
                    "backend.openai_compatible.base_url=http://127.0.0.1:9/inference/v1",
                    env={"FIREWORKS_API_KEY": "fw_test"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    message = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and "cannot reach 127.0.0.1:9" in message[0], result.stderr


@pytest.mark.slow
def test_dry_run_command_prints_the_plan_and_sends_nothing(tmp_path):
    project = _fireworks_project(tmp_path)
    result = _kedro(project, "cje-dry-run", "--env", "fireworks", "--params", "prompts.output_samples=200",
                    env={"FIREWORKS_API_KEY": "fw_test"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "generate" in out and "teacher_force" in out and "judge" in out
    assert "total: " in out and "budget_usd $10.00" in out
    assert not (project / "data" / "02_intermediate" / "api_requests.sqlite").exists()
