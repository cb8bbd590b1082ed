"""Kedro hooks of the project."""

import warnings

from kedro.framework.hooks import hook_impl


class QuietWarningsHook:
    """Hide third-party deprecation noise that Kedro plugins re-enable at start-up."""

    @hook_impl
    def after_context_created(self, context) -> None:  # noqa: ARG002 - hook signature
        for module in ("kedro_telemetry", "kedro_viz", "omegaconf", "pydantic", "kedro_datasets"):
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
