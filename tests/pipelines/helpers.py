"""Run pipeline slices in memory (no files, no CLI start-up)."""

from __future__ import annotations

from typing import Any

from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from arena_cje.experiment import BackendRegistry


def run_in_memory(pipeline: Pipeline, inputs: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """Run ``pipeline`` with ``inputs`` and ``parameters``; return every dataset it produced.

    ``params:<key>`` entries are filled from the top-level parameter blocks. As in a Kedro run,
    the nodes share one backend per configuration, closed when the run ends.
    """
    catalog = DataCatalog()
    for name, value in inputs.items():
        catalog[name] = value
    for name in pipeline.inputs():
        if name.startswith("params:"):
            key = name.removeprefix("params:")
            value: Any = parameters
            for part in key.split("."):
                value = value[part]
            catalog[name] = value
    for name in pipeline.all_outputs():
        catalog[name] = _KeptDataset()
    with BackendRegistry():
        SequentialRunner().run(pipeline, catalog)
    return {name: catalog[name].load() for name in pipeline.all_outputs()}


class _KeptDataset(MemoryDataset):
    """A memory dataset the runner cannot release, so tests can read intermediate outputs."""

    def _release(self) -> None:
        pass
