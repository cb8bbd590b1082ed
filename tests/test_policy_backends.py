"""Policies (and the judge) on backends of their own: a run mixing backends, per-block resolution,
errors naming the policy and the key, and check-models / dry run over every distinct backend."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from arena_cje.backends.base import PolicySpec
from arena_cje.backends.simulated import SimulatedBackend
from arena_cje.dry_run import budgets, format_plan, plan_run
from arena_cje.experiment import (
    MissingCredentialsError,
    backend_blocks,
    policy_backends,
    policy_specs,
    resolve_backends_in,
)
from arena_cje.hooks import BackendParamsHook

from .conftest import copy_project, load_parameters

SYSTEM = "You are a helpful assistant."
#: Three policies with pi_0's decoding settings on backends of their own: another world (seed 1,
#: a different "model"), a sharper model of the same world (logit_scale 1.1) and a clone (the same
#: world, built as a separate instance because one option differs).
OWN = {
    "pi_other": {"seed": 1, "truth_min_total_draws": 2000},
    "pi_sharp": {"seed": 0, "logit_scale": 1.1, "truth_min_total_draws": 2000},
    "pi_clone": {"seed": 0, "truth_min_total_draws": 2000, "cache_dir": "data/06_models/clone_truth"},
}


def _own_block(options: dict[str, Any]) -> dict[str, Any]:
    return {"name": "simulated", "simulated": options}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> dict[str, Any]:
    """``data_prep`` + ``generation`` of a Kedro project whose conf/local gives three policies their own backend."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path_factory.mktemp("mixed"))
    local = {
        "prompts": {"output_samples": 300, "pool_size": 300},
        "backend": {"simulated": {"truth_min_total_draws": 2000}},
        "policy_defaults": {"max_tokens": 32},
        "policies": {name: {"temperature": 0.5, "system_prompt": SYSTEM, "backend": _own_block(o)} for name, o in OWN.items()},
    }
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        session.run(pipeline_names=["data_prep", "generation"])
        catalog = session.load_context().catalog
        out = {name: catalog.load(name) for name in ("prompts", "responses", "logprobs", "policy_truth", "teacher_forcing_check")}
    return out


def _spec(name: str) -> PolicySpec:
    return PolicySpec(name, model="sim-llm", temperature=0.5, system_prompt=SYSTEM, max_tokens=32)


def _logged(run: dict[str, Any]):
    responses, prompts = run["responses"], run["prompts"].set_index("prompt_id")
    logged = responses[(responses["policy"] == "pi_0") & responses["error"].isna()].set_index("prompt_id")
    return prompts.loc[logged.index, "prompt"].tolist(), logged["response"].tolist(), (~logged["truncated"].astype(bool)).tolist(), logged.index


def _forced(run: dict[str, Any], policy: str, index) -> np.ndarray:
    lp = run["logprobs"]
    return lp[lp["policy"] == policy].set_index("prompt_id").loc[index, "logprob"].to_numpy(dtype=float)


def test_each_policy_is_generated_on_its_own_backend(mixed_run):
    """pi_other's responses are exactly what a separately built seed-1 world samples with the run's seeds."""
    from arena_cje.experiment import stable_seed

    prompts = mixed_run["prompts"]
    own = mixed_run["responses"].query("policy == 'pi_other'").set_index("prompt_id").loc[prompts["prompt_id"]]
    seeds = [stable_seed(1234, pid, "pi_other") for pid in prompts["prompt_id"]]
    expected = SimulatedBackend(seed=1).generate_batch(prompts["prompt"].tolist(), _spec("pi_other"), seeds)
    assert own["response"].tolist() == [g.text for g in expected]
    on_top_level = SimulatedBackend(seed=0).generate_batch(prompts["prompt"].tolist(), _spec("pi_other"), seeds)
    assert sum(a.text != b.text for a, b in zip(expected, on_top_level)) > 0.9 * len(seeds)  # another model


def test_teacher_forcing_under_a_policy_uses_its_backend_and_the_weights_are_right(mixed_run):
    prompts, responses, ended, index = _logged(mixed_run)
    base = _forced(mixed_run, "pi_0", index)
    # Exactly the log-probs of the model serving each policy.
    for name, options in OWN.items():
        world = SimulatedBackend(**{k: v for k, v in options.items() if k != "cache_dir"})
        expected = [t.logprob for t in world.teacher_force_batch(prompts, responses, _spec(name), ended=ended)]
        np.testing.assert_allclose(_forced(mixed_run, name, index), expected, rtol=0, atol=1e-9)
    # The clone (the same model behind another instance): every log-weight is exactly 0.
    assert np.array_equal(_forced(mixed_run, "pi_clone", index), base)
    # Another world: the logged responses are nearly impossible under it.
    assert np.median(_forced(mixed_run, "pi_other", index) - base) < -5
    # The sharper model: importance weights of pi_0's responses average 1 (E_pi0[w] = 1), within
    # 4 Monte Carlo standard errors, and are not all 1.
    w = np.exp(_forced(mixed_run, "pi_sharp", index) - base)
    assert np.std(np.log(w)) > 0.1
    assert abs(w.mean() - 1) < 4 * w.std(ddof=1) / math.sqrt(len(w)), (w.mean(), w.std())
    assert mixed_run["teacher_forcing_check"]["passed"] is True


def test_true_values_only_where_the_policy_is_the_raters_world(mixed_run, caplog):
    truth = mixed_run["policy_truth"].set_index("policy")["truth"]
    assert truth["pi_clone"] == pytest.approx(truth["pi_0"], abs=1e-12)  # the same world and settings
    assert math.isnan(truth["pi_other"]) and math.isnan(truth["pi_sharp"])
    assert truth[["pi_0", "pi_hot", "pi_cot", "pi_concise"]].notna().all()


def test_the_judge_and_the_llm_oracle_run_on_their_own_blocks():
    """judge.backend and labeling.llm_oracle.backend: each scores on its own world, not the top-level one."""
    from arena_cje.backends.base import JudgeSpec
    from arena_cje.crowd import parse_ratings
    from arena_cje.pipelines.judging.nodes import judge_responses
    from arena_cje.pipelines.labeling.nodes import collect_ratings

    prompts = pd.DataFrame({"prompt_id": ["a", "b", "c"], "prompt": ["Why is the sky blue?", "Name a prime.", "Hi?"]})
    responses = pd.DataFrame({"prompt_id": ["a", "b", "c"], "policy": "pi_0", "draw_idx": 0, "error": None,
                              "response": ["Rayleigh scattering of sunlight.", "Seven.", "Hello! How can I help?"]})
    top, other = _own_block({"seed": 0}), _own_block({"seed": 1})
    spec = JudgeSpec(model="sim-judge", scale=(0.0, 1.0))
    expected = [j.score for j in SimulatedBackend(seed=1).judge_batch(prompts["prompt"].tolist(), responses["response"].tolist(), spec)]
    on_top = [j.score for j in SimulatedBackend(seed=0).judge_batch(prompts["prompt"].tolist(), responses["response"].tolist(), spec)]
    assert [round(10 * s) for s in expected] != [round(10 * s) for s in on_top]  # the worlds disagree
    scores = judge_responses(prompts, responses, top, {"model": "sim-judge", "backend": other})
    assert scores["judge_score"].tolist() == pytest.approx(expected)

    tasks = pd.DataFrame({"task_id": ["t1", "t2", "t3"], "prompt": prompts["prompt"], "response": responses["response"]})
    labeling = {"oracle": "llm", "rating_min": 0, "rating_max": 10,
                "llm_oracle": {"model": "sim-judge", "max_tokens": 16, "backend": other}}
    rows = parse_ratings(collect_ratings(tasks, pd.DataFrame(), top, labeling)).rows
    assert [float(r) for r in rows["rating"]] == [round(10 * s) for s in expected]


# ------------------------------------------------------------------ resolution and errors


def _params(**policy_backend: Any) -> dict[str, Any]:
    return {
        "backend": {"name": "simulated", "simulated": {"seed": 0}},
        "policy_defaults": {"model": "m"},
        "policies": {"pi_0": {"temperature": 0.5}, **{name: {"backend": block} for name, block in policy_backend.items()}},
        "judge": {"model": "j"},
    }


def test_each_block_gets_its_own_credentials_and_paths(monkeypatch):
    monkeypatch.delenv("ARENA_TEST_HOSTED_KEY", raising=False)
    hosted = {"name": "openai_compatible", "openai_compatible": {
        "base_url": "https://api.example/v1", "credentials": "hosted", "store_path": "data/hosted.sqlite"}}
    local = {"name": "openai_compatible", "openai_compatible": {
        "base_url": "http://127.0.0.1:8765/v1", "store_path": "data/local.sqlite"}}
    params = _params(pi_local=local)
    params["backend"] = hosted
    params["judge"]["backend"] = {"name": "openai_compatible", "openai_compatible": {
        "base_url": "https://judge.example/v1", "credentials": "judge"}}
    credentials = {"hosted": {"api_key": "k-hosted"}, "judge": {"api_key": "k-judge"}}
    top = resolve_backends_in("backend", params["backend"], "/p", credentials)
    policies = resolve_backends_in("policies", params["policies"], "/p", credentials)
    judge = resolve_backends_in("judge", params["judge"], "/p", credentials)
    assert top["openai_compatible"]["api_key"] == "k-hosted" and top["openai_compatible"]["store_path"] == "/p/data/hosted.sqlite"
    own = policies["pi_local"]["backend"]["openai_compatible"]
    assert "api_key" not in own and own["store_path"] == "/p/data/local.sqlite"
    assert policies["pi_0"] == {"temperature": 0.5}  # no block of its own: untouched
    assert judge["backend"]["openai_compatible"]["api_key"] == "k-judge" and judge["model"] == "j"
    blocks = policy_backends(top, policies)
    assert blocks["pi_0"] is top and blocks["pi_local"]["openai_compatible"]["base_url"].startswith("http://127.0.0.1")
    assert set(backend_blocks(params)) == {"backend", "policies.pi_local.backend", "judge.backend"}
    assert set(policy_specs(params["policies"], params["policy_defaults"])) == {"pi_0", "pi_local"}  # not a spec field


@pytest.mark.parametrize("block,error", [
    ({"name": "simulated", "simulated": {"sede": 1}}, r"policies\.pi_x\.backend\.simulated: unknown option\(s\) \['sede'\]"),
    ({"name": "simulatd"}, r"policies\.pi_x\.backend\.name: unknown backend 'simulatd'"),
    ({"simulated": {}}, r"`policies\.pi_x\.backend\.name` is missing"),
    ("simulated", r"`policies\.pi_x\.backend` must be a block \{name: <backend>"),
])
def test_a_bad_policy_block_names_the_policy_and_the_key_before_the_first_node(block, error):
    hook = BackendParamsHook()
    with pytest.raises(ValueError, match=error):
        hook.before_pipeline_run(_Pipeline({"params:backend", "params:policies"}), _Catalog(_params(pi_x=block)))


def test_a_missing_key_names_the_policy_block_and_both_places(monkeypatch):
    monkeypatch.delenv("ARENA_TEST_PREMIUM_KEY", raising=False)
    block = {"name": "openai_compatible", "openai_compatible": {
        "base_url": "https://api.example/v1", "credentials": "premium", "api_key_env": "ARENA_TEST_PREMIUM_KEY"}}
    hook = BackendParamsHook()
    hook._env = "fireworks"
    with pytest.raises(MissingCredentialsError, match=(
            r"no API key for backend 'openai_compatible' \(`policies\.pi_premium\.backend`\): set the "
            r"ARENA_TEST_PREMIUM_KEY environment variable or `premium: \{api_key: \.\.\.\}` in conf/fireworks/credentials\.yml")):
        hook.before_pipeline_run(_Pipeline({"params:backend", "params:policies"}), _Catalog(_params(pi_premium=block)))
    # A pipeline that builds no backend (no params:backend input) never needs the key.
    hook.before_pipeline_run(_Pipeline({"params:policies"}), _Catalog(_params(pi_premium=block)))
    hook.after_pipeline_run()


def test_nodes_that_build_backends_get_every_block_resolved(tmp_path):
    hook = BackendParamsHook()
    hook._project_path = tmp_path
    params = _params(pi_x={"name": "simulated", "simulated": {"seed": 3, "cache_dir": "data/x"}})
    inputs = {"params:backend": params["backend"], "params:policies": params["policies"], "params:generation": {"seed": 1}}
    resolved = hook.before_node_run(None, inputs)
    assert set(resolved) == {"params:backend", "params:policies"}
    assert resolved["params:policies"]["pi_x"]["backend"]["simulated"]["cache_dir"] == str(tmp_path / "data/x")
    assert hook.before_node_run(None, {"params:policies": params["policies"]}) is None


def test_policy_defaults_cannot_name_a_backend():
    with pytest.raises(ValueError, match=r"`policy_defaults\.backend` is not read.*`policies\.<name>\.backend`"):
        policy_specs({"pi_0": {}}, {"backend": {"name": "simulated"}})


class _Pipeline:
    def __init__(self, inputs: set[str]) -> None:
        self._inputs = inputs

    def inputs(self) -> set[str]:
        return self._inputs


class _Catalog:
    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params

    def load(self, name: str) -> Any:
        return self._params[name.removeprefix("params:")]


# ------------------------------------------------------------------ check-models and dry run


def test_check_models_checks_every_policy_on_its_own_engine(tmp_path):
    """A simulated logging policy and a target served over HTTP (a local OpenAI-compatible server)."""
    sys.path.insert(0, str(Path(__file__).parent / "backends"))
    from fake_openai_server import FakeOpenAIServer

    from arena_cje.cli import check_models

    with FakeOpenAIServer() as server:
        served = {"name": "openai_compatible", "openai_compatible": {
            "base_url": server.url, "store_path": str(tmp_path / "never.sqlite"), "vocab_size": 256,
            "api_key_env": "ARENA_TEST_NO_SUCH_VAR"}}
        params = _params(pi_served=served)
        params["policies"]["pi_served"].update(model="fake-llm", temperature=1.0)
        lines, ok = check_models(params, n_samples=2)
        sent = {e["body"].get("model") for e in server.log}
    verdicts = [line for line in lines if not line.startswith(" ")]
    assert ok, lines
    assert verdicts[0].startswith("PASS  policy pi_0 (model m, T=0.5)")
    assert verdicts[1].startswith("PASS  policy pi_served (model fake-llm, T=1.0, on policies.pi_served.backend (openai_compatible))")
    assert verdicts[2].startswith("PASS  judge (model j)")  # on the top-level (simulated) backend
    assert sent == {"fake-llm"} and not (tmp_path / "never.sqlite").exists()


def test_dry_run_prices_each_row_on_the_backend_serving_it():
    params = load_parameters(env="fireworks")
    params["prompts"]["output_samples"] = 100
    hosted = params["backend"]["openai_compatible"]
    params["policies"]["pi_local"] = {"temperature": 0.5, "model": "smollm2", "backend": {
        "name": "openai_compatible", "openai_compatible": {"base_url": "http://127.0.0.1:8765/v1",
                                                           "store_path": "data/02_intermediate/local.sqlite"}}}
    params["policies"]["pi_premium"] = {"temperature": 0.5, "model": "big", "backend": {
        "name": "openai_compatible", "openai_compatible": {**hosted, "prices": {"big": {"prompt": 0.003, "completion": 0.009}}}}}
    rows = {(r.stage, r.policy): r for r in plan_run(params)}
    scout = hosted["prices"][params["policy_defaults"]["model"]]
    for stage in ("generate", "teacher_force"):
        assert rows[(stage, "pi_local")].max_cost_usd == 0 and rows[(stage, "pi_local")].backend == "policies.pi_local.backend"
        own = rows[(stage, "pi_premium")]
        assert own.max_cost_usd == pytest.approx((own.input_tokens * 0.003 + own.max_output_tokens * 0.009) / 1000)
        base = rows[(stage, "pi_0")]
        assert base.backend == "backend"
        assert base.max_cost_usd == pytest.approx((base.input_tokens * scout["prompt"] + base.max_output_tokens * scout["completion"]) / 1000)
    assert rows[("judge", "judge")].backend == "backend" and rows[("judge", "judge")].max_cost_usd > 0
    # pi_premium shares the hosted record, so the hosted budget counts both; the local record has no budget.
    caps = {b.backend: b for b in budgets(params)}
    assert set(caps["backend"].charged) == {"backend", "policies.pi_premium.backend"}
    assert caps["policies.pi_local.backend"].budget_usd is None
    lines = format_plan(list(rows.values()), list(caps.values()), {})
    assert lines[0].endswith("backend") and any(line.endswith("policies.pi_premium.backend") for line in lines)
    hosted_bound = sum(r.max_cost_usd for r in rows.values() if r.backend in ("backend", "policies.pi_premium.backend"))
    assert f"budget_usd $10.00 of backend (<= ${hosted_bound:.4f} on its request record)" in "\n".join(lines)
