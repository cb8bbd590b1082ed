"""Kedro hooks of the project."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

from kedro.framework.hooks import hook_impl

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
