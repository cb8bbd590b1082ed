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
from arena_cje.plain import to_plain

logger = logging.getLogger(__name__)


class MissingCredentialsError(ValueError):
    """The chosen backend names an API key source and none of them holds a key."""


#: Key under which a policy (``policies.<name>.backend``), the judge (``judge.backend``) or the LLM
#: oracle (``labeling.llm_oracle.backend``) names its own backend: a block of the same shape as the
#: top-level ``backend`` block (``{name: X, X: {...options}}``), used instead of it. One vLLM server
#: serves one model, so a policy that is another model (or another provider) needs its own block.
OWN_BACKEND = "backend"
#: Top-level parameters that hold backend blocks (what :func:`resolve_backends_in` resolves).
BACKEND_PARAMS = ("backend", "policies", "judge", "labeling")


def policy_specs(policies: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any] | None = None) -> dict[str, PolicySpec]:
    """Build one :class:`PolicySpec` per entry of the ``policies`` parameter block.

    A policy's own ``backend`` block is not part of its spec (see :func:`policy_backends`).

    Args:
        policies: ``policies`` parameters, name -> fields (temperature, system_prompt, ...).
        defaults: ``policy_defaults`` parameters merged under every policy.

    Raises:
        ValueError: a policy has an unknown field, the block is empty, or ``policy_defaults``
            names a backend (the top-level ``backend`` block is every policy's default).
    """
    if not policies:
        raise ValueError("parameters: `policies` is empty; define at least the logging policy")
    if defaults and OWN_BACKEND in defaults:
        raise ValueError(
            "parameters: `policy_defaults.backend` is not read; the top-level `backend` block is every policy's "
            "default, and a policy names its own under `policies.<name>.backend`"
        )
    return {name: PolicySpec.from_params(name, _without_backend(fields), defaults) for name, fields in policies.items()}


def judge_spec(judge: Mapping[str, Any]) -> JudgeSpec:
    """Build the :class:`JudgeSpec` from the ``judge`` parameter block (or ``labeling.llm_oracle``).

    Its own ``backend`` block, if any, is not part of the spec (see :func:`own_backend`).
    """
    judge = _without_backend(judge)
    allowed = set(JudgeSpec.__dataclass_fields__)
    unknown = set(judge) - allowed
    if unknown:
        raise ValueError(f"judge: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    spec = dict(judge)
    if "scale" in spec:
        from arena_cje.cje.scale import judge_scale  # the one place a scale is validated

        spec["scale"] = judge_scale(spec["scale"])
    return JudgeSpec(**spec)


def _without_backend(fields: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (fields or {}).items() if k != OWN_BACKEND}


def own_backend(fields: Mapping[str, Any] | None, default: Mapping[str, Any]) -> Mapping[str, Any]:
    """The backend block of a policy, the judge or the LLM oracle: its own ``backend`` block when
    it names one, else ``default`` (the top-level ``backend`` block)."""
    own = (fields or {}).get(OWN_BACKEND)
    return default if own is None else own


def serving_backend(fields: Mapping[str, Any] | None, default: Mapping[str, Any], where: str) -> tuple[str, Mapping[str, Any]]:
    """``(place, block)`` of the backend serving a policy, the judge or the LLM oracle: its own
    block, found at ``where`` (e.g. ``policies.pi_x.backend``), else the top-level one at ``backend``."""
    own = (fields or {}).get(OWN_BACKEND)
    return ("backend", default) if own is None else (where, own)


def policy_backends(backend: Mapping[str, Any], policies: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Policy name -> the backend block that generates and teacher-forces for it.

    A policy is generated *and* scored (teacher forcing of the logged responses under it) by its
    own backend, so its log-probs are those of the model that produces its responses; the
    importance weight of a logged row is ``exp(log P_target-backend - log P_logging-backend)``.
    """
    return {name: own_backend(fields, backend) for name, fields in policies.items()}


def backend_blocks(params: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every backend block of a run's parameters, keyed by where it is.

    Keys: ``backend`` and, where present, ``policies.<name>.backend``, ``judge.backend`` and
    ``labeling.llm_oracle.backend`` (the latter only when ``labeling.oracle`` is ``llm``).
    """
    blocks: dict[str, Mapping[str, Any]] = {"backend": params["backend"]}
    for name, fields in (params.get("policies") or {}).items():
        if (fields or {}).get(OWN_BACKEND) is not None:
            blocks[f"policies.{name}.backend"] = fields[OWN_BACKEND]
    if (params.get("judge") or {}).get(OWN_BACKEND) is not None:
        blocks["judge.backend"] = params["judge"][OWN_BACKEND]
    labeling = params.get("labeling") or {}
    if labeling.get("oracle") == "llm" and (labeling.get("llm_oracle") or {}).get(OWN_BACKEND) is not None:
        blocks["labeling.llm_oracle.backend"] = labeling["llm_oracle"][OWN_BACKEND]
    return blocks


def backend_config(backend: Mapping[str, Any], where: str = "backend") -> tuple[str, dict[str, Any]]:
    """The chosen backend's name and its own options block (``<where>.<name>``), checked.

    Args:
        backend: A backend block ``{name: X, X: {...options}}``.
        where: Where the block is in the parameters (``backend``, ``policies.pi_x.backend``, ...),
            quoted by every error.

    Raises:
        ValueError: the block is not a mapping, ``name`` is missing or unknown, the old shared
            ``options`` block is used, or the chosen block has an option its backend does not take.
    """
    if not isinstance(backend, Mapping):
        raise ValueError(f"parameters: `{where}` must be a block {{name: <backend>, <backend>: {{...}}}}, "
                         f"got {type(backend).__name__} {backend!r}")
    if "name" not in backend:
        raise ValueError(f"parameters: `{where}.name` is missing")
    name = str(backend["name"])
    if "options" in backend:
        raise ValueError(
            f"parameters: `{where}.options` is no longer read; put the options of backend {name!r} under "
            f"`{where}.{name}` (each backend has its own block, so one backend's options never reach another)"
        )
    options = dict(to_plain(backend.get(name) or {}))
    check_options(name, {k: v for k, v in options.items() if k != "credentials"}, backend_class(name, where), where)
    return name, options


def resolve_backend_params(
    backend: Mapping[str, Any],
    project_path: str | Path | None = None,
    credentials: Mapping[str, Any] | None = None,
    env: str | None = None,
    where: str = "backend",
) -> dict[str, Any]:
    """A backend block ready to build: paths absolute, credentials looked up.

    * Relative path options (:data:`arena_cje.backends.PATH_OPTIONS`) are joined to
      ``project_path``, as Kedro does for the catalog's file paths: a run started from
      ``notebooks/`` uses the same request record and caches as one started from the root.
    * ``credentials: NAME`` in the chosen block names an entry of Kedro's credentials
      (``NAME: {api_key: ...}`` in ``conf/<env>/credentials.yml``, git-ignored); its ``api_key``
      is passed to the backend unless the ``api_key_env`` environment variable is set, which
      wins (the backend reads it).

    Every block (the top-level one, a policy's, the judge's) is resolved on its own, with its own
    ``credentials`` and paths; ``where`` names it in errors.

    Raises:
        MissingCredentialsError: the block names a credentials entry or an ``api_key_env`` and
            neither holds a key (one line naming the block and both places).
    """
    name, options = backend_config(backend, where)
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
            block = "" if where == "backend" else f" (`{where}`)"
            raise MissingCredentialsError(f"no API key for backend {name!r}{block}: set {' or '.join(places)}")
    return {"name": name, name: options}


def resolve_backends_in(
    key: str,
    value: Any,
    project_path: str | Path | None = None,
    credentials: Mapping[str, Any] | None = None,
    env: str | None = None,
) -> Any:
    """The top-level parameter ``key`` with every backend block in it resolved.

    ``backend`` is itself a block; ``policies.<name>.backend``, ``judge.backend`` and
    ``labeling.llm_oracle.backend`` are blocks inside ``policies``, ``judge`` and ``labeling``
    (:data:`BACKEND_PARAMS`). Each is resolved by :func:`resolve_backend_params` with its own
    credentials and paths; any other parameter is returned unchanged.

    Raises:
        ValueError, MissingCredentialsError: a block is invalid or lacks its key (the error
            names the block, e.g. ``policies.pi_premium.backend``).
    """

    def resolved(fields: Mapping[str, Any], where: str) -> Any:
        if not isinstance(fields, Mapping) or fields.get(OWN_BACKEND) is None:
            return fields
        block = resolve_backend_params(fields[OWN_BACKEND], project_path, credentials, env, where=where)
        return {**fields, OWN_BACKEND: block}

    if key == "backend":
        return resolve_backend_params(value, project_path, credentials, env)
    if key == "policies":
        return {name: resolved(fields, f"policies.{name}.backend") for name, fields in (value or {}).items()}
    if key == "judge":
        return resolved(value, "judge.backend")
    if key == "labeling" and isinstance(value, Mapping) and isinstance(value.get("llm_oracle"), Mapping):
        return {**value, "llm_oracle": resolved(value["llm_oracle"], "labeling.llm_oracle.backend")}
    return value


def backend_blocks_in(key: str, value: Any) -> dict[str, Mapping[str, Any]]:
    """Every backend block in the top-level parameter ``key``, by where it is (as errors name it).

    The same layout as :func:`resolve_backends_in`: ``backend`` is a block; ``policies.<name>.backend``,
    ``judge.backend`` and ``labeling.llm_oracle.backend`` are blocks when set; any other parameter
    holds none.
    """
    if key == "backend":
        return {"backend": value}
    if key == "policies":
        owners = {f"policies.{name}": fields for name, fields in (value or {}).items()}
    elif key == "judge":
        owners = {"judge": value}
    elif key == "labeling" and isinstance(value, Mapping):
        owners = {"labeling.llm_oracle": value.get("llm_oracle")}
    else:
        owners = {}
    return {f"{where}.{OWN_BACKEND}": fields[OWN_BACKEND] for where, fields in owners.items()
            if isinstance(fields, Mapping) and fields.get(OWN_BACKEND) is not None}


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


def backends_from_params(blocks: Mapping[str, Mapping[str, Any]]) -> dict[str, Backend]:
    """One backend per entry of ``blocks`` (e.g. :func:`policy_backends`); entries with the same
    configuration share one instance.

    Inside a run the instances are the run's (see :func:`backend_from_params`); outside one they
    are new and belong to the caller.
    """
    registry = active_registry() or BackendRegistry()
    return {key: registry.get(block) for key, block in blocks.items()}


def build_backend(backend: Mapping[str, Any]) -> Backend:
    """A new backend from the ``backend`` block (``credentials`` must already be resolved)."""
    name, options = _backend_key(backend)
    return make_backend(name, **options)


def _backend_key(backend: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    name, options = backend_config(backend)
    options.pop("credentials", None)  # resolved into api_key by resolve_backend_params
    return name, options


def backend_identity(backend: Mapping[str, Any]) -> str:
    """A text that two backend blocks share exactly when they build the same backend (the name
    and every option; a run shares one instance per identity)."""
    name, options = _backend_key(backend)
    return json.dumps({"name": name, "options": options}, sort_keys=True, default=str)


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
        key = backend_identity(backend)
        with self._lock:
            if key not in self._backends:
                self._backends[key] = build_backend(backend)
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


def stable_seed(*parts: object) -> int:
    """A 31-bit seed that depends only on ``parts`` (not on Python's salted ``hash``)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF
