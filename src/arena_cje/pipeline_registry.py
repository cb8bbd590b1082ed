"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from arena_cje.pipelines.labeling.pipeline import create_export_pipeline, create_import_pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    ``__default__`` runs the whole experiment; ``labeling_export`` / ``labeling_import`` are the
    two halves of labeling for real human raters (the simulated raters sit between them).
    """
    pipelines = find_pipelines(raise_errors=True)
    pipelines["labeling_export"] = create_export_pipeline()
    pipelines["labeling_import"] = create_import_pipeline()
    pipelines["__default__"] = sum(
        pipelines[name] for name in ("data_prep", "generation", "judging", "labeling", "estimation")
    )
    return pipelines
