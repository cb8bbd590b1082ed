"""Turn parameter blocks into typed specs and backends (shared by every pipeline)."""

from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arena_cje.backends import PATH_OPTIONS, Backend, JudgeSpec, PolicySpec, backend_class, check_options, make_backend

logger = logging.getLogger(__name__)


class MissingCredentialsError(ValueError):
    """The chosen backend names an API key source and none of them holds a key."""


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


def backend_config(backend: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The chosen backend's name and its own options block (``backend.<name>``), checked.

    Raises:
        ValueError: ``backend.name`` is missing or unknown, the old shared ``backend.options``
            block is used, or the chosen block has an option its backend does not take.
    """
    if "name" not in backend:
        raise ValueError("parameters: `backend.name` is missing")
    name = str(backend["name"])
    if "options" in backend:
        raise ValueError(
            f"parameters: `backend.options` is no longer read; put the options of backend {name!r} under "
            f"`backend.{name}` (each backend has its own block, so one backend's options never reach another)"
        )
    options = dict(to_plain(backend.get(name) or {}))
    check_options(name, {k: v for k, v in options.items() if k != "credentials"}, backend_class(name))
    return name, options


def resolve_backend_params(
    backend: Mapping[str, Any],
    project_path: str | Path | None = None,
    credentials: Mapping[str, Any] | None = None,
    env: str | None = None,
) -> dict[str, Any]:
    """The ``backend`` block ready to build: paths absolute, credentials looked up.

    * Relative path options (:data:`arena_cje.backends.PATH_OPTIONS`) are joined to
      ``project_path``, as Kedro does for the catalog's file paths: a run started from
      ``notebooks/`` uses the same request record and caches as one started from the root.
    * ``credentials: NAME`` in the chosen block names an entry of Kedro's credentials
      (``NAME: {api_key: ...}`` in ``conf/<env>/credentials.yml``, git-ignored); its ``api_key``
      is passed to the backend unless the ``api_key_env`` environment variable is set, which
      wins (the backend reads it).

    Raises:
        MissingCredentialsError: the block names a credentials entry or an ``api_key_env`` and
            neither holds a key (one line naming both places).
    """
    name, options = backend_config(backend)
    if project_path is not None:
        for key in PATH_OPTIONS.get(name, ()):
            value = options.get(key)
            if isinstance(value, str) and value and value != "auto" and not Path(value).expanduser().is_absolute():
                options[key] = str(Path(project_path) / value)
    entry_name = options.pop("credentials", None)
    if entry_name is not None or options.get("api_key_env"):
        entry = (credentials or {}).get(entry_name) if entry_name else None
        key = entry.get("api_key") if isinstance(entry, Mapping) else None
        variable = options.get("api_key_env")
        if variable and os.environ.get(variable):
            pass  # the backend reads it
        elif key:
            options["api_key"] = str(key)
        elif not options.get("api_key"):
            places = [f"the {variable} environment variable"] if variable else []
            if entry_name:
                places.append(f"`{entry_name}: {{api_key: ...}}` in conf/{env or '<env>'}/credentials.yml")
            raise MissingCredentialsError(f"no API key for backend {name!r}: set {' or '.join(places)}")
    return {"name": name, name: options}


def backend_from_params(backend: Mapping[str, Any]) -> Backend:
    """Return the backend described by the ``backend`` parameter block.

    Inside a run (an active :class:`BackendRegistry`, which :class:`arena_cje.hooks.BackendParamsHook`
    opens for every Kedro run) the nodes share one instance per configuration (a local model loads
    once) and the registry closes it when the run ends or fails. Outside one (a node called
    directly, a notebook) every call builds a new instance that belongs to the caller.
    """
    registry = active_registry()
    if registry is not None:
        return registry.get(backend)
    return build_backend(backend)


def build_backend(backend: Mapping[str, Any]) -> Backend:
    """A new backend from the ``backend`` block (``credentials`` must already be resolved)."""
    name, options = _backend_key(backend)
    return make_backend(name, **options)


def _backend_key(backend: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    name, options = backend_config(backend)
    options.pop("credentials", None)  # resolved into api_key by resolve_backend_params
    return name, options


class BackendRegistry:
    """The live backends of one run: one instance per configuration, closed together.

    ``close_all`` calls ``close()`` on every backend that has one (the HTTP session and request
    record of ``openai_compatible``, the token-id store of ``local_transformers``). Used as a
    context manager it is the active registry for the duration of the ``with`` block::

        with BackendRegistry():
            generate_responses(...)  # nodes share one backend, closed on leaving the block

    Thread-safe: nodes of a threaded run building the same backend get the same instance.
    """

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._backends)

    def get(self, backend: Mapping[str, Any]) -> Backend:
        """The backend for this ``backend`` block, built on first use."""
        name, options = _backend_key(backend)
        key = json.dumps({"name": name, "options": options}, sort_keys=True, default=str)
        with self._lock:
            if key not in self._backends:
                self._backends[key] = make_backend(name, **options)
            return self._backends[key]

    def activate(self) -> "BackendRegistry":
        """Make this the registry that :func:`backend_from_params` uses (until :meth:`close_all`)."""
        global _ACTIVE
        _ACTIVE = self
        return self

    def close_all(self) -> None:
        """Close every backend (each one even when another fails to close) and deactivate.

        A backend that fails to close is logged with its error; closing never raises, so it
        cannot hide the error of a failed run.
        """
        global _ACTIVE
        with self._lock:
            backends, self._backends = list(self._backends.values()), {}
            if _ACTIVE is self:
                _ACTIVE = None
        for backend in backends:
            close = getattr(backend, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception:  # noqa: BLE001 - reported, and the other backends still close
                logger.exception("Closing backend %r failed", backend)

    def __enter__(self) -> "BackendRegistry":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close_all()


#: The registry of the run in progress (set by BackendRegistry.activate, cleared by close_all).
#: A plain module variable rather than a ContextVar so that ThreadRunner's worker threads see it.
_ACTIVE: BackendRegistry | None = None


def active_registry() -> BackendRegistry | None:
    """The registry of the run in progress, or ``None`` outside a run."""
    return _ACTIVE


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
