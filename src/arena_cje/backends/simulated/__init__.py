"""The embedded simulated LLM world (default backend): seeded, offline, with a known ground truth.

``SimulatedBackend`` implements ``Backend`` (plus batch methods) and ``SimulatedTruth``;
``synthetic_prompts`` makes a stable pool of user prompts.
"""

from __future__ import annotations

from arena_cje.backends.simulated.backend import WORLD_VERSION, SimulatedBackend
from arena_cje.backends.simulated.features import policy_features, prompt_features
from arena_cje.backends.simulated.prompts import synthetic_prompts

__all__ = ["WORLD_VERSION", "SimulatedBackend", "policy_features", "prompt_features", "synthetic_prompts"]
