"""Project settings: soft-merged parameters, quiet start-up."""

from kedro.config import OmegaConfigLoader

from arena_cje.hooks import (
    BackendParamsHook,
    NodeTimingHook,
    QuietWarningsHook,
    RunProvenanceHook,
    RunSummaryHook,
)

# `kedro run --pipelines NAME` is the documented usage; the older `--pipeline` still works and
# Kedro's own deprecation notice for it is left visible.

HOOKS = (QuietWarningsHook(), NodeTimingHook(), BackendParamsHook(), RunProvenanceHook(), RunSummaryHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/local (or any --env) overrides single keys of nested parameter blocks instead of
    # replacing whole top-level blocks: changing `policies.pi_hot.temperature` keeps the rest.
    "merge_strategy": {"parameters": "soft", "catalog": "soft"},
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
    },
}
