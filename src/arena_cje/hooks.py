"""Kedro hooks of the project."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from typing import Any

from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from kedro.io import SharedMemoryDataCatalog

from arena_cje.backends import PROCESS_SAFE
from arena_cje.experiment import (
    BACKEND_PARAMS,
    BackendRegistry,
    backend_blocks_in,
    resolve_backends_in,
)
from arena_cje.provenance import run_identity

logger = logging.getLogger(__name__)

NOISY_MODULES = ("kedro_telemetry", "kedro_viz", "omegaconf", "pydantic", "kedro_datasets")


class QuietWarningsHook:
    """Hide third-party deprecation noise that Kedro plugins re-enable at start-up."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:  # noqa: ARG002 - hook signature
        for module in NOISY_MODULES:
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)


class NodeTimingHook:
    """Log how long each node took, and a summary of the slowest ones at the end of a run."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._took: dict[str, float] = {}

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Any) -> None:
        took = time.perf_counter() - self._started.pop(node.name, time.perf_counter())
        self._took[node.name] = took
        logger.info("Node %s took %.2f s", node.name, took)

    @hook_impl
    def after_pipeline_run(self) -> None:
        slowest = sorted(self._took.items(), key=lambda item: -item[1])[:5]
        if slowest:
            logger.info("Slowest nodes: %s", ", ".join(f"{name} {took:.1f} s" for name, took in slowest))
        self._took.clear()


class BackendParamsHook:
    """Give nodes the backend blocks resolved for the run, and the run's live backends.

    * Parameters: nodes stay pure functions of their parameters; this hook is where the run's
      context (project folder, ``conf/*/credentials.yml``) enters, through
      :func:`arena_cje.experiment.resolve_backends_in`: the top-level ``backend`` block and every
      block of its own that a policy, the judge or the LLM oracle names (``policies.<p>.backend``,
      ``judge.backend``, ``labeling.llm_oracle.backend``), each with its own credentials and paths.
    * Lifecycle: each run gets its own :class:`arena_cje.experiment.BackendRegistry`, so the nodes
      of a run share one backend per configuration (``backend_from_params``), and every backend
      is closed (HTTP session, SQLite stores) when the run ends or fails: no connection outlives
      the run, and the next run (or the next ``KedroSession`` in the same process) opens its own.
    * ``ParallelRunner`` (its catalog is a ``SharedMemoryDataCatalog``) runs nodes in worker
      processes, each with its own registry: a run that builds a backend with run-wide state
      (not in :data:`arena_cje.backends.PROCESS_SAFE`) is refused before the first node. The
      blocks of the others are resolved into the catalog, because a worker started with ``spawn``
      or ``forkserver`` (macOS, Python >= 3.14) gets a fresh copy of this hook that never saw the
      project path.
    """

    INPUT = "params:backend"
    #: Node inputs that hold backend blocks (the top-level parameters of ``BACKEND_PARAMS``). They
    #: are resolved for the nodes that build backends, which all take ``params:backend`` (the
    #: default block): a node or pipeline that sends nothing never needs a key.
    INPUTS = tuple(f"params:{key}" for key in BACKEND_PARAMS)

    def __init__(self) -> None:
        self._project_path: Any = None
        self._env: str | None = None
        self._credentials: dict[str, Any] = {}
        self._registry: BackendRegistry | None = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project_path = context.project_path
        self._env = context.env
        try:
            self._credentials = dict(context.config_loader["credentials"])
        except MissingConfigException:
            self._credentials = {}

    # trylast: the registry opens only after every other before_pipeline_run hook has passed.
    # Kedro calls neither after_pipeline_run nor on_pipeline_error when one of them raises, so a
    # registry opened earlier would stay active with nobody to close it.
    @hook_impl(trylast=True)
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        """Fail before the first node when a backend the run uses cannot be configured (an unknown
        option, no API key), naming its block.

        Then open the run's backend registry (backends are built when a node first asks).
        """
        inputs = pipeline.inputs()
        if self.INPUT in inputs:
            resolved = {name: self._resolve(name, catalog.load(name)) for name in self.INPUTS if name in inputs}
            if isinstance(catalog, SharedMemoryDataCatalog):
                refuse_per_process_backends(resolved)
                for name, value in resolved.items():
                    catalog.save(name, value)
        self._close()  # a previous run of this session that ended without either end hook
        self._registry = BackendRegistry().activate()

    @hook_impl
    def before_node_run(self, node: Any, inputs: dict[str, Any]) -> dict[str, Any] | None:
        if self.INPUT not in inputs:
            return None
        return {name: self._resolve(name, inputs[name]) for name in self.INPUTS if name in inputs}

    def _resolve(self, name: str, value: Any) -> Any:
        return resolve_backends_in(name.removeprefix("params:"), value, self._project_path, self._credentials, self._env)

    # tryfirst: close before another end-of-run hook can raise and skip this one.
    @hook_impl(tryfirst=True)
    def after_pipeline_run(self) -> None:
        """Close the run's backends."""
        self._close()

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self) -> None:
        """Close the run's backends when the run fails (Kedro re-raises the error afterwards)."""
        self._close()

    def _close(self) -> None:
        if self._registry is not None:
            registry, self._registry = self._registry, None
            registry.close_all()


def refuse_per_process_backends(resolved: dict[str, Any]) -> None:
    """Raise when a ``ParallelRunner`` run would build a backend that is not process-safe.

    Args:
        resolved: The run's backend parameters (``params:backend``, ``params:policies``, ...),
            resolved.

    Raises:
        ValueError: naming the first such block, its backend, the reason and what to run instead.
    """
    for name, value in resolved.items():
        for where, block in backend_blocks_in(name.removeprefix("params:"), value).items():
            backend = block.get("name") if isinstance(block, Mapping) else None
            if backend not in PROCESS_SAFE:
                raise ValueError(
                    f"ParallelRunner cannot run this pipeline: `{where}` uses backend {backend!r}. ParallelRunner "
                    f"runs nodes in separate worker processes, each building its own backend, so openai_compatible's "
                    f"budget_usd, requests_per_minute and concurrency would hold per process instead of per run, and "
                    f"local_transformers would load its model once per process (only {sorted(PROCESS_SAFE)} can). "
                    f"Use the default SequentialRunner or --runner ThreadRunner (nodes share one backend), or run "
                    f"ParallelRunner only on pipelines that call no model, e.g. --pipelines labeling_import,estimation."
                )


class RunProvenanceHook:
    """Give the run's identity to the nodes that record provenance (their ``kedro_run`` input).

    Stateless: the identity (``run_id`` = the session id, env, pipelines, runtime parameters; see
    :func:`arena_cje.provenance.run_identity`) goes into this run's catalog, so nothing carries
    over to the next run or session in the same process. Without this hook the catalog's default
    (an empty ``kedro_run``) is read and the results say there was no Kedro run id.
    """

    INPUT = "kedro_run"

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if self.INPUT in pipeline.inputs():
            if self.INPUT in catalog:  # the catalog's empty default: filled in place (no "Replacing dataset")
                catalog.save(self.INPUT, run_identity(run_params))
            else:
                catalog[self.INPUT] = run_identity(run_params)


class RunSummaryHook:
    """After a run that wrote the report: where it is, the decision and the verdict per policy."""

    @hook_impl
    def after_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        if "report_html" not in pipeline.all_outputs():
            return
        from arena_cje.report.verdicts import run_summary_lines

        try:
            describe = getattr(catalog.get("report_html"), "_describe", dict)()
            lines = run_summary_lines(
                catalog.load("policy_estimates"), catalog.load("policy_differences"), catalog.load("policy_decisions"),
                str(catalog.load("params:logging_policy")), catalog.load("estimation_result").config.alpha,
                str(describe.get("filepath")) if describe.get("filepath") else None,
            )
        except Exception as exc:  # noqa: BLE001 - a summary must never fail a finished run
            logger.warning("Could not summarise the run: %s", exc)
            return
        for line in lines:
            logger.info(line)
