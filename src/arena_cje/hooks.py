"""Kedro hooks of the project."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

from arena_cje.experiment import resolve_backend_params

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
    """Give nodes the ``backend`` block with paths against the project root and Kedro credentials.

    Nodes stay pure functions of their parameters; this hook is where the run's context (project
    folder, ``conf/*/credentials.yml``) enters, through
    :func:`arena_cje.experiment.resolve_backend_params`.
    """

    INPUT = "params:backend"

    def __init__(self) -> None:
        self._project_path: Any = None
        self._env: str | None = None
        self._credentials: dict[str, Any] = {}

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project_path = context.project_path
        self._env = context.env
        try:
            self._credentials = dict(context.config_loader["credentials"])
        except MissingConfigException:
            self._credentials = {}

    @hook_impl
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        """Fail before the first node when the chosen backend cannot be configured (no API key)."""
        if self.INPUT in pipeline.inputs():
            resolve_backend_params(catalog.load(self.INPUT), self._project_path, self._credentials, self._env)

    @hook_impl
    def before_node_run(self, node: Any, inputs: dict[str, Any]) -> dict[str, Any] | None:
        if self.INPUT not in inputs:
            return None
        return {self.INPUT: resolve_backend_params(inputs[self.INPUT], self._project_path, self._credentials, self._env)}
