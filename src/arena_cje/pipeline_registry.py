"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from arena_cje.pipelines import data_prep, estimation, generation, judging, labeling, reporting
from arena_cje.pipelines.labeling.pipeline import create_export_pipeline, create_import_pipeline

#: The experiment's stages, in the order ``__default__`` runs them. Each is a Kedro namespace of
#: the same name (node ``estimation.estimate_policy_values``; kedro-viz collapses each into one
#: modular pipeline); dataset and parameter names are shared across them, not prefixed.
STAGES = {
    "data_prep": data_prep,
    "generation": generation,
    "judging": judging,
    "labeling": labeling,
    "estimation": estimation,
    "reporting": reporting,
}


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    The stages are listed explicitly (not discovered): ``__default__`` is their sum, and Kedro
    1.7's discovery only imports the pipelines a ``--pipelines`` run asks for.
    ``labeling_export`` / ``labeling_import`` are the two halves of labeling for real human
    raters (the simulated raters sit between them). ``reporting`` alone re-renders the plots and
    the report from what ``estimation`` persisted, without re-estimating.
    """
    pipelines = {name: module.create_pipeline() for name, module in STAGES.items()}
    pipelines["labeling_export"] = create_export_pipeline()
    pipelines["labeling_import"] = create_import_pipeline()
    pipelines["__default__"] = sum(pipelines[name] for name in STAGES)
    return pipelines
