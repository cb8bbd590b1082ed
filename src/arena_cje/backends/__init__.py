"""Backends produce responses, teacher-forced log-probs and judge scores.

Chosen by configuration (``backend.name`` in ``conf/base/parameters.yml``); each one is a class
whose constructor takes the block named after it (``backend.<name>``) as keyword arguments. Only
the chosen backend's block is read, so one backend's options never reach another when
environments soft-merge (``conf/base`` keeps the simulated backend's block in every environment).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from arena_cje.backends.base import (
    Backend,
    Generation,
    JudgeSpec,
    Judgement,
    PolicySpec,
    SimulatedTruth,
    TeacherForced,
)

#: name -> "module:Class"; imported lazily so optional heavy dependencies load only when used.
BACKENDS: dict[str, str] = {
    "simulated": "arena_cje.backends.simulated:SimulatedBackend",
    "openai_compatible": "arena_cje.backends.openai_compatible:OpenAICompatibleBackend",
    "local_transformers": "arena_cje.backends.local.backend:LocalTransformersBackend",
}


#: name -> options that are file paths; relative ones are resolved against the project root, so a
#: run started from another folder (``notebooks/``) finds the same durable records and caches.
PATH_OPTIONS: dict[str, tuple[str, ...]] = {
    "simulated": ("cache_dir",),
    "openai_compatible": ("store_path",),
    "local_transformers": ("cache_dir", "token_store"),
}


#: Backends that Kedro's ParallelRunner may build. Its worker processes each build their own
#: instance, which is harmless only for a backend without run-wide state: openai_compatible's
#: budget cap, rate limit and concurrency hold per instance (they would hold per process, not per
#: run), and local_transformers would load its model once per process.
PROCESS_SAFE: frozenset[str] = frozenset({"simulated"})


def backend_class(name: str, where: str = "backend") -> type:
    """The class registered under ``name`` (imports its module).

    Args:
        name: The backend's name.
        where: The parameter block naming it, quoted by the error (``policies.pi_x.backend``).

    Raises:
        ValueError: ``name`` is not a known backend.
    """
    if name not in BACKENDS:
        raise ValueError(f"{where}.name: unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def check_options(name: str, options: Mapping[str, Any], cls: type | None = None, where: str = "backend") -> None:
    """Raise if ``options`` holds a key the constructor of backend ``name`` does not take.

    Raises:
        ValueError: naming the block (``{where}.{name}``), the unknown key(s), the backend and the
            keys it accepts.
    """
    cls = cls or backend_class(name, where)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"{where}.{name}: unknown option(s) {unknown} for backend {name!r}; it accepts {accepted}"
        )


def make_backend(name: str, **options: Any) -> Backend:
    """Instantiate the backend registered under ``name`` with ``options`` (checked first).

    Raises:
        ValueError: ``name`` is not a known backend, or an option is not one of its own.
    """
    cls = backend_class(name)
    check_options(name, options, cls)
    return cls(**options)


__all__ = [
    "BACKENDS",
    "PATH_OPTIONS",
    "PROCESS_SAFE",
    "Backend",
    "Generation",
    "JudgeSpec",
    "Judgement",
    "PolicySpec",
    "SimulatedTruth",
    "TeacherForced",
    "backend_class",
    "check_options",
    "make_backend",
]
