"""Project settings: soft-merged parameters, quiet start-up."""

import warnings

from kedro.config import OmegaConfigLoader

from arena_cje.hooks import (
    NOISY_MODULES,
    BackendParamsHook,
    NodeTimingHook,
    QuietWarningsHook,
    RunProvenanceHook,
    RunSummaryHook,
)

# Third-party libraries emit deprecation notices on every command; they are not actionable for
# users of this project, so they are hidden (our own code's warnings still show).
for _module in NOISY_MODULES:
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=_module)
    warnings.filterwarnings("ignore", category=FutureWarning, module=_module)
# kedro-viz imports a FastAPI response class that FastAPI now deprecates (a UserWarning subclass).
warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated.*")
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
