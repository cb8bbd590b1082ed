"""The ``local_transformers`` backend's public names (the code lives in :mod:`arena_cje.backends.local`).

Kept so that ``arena_cje.backends.local_transformers:LocalTransformersBackend``, ``resolve_model``
and ``default_cache_dir`` stay importable from scripts, benchmarks and configuration.
"""

from arena_cje.backends.local.backend import JUDGE_USER_TEMPLATE, LocalTransformersBackend
from arena_cje.backends.local.model import (
    DEFAULT_MODEL_ALIASES,
    convert_gguf,
    default_cache_dir,
    hub_offline,
    load_model,
    resolve_model,
    shipped_gguf_path,
)
from arena_cje.backends.local.token_store import ResponseTokens, TokenIdStore

__all__ = [
    "DEFAULT_MODEL_ALIASES",
    "JUDGE_USER_TEMPLATE",
    "LocalTransformersBackend",
    "ResponseTokens",
    "TokenIdStore",
    "convert_gguf",
    "default_cache_dir",
    "hub_offline",
    "load_model",
    "resolve_model",
    "shipped_gguf_path",
]
