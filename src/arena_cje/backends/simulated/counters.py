"""Counter-based randomness of the simulated world: splitmix64 hashing of integer keys.

A sequence's uniforms are a function of its key and the step alone (``splitmix64(key + (t + 1) G)``),
never of the batch it is drawn in, so a response is the same whether it is generated alone or
with ten thousand others. :func:`mix64_py` is the same finaliser in exact Python integers (bitwise
the numpy one), for hashing a few rows without numpy's per-call overhead.
"""

from __future__ import annotations

import numpy as np

#: splitmix64's increment (2^64 / golden ratio).
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic is intended)."""
    z = x + np.uint64(GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mix64_py(x: int) -> int:
    """``mix64`` of one integer in exact Python arithmetic (bitwise the numpy version)."""
    z = (x + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def to_uint64(values: object) -> np.ndarray:
    """Integers of any sign (an int, a list of ints or an integer array) reduced mod 2^64, as uint64.

    Python ints go through exact integer arithmetic (``np.asarray`` would turn a list mixing ints
    above and below 2^63 into float64).
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return np.atleast_1d(values.astype(np.uint64))  # two's complement wrap = reduction mod 2^64
    if isinstance(values, (int, np.integer)):
        values = [values]
    return np.array([int(v) & MASK64 for v in values], dtype=np.uint64)


def sequence_keys(*parts: object) -> np.ndarray:
    """Combine integers / integer arrays (broadcast together) into per-sequence uint64 keys."""
    arrays = np.broadcast_arrays(*[to_uint64(p) for p in parts])
    key = np.zeros(arrays[0].shape, dtype=np.uint64)
    for a in arrays:
        key = mix64(key ^ a)
    return key


def step_uniforms(keys: np.ndarray, t: int) -> np.ndarray:
    """Uniforms in [0, 1) for step ``t`` of the sequences with ``keys`` (53-bit resolution)."""
    offset = np.uint64(((t + 1) * GOLDEN) & MASK64)
    bits = mix64(keys + offset)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
