"""Turn parameter blocks into typed specs and backends (shared by every pipeline)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from arena_cje.backends import Backend, JudgeSpec, PolicySpec, make_backend


def policy_specs(policies: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any] | None = None) -> dict[str, PolicySpec]:
    """Build one :class:`PolicySpec` per entry of the ``policies`` parameter block.

    Args:
        policies: ``policies`` parameters, name -> fields (temperature, system_prompt, ...).
        defaults: ``policy_defaults`` parameters merged under every policy.

    Raises:
        ValueError: a policy has an unknown field, or the block is empty.
    """
    if not policies:
        raise ValueError("parameters: `policies` is empty; define at least the logging policy")
    return {name: PolicySpec.from_params(name, fields or {}, defaults) for name, fields in policies.items()}


def judge_spec(judge: Mapping[str, Any]) -> JudgeSpec:
    """Build the :class:`JudgeSpec` from the ``judge`` parameter block."""
    allowed = set(JudgeSpec.__dataclass_fields__)
    unknown = set(judge) - allowed
    if unknown:
        raise ValueError(f"judge: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    spec = dict(judge)
    if "scale" in spec:
        from arena_cje.cje.scale import judge_scale  # the one place a scale is validated

        spec["scale"] = judge_scale(spec["scale"])
    return JudgeSpec(**spec)


def backend_from_params(backend: Mapping[str, Any]) -> Backend:
    """Return the backend described by the ``backend`` parameter block (one instance per config).

    The instance is cached so the nodes of one run share it (a local model loads once).
    """
    return _cached_backend(json.dumps(to_plain(backend), sort_keys=True))


@lru_cache(maxsize=4)
def _cached_backend(key: str) -> Backend:
    config = json.loads(key)
    if "name" not in config:
        raise ValueError("parameters: `backend.name` is missing")
    return make_backend(config["name"], **(config.get("options") or {}))


def to_plain(value: Any) -> Any:
    """Mappings and sequences (OmegaConf containers, tuples) -> plain JSON-able python objects."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def stable_seed(*parts: object) -> int:
    """A 31-bit seed that depends only on ``parts`` (not on Python's salted ``hash``)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF
