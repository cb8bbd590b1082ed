"""A tiny stand-in for the simulated world's raters (``SimulatedTruth``), for tests only."""

from __future__ import annotations

import zlib

import numpy as np


class FakeWorld:
    """True quality from a hash of the response; raters vote 10 * quality + N(0, 1), rounded."""

    def true_quality(self, prompt: str, response: str) -> float:
        return (zlib.crc32(response.encode()) % 1000) / 999

    def true_value(self, policy, prompts):  # pragma: no cover - protocol completeness
        raise NotImplementedError

    def rate(self, prompt: str, response: str, n_votes: int, seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        q = self.true_quality(prompt, response)
        return [int(np.clip(round(10 * q + rng.normal(0, 1)), 0, 10)) for _ in range(n_votes)]
