"""Backends produce responses, teacher-forced log-probs and judge scores.

Chosen by configuration (``backend.name`` in ``conf/base/parameters.yml``); each one is a class
whose constructor takes the ``backend.options`` block as keyword arguments.
"""

from __future__ import annotations

import importlib
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
    "local_transformers": "arena_cje.backends.local_transformers:LocalTransformersBackend",
}


def make_backend(name: str, **options: Any) -> Backend:
    """Instantiate the backend registered under ``name`` with ``options``.

    Raises:
        ValueError: ``name`` is not a known backend.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend.name: unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)


__all__ = [
    "BACKENDS",
    "Backend",
    "Generation",
    "JudgeSpec",
    "Judgement",
    "PolicySpec",
    "SimulatedTruth",
    "TeacherForced",
    "make_backend",
]
