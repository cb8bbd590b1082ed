"""The OpenAI-compatible path against a real server: vLLM's CPU build serving SmolLM2-135M.

The server is started by ``scripts/vllm_server.sh`` (its own virtual environment, 127.0.0.1 only)
and stopped at the end, also on failure. What is checked, as a user runs it:

* ``kedro check-models --env vllm_local`` passes for every policy and the judge;
* ``kedro run --env vllm_local``, killed with SIGKILL during generation and again during judging,
  then rerun, writes the estimates and the report with every row present and no error row, and
  repeats no completed call beyond those in flight at the kills (the server's own request counter);
* every logged row's stored log-prob equals an exact fp32 recomputation from full logits on the
  same weights (the ``local_transformers`` backend) within its ``tail_mass_bound`` + 1e-3 nats per
  token, at each policy's temperature: non-ASCII prompts and responses cut at ``max_tokens``
  included, and no row needed the two-call fallback;
* a further run, started from ``notebooks/``, sends no request at all.

``make test`` installs vLLM (``scripts/vllm_server.sh install``). Set ``ARENA_CJE_SKIP_VLLM=1`` to
skip these tests in a quick local loop.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from .conftest import PROJECT_ROOT, copy_project

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("ARENA_CJE_SKIP_VLLM") == "1", reason="ARENA_CJE_SKIP_VLLM=1"),
]

PORT = 8765  # conf/vllm_local's base_url
URL = f"http://127.0.0.1:{PORT}"
SCRIPT = PROJECT_ROOT / "scripts" / "vllm_server.sh"
KEDRO = str(Path(sys.executable).with_name("kedro"))
ENV = "vllm_local"


def _script(command: str, state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_PORT": str(PORT), "VLLM_STATE": str(state), "PROJECT_PY": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """A vLLM server on 127.0.0.1:8765 for this module; stopped afterwards whatever happens."""
    state = tmp_path_factory.mktemp("vllm_state")
    if requests_ok(f"{URL}/v1/models"):
        pytest.fail(f"something already serves {URL}; stop it first (bash scripts/vllm_server.sh stop)")
    started = _script("start", state)
    try:
        assert started.returncode == 0, f"vLLM did not start:\n{started.stdout}\n{started.stderr}"
        yield URL
    finally:
        _script("stop", state)


def requests_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def served_requests() -> float:
    """Requests the server has finished so far (``vllm:request_success_total`` summed over reasons)."""
    text = requests.get(f"{URL}/metrics", timeout=10).text
    values = [float(m.group(1)) for m in re.finditer(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)]
    assert values, "the server exports no vllm:request_success_total"
    return sum(values)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project with conf/vllm_local and its prompt file (data/ starts empty)."""
    root = copy_project(tmp_path_factory.mktemp("vllm_project"))
    shutil.copytree(PROJECT_ROOT / "conf" / ENV, root / "conf" / ENV)
    demo = PROJECT_ROOT / "data" / "01_raw" / "arena_demo"
    shutil.copytree(demo, root / "data" / "01_raw" / "arena_demo", dirs_exist_ok=True)
    (root / "notebooks").mkdir()
    return root


def kedro(project: Path, *args: str, cwd: Path | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    return subprocess.run([KEDRO, *args], cwd=cwd or project, env=env, capture_output=True, text=True, timeout=timeout)


def recorded(project: Path, stage: str) -> int:
    path = project / "data" / "02_intermediate" / "api_requests.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM requests WHERE stage = ? AND status = 'done'", (stage,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # table not created yet


def run_and_kill(project: Path, stage: str, after: int, deadline: float = 900) -> None:
    """Start ``kedro run --env vllm_local`` and SIGKILL it once ``stage`` has ``after`` more records."""
    start = recorded(project, stage)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([KEDRO, "run", "--env", ENV], cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()
    try:
        while recorded(project, stage) < start + after:
            assert proc.poll() is None, f"the run ended before {after} {stage} records were written"
            assert time.monotonic() - t0 < deadline, f"no {after} {stage} records after {deadline}s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_check_models_passes_on_vllm(vllm_server, project):
    result = kedro(project, "check-models", "--env", ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL PASS" in result.stdout
    assert "chat log-probs include the end-of-turn entry (detected)" in result.stdout


def test_killed_run_resumes_exactly_and_a_rerun_from_notebooks_sends_nothing(vllm_server, project):
    rng = random.Random(12)
    concurrency = 4  # conf/vllm_local: backend.openai_compatible.concurrency
    before = served_requests()
    run_and_kill(project, "generate", rng.randint(5, 60))
    run_and_kill(project, "judge", rng.randint(5, 60))
    result = kedro(project, "run", "--env", ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    served = served_requests() - before

    data = project / "data"
    estimates = pd.read_csv(data / "07_model_output" / "policy_estimates.csv")
    assert set(estimates["policy"]) == {"pi_0", "pi_hot", "pi_cot", "pi_concise"}
    assert (data / "08_reporting" / "report.html").stat().st_size > 10_000

    prompts = pd.read_parquet(data / "03_primary" / "prompts.parquet")
    responses = pd.read_parquet(data / "03_primary" / "responses.parquet")
    logprobs = pd.read_parquet(data / "03_primary" / "logprobs.parquet")
    judged = pd.read_parquet(data / "03_primary" / "judge_scores.parquet")
    n = len(prompts)
    assert n == 20
    # Every row present, none an error (transient faults are retried, never recorded as rows).
    assert len(responses) == 4 * n and responses["error"].isna().all(), responses["error"].dropna().head()
    assert len(logprobs) == 4 * n and logprobs["error"].isna().all(), logprobs["error"].dropna().head()
    assert len(judged) == 4 * n and judged["judge_score"].notna().all(), judged["judge_raw"].head()
    # The run covers what broke before: non-ASCII prompts, cut and ended responses.
    assert prompts["prompt"].map(lambda p: not p.isascii()).sum() >= 8
    logged = responses[responses["policy"] == "pi_0"]
    assert logged["truncated"].any() and (~logged["truncated"]).any()

    # The run measured the echo's own noise (identical T=1 requests): vLLM is deterministic.
    check = json.loads((data / "08_reporting" / "teacher_forcing_check.json").read_text())
    assert check["echo_repeats"] == 3 and check["echo_noise_mean"] is not None and check["echo_noise_mean"] < 1e-3

    # No completed call repeated beyond those in flight at the two kills.
    with sqlite3.connect(data / "02_intermediate" / "api_requests.sqlite") as conn:
        rows = conn.execute("SELECT stage, result FROM requests WHERE status = 'done'").fetchall()
    usage = [json.loads(result).get("usage", {}) for _, result in rows]
    two_call = sum(1 for (stage, _), u in zip(rows, usage) if stage == "teacher_force" and u.get("two_call"))
    # One HTTP request per recorded call, plus the second echo of two-call and id-keyed rows.
    distinct = sum(1 + bool(u.get("two_call")) + bool(u.get("id_echo")) for u in usage)
    assert served <= distinct + 2 * concurrency, (served, distinct)
    assert two_call == 0, "the ChatML boundary is a token boundary: no row should need the two-call fallback"

    # Exactness: the API path's log-probs against full-logit fp32 scoring of the same weights.
    from arena_cje.backends import PolicySpec
    from arena_cje.backends.local_transformers import LocalTransformersBackend
    from arena_cje.experiment import policy_specs
    from tests.conftest import load_parameters

    params = load_parameters(project / "conf", env=ENV)
    specs = policy_specs(params["policies"], params["policy_defaults"])
    exact_backend = LocalTransformersBackend(model="smollm2", token_store=None, progress=False)
    rows = logged.merge(prompts[["prompt_id", "prompt"]], on="prompt_id")
    worst = 0.0
    for name, spec in specs.items():
        stored = logprobs[logprobs["policy"] == name].set_index("prompt_id").loc[rows["prompt_id"]]
        exact = exact_backend.teacher_force_batch(
            rows["prompt"].tolist(), rows["response"].tolist(), PolicySpec(**{**spec.__dict__}),
            ended=(~rows["truncated"]).tolist(),
        )
        for pid, s_lp, s_n, bound, e in zip(rows["prompt_id"], stored["logprob"], stored["n_tokens"],
                                            stored["tail_mass_bound"], exact):
            assert e.logprob is not None, e.error
            assert s_n == e.n_tokens, (name, pid, s_n, e.n_tokens)
            gap = abs(s_lp - e.logprob)
            worst = max(worst, gap / max(1, e.n_tokens))
            assert gap <= bound + 1e-3 * e.n_tokens, (name, pid, s_lp, e.logprob, bound)
    print(f"worst |API - exact| per token: {worst:.2e} nats")

    # A run started from notebooks/ uses the same request record: nothing is sent.
    before_rerun = served_requests()
    again = kedro(project, "run", "--env", ENV, cwd=project / "notebooks")
    assert again.returncode == 0, again.stderr[-3000:]
    assert served_requests() == before_rerun
    assert not (project / "notebooks" / "data").exists()
    assert np.isfinite(estimates["estimate"]).any()


def test_a_clone_served_by_local_transformers_beside_vllm_has_log_weights_zero(vllm_server, project):
    """A run mixing engines: pi_0 (and the other policies) on the vLLM server, ``pi_clone`` (pi_0's
    settings) on the ``local_transformers`` backend with the same SmolLM2 weights, named by the
    policy's own ``backend`` block. The clone is generated and teacher-forced in-process (exact
    fp32 log-probs), pi_0 over HTTP (top-k rescaling): every log-weight log P_clone - log P_pi_0 of
    a logged response is 0 within the vLLM row's ``tail_mass_bound`` + 1e-3 nats per token.
    Run after the resumed run above, the vLLM policies' calls come from the request record."""
    pytest.importorskip("torch")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from tests.conftest import load_parameters

    pi_0 = load_parameters(project / "conf", env=ENV)["policies"]["pi_0"]
    clone = {**pi_0, "backend": {"name": "local_transformers", "local_transformers": {
        "model": "smollm2", "token_store": "data/02_intermediate/clone_token_ids.sqlite", "progress": False}}}
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=ENV, runtime_params={"policies": {"pi_clone": clone}}) as session:
        session.run(pipeline_names=["data_prep", "generation"])
        catalog = session.load_context().catalog
        responses, logprobs = catalog.load("responses"), catalog.load("logprobs")

    own = responses[responses["policy"] == "pi_clone"]
    assert len(own) == 20 and own["error"].isna().all()
    # Generated by the local engine (which reports its generation log-prob; the HTTP chat path reports none).
    assert own["logprob"].notna().all() and responses.loc[responses["policy"] == "pi_0", "logprob"].isna().all()
    assert (project / "data" / "02_intermediate" / "clone_token_ids.sqlite").exists()  # its own path, project-relative

    forced = logprobs.set_index(["policy", "prompt_id"])
    base, twin = forced.loc["pi_0"], forced.loc["pi_clone"].loc[forced.loc["pi_0"].index]
    assert base["error"].isna().all() and twin["error"].isna().all()
    assert (twin["tail_mass_bound"] == 0).all() and (base["n_tokens"] == twin["n_tokens"]).all()
    gap = (twin["logprob"] - base["logprob"]).abs()
    allowed = base["tail_mass_bound"] + 1e-3 * base["n_tokens"]
    assert (gap <= allowed).all(), pd.DataFrame({"gap": gap, "allowed": allowed})[gap > allowed]
    print(f"clone log-weights: max |log w| = {gap.max():.2e} nats (bound up to {allowed.max():.2e})")
