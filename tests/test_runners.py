"""Kedro's ThreadRunner and ParallelRunner give the SequentialRunner's outputs, byte for byte.

ParallelRunner runs nodes in worker processes (``fork`` on Linux here): the backend blocks must
reach them resolved, and a backend with run-wide state (budget, rate limit, a loaded model) must be
refused before the first node, because each worker would build its own instance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from kedro.io import DataCatalog, MemoryDataset, SharedMemoryDataCatalog

from arena_cje.experiment import active_registry
from arena_cje.hooks import BackendParamsHook

from .conftest import copy_project

#: Small enough for three whole runs in seconds: the truth's Monte Carlo and the budget planner
#: (the slowest node of a small run) are cut to match.
RUN_PARAMS = {"prompts": {"output_samples": 80, "pool_size": 200},
              "backend": {"simulated": {"truth_min_total_draws": 2000}},
              "report": {"plan_budget_multiples": [1]}}
#: Fields of results.json that name the run rather than its results.
RUN_FIELDS = ("created_at", "run_id")
#: The raw-ratings archive names each copy by the time it was made (labeling.archive_raw_ratings).
ARCHIVE_TIME = re.compile(r"(?<=/archive/)\d{8}T\d{6}\.\d+Z_")


def _run_and_read(project: Path, runner: Any) -> dict[str, bytes]:
    """Run every pipeline with ``runner`` and return every file it wrote under data/ (then delete them)."""
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, runtime_params=RUN_PARAMS) as session:
        session.run(runner=runner)
    assert active_registry() is None, "the run's backends were closed"
    files = {}
    for path in sorted((project / "data").rglob("*")):
        if path.is_file() and "simulated_truth" not in path.parts:  # the truth cache is reused, not rewritten
            files[ARCHIVE_TIME.sub("<time>_", str(path.relative_to(project)))] = path.read_bytes()
            path.unlink()  # the next run starts from the same empty data/
    return files


def _without_run_identity(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_run_identity(v) for k, v in value.items() if k not in RUN_FIELDS}
    if isinstance(value, list):
        return [_without_run_identity(v) for v in value]
    return value


def test_thread_and_parallel_runners_write_what_the_sequential_runner_writes(tmp_path):
    from kedro.framework.startup import bootstrap_project
    from kedro.runner import ParallelRunner, SequentialRunner, ThreadRunner

    project = copy_project(tmp_path)
    bootstrap_project(project)
    sequential = _run_and_read(project, SequentialRunner())
    assert "data/07_model_output/policy_estimates.csv" in sequential and "data/08_reporting/report.html" in sequential
    results = "data/07_model_output/results.json"
    for runner in (ThreadRunner(max_workers=2), ParallelRunner(max_workers=2)):
        other = _run_and_read(project, runner)
        name = type(runner).__name__
        assert sorted(other) == sorted(sequential), name
        differ = sorted(f for f in sequential if f != results and other[f] != sequential[f])
        assert not differ, f"{name} wrote different {differ}"
        ours, theirs = (json.loads(files[results]) for files in (sequential, other))
        assert ours["run"]["run_id"] != theirs["run"]["run_id"]  # a run of its own ...
        assert _without_run_identity(theirs) == _without_run_identity(ours), name  # ... with the same results


def _policies_with_own_backend(name: str) -> dict[str, Any]:
    options = {"seed": 1} if name == "simulated" else {"base_url": "http://127.0.0.1:9/v1"}
    return {"pi_0": {"temperature": 0.5}, "pi_remote": {"backend": {"name": name, name: options}}}


class _Pipeline:
    def inputs(self) -> set[str]:
        return {"params:backend", "params:policies"}


def _catalog(cls: type, policies: dict[str, Any]) -> DataCatalog:
    backend = {"name": "simulated", "simulated": {"seed": 0, "cache_dir": "data/06_models/simulated_truth"}}
    return cls({"params:backend": MemoryDataset(backend), "params:policies": MemoryDataset(policies)})


def test_parallel_runner_refuses_a_backend_each_worker_process_would_build_again(tmp_path):
    hook = BackendParamsHook()
    hook._project_path = tmp_path
    catalog = _catalog(SharedMemoryDataCatalog, _policies_with_own_backend("openai_compatible"))
    with pytest.raises(ValueError, match=r"ParallelRunner .*`policies\.pi_remote\.backend` uses backend "
                                         r"'openai_compatible'.*budget_usd.*per process.*ThreadRunner"):
        hook.before_pipeline_run(_Pipeline(), catalog)
    assert active_registry() is None  # refused before the run's registry opened


def test_sequential_and_thread_runs_may_use_any_backend(tmp_path):
    """Their nodes share the run's one backend per configuration, in one process."""
    hook = BackendParamsHook()
    hook._project_path = tmp_path
    hook.before_pipeline_run(_Pipeline(), _catalog(DataCatalog, _policies_with_own_backend("openai_compatible")))
    try:
        assert active_registry() is not None
    finally:
        hook.after_pipeline_run()


def test_parallel_runner_gets_the_resolved_blocks_from_the_catalog(tmp_path):
    """A worker started with spawn/forkserver has a fresh hook without the project path: the
    catalog it unpickles must already hold the resolved (absolute) paths."""
    hook = BackendParamsHook()
    hook._project_path = tmp_path
    catalog = _catalog(SharedMemoryDataCatalog, _policies_with_own_backend("simulated"))
    hook.before_pipeline_run(_Pipeline(), catalog)
    try:
        assert catalog.load("params:backend")["simulated"]["cache_dir"] == str(tmp_path / "data/06_models/simulated_truth")
        assert catalog.load("params:policies")["pi_remote"]["backend"]["name"] == "simulated"
        worker_hook = BackendParamsHook()  # what a spawned worker registers: no after_context_created
        inputs = {"params:backend": catalog.load("params:backend")}
        assert worker_hook.before_node_run(None, inputs) == inputs  # nothing left to resolve
    finally:
        hook.after_pipeline_run()


def test_model_call_nodes_run_side_by_side_share_the_backends_concurrency():
    """ThreadRunner runs teacher forcing, judging and the echo check at once on the run's one
    backend: together they keep at most ``concurrency`` items in flight, not ``concurrency`` each."""
    import threading
    import time

    from arena_cje.backends.openai_compatible.access import _Budget
    from arena_cje.backends.openai_compatible.batch import BatchRunner, Call

    runner = BatchRunner(store=None, budget=_Budget(None, 0.0), scrub=str, concurrency=2, max_retries=0, progress=False)
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def task() -> Call:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)  # long enough for the other threads to start meanwhile
        with lock:
            in_flight[0] -= 1
        return Call("ok")

    def node(out: list[Any]) -> None:
        out.extend(runner.run("judge", "pi_0", [None] * 6, [task] * 6, [("m", 0.0)] * 6, lambda e: e, use_store=False))

    outputs: list[list[Any]] = [[], [], []]
    nodes = [threading.Thread(target=node, args=(out,)) for out in outputs]
    for thread in nodes:
        thread.start()
    for thread in nodes:
        thread.join()
    assert outputs == [["ok"] * 6] * 3
    assert peak[0] == 2  # three batches of 6 items, two threads each: never more than 2 at once
