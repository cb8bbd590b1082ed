"""Provenance of a run's results: the run's identity, package versions and hashes of the input data.

No Kedro here: :class:`arena_cje.hooks.RunProvenanceHook` hands the run's parameters to the
``estimation.record_results`` node, which writes ``data/07_model_output/results.json``
(:func:`results_record`) beside the CSV tables.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import pandas as pd

from arena_cje.experiment import to_plain

#: Distributions whose versions a results file records.
PACKAGES = ("arena_cje", "kedro", "numpy", "pandas", "scikit-learn", "scipy")

#: Keys of Kedro's ``run_params`` (``before_pipeline_run``) a results file always records (``env``
#: None: the default run environment; ``pipeline_names`` None: ``__default__``) ...
RUN_KEYS = ("run_id", "env", "kedro_version", "pipeline_names", "runtime_params")
#: ... and the node filters of the run, recorded when one was given.
RUN_FILTERS = ("tags", "node_names", "namespaces", "from_nodes", "to_nodes", "from_inputs", "to_outputs")

SCHEMA = "arena_cje.results/1"
#: What ``results.json`` says of a run whose identity was not given (no RunProvenanceHook).
NO_RUN_ID = "no Kedro run id: the pipeline ran without the project's RunProvenanceHook"


def frame_sha256(frame: pd.DataFrame) -> str:
    """SHA-256 of a table's content: column names, then each column's values in row order.

    Values are hashed by pandas (``hash_pandas_object``, exact for numbers). A column of dicts (the
    JSONL layout's ``target_policy_logprobs``, ``metadata``) is hashed as the table of its keys,
    in sorted key order, so the dicts' own key order does not matter (a missing key and an explicit
    null are the same there); other nested values by their canonical JSON text. The index (e.g.
    the line numbers of a JSONL file) is not part of the content.
    """
    digest = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode())
    for column in frame.columns:
        digest.update(_column_digest(frame[column]))
    return digest.hexdigest()


def _column_digest(values: pd.Series) -> bytes:
    try:
        return pd.util.hash_pandas_object(values, index=False).to_numpy().tobytes()
    except TypeError:  # unhashable cells: dicts and lists
        pass
    if all(isinstance(v, Mapping) for v in values):
        # One column per key: ~15x faster than JSON text per cell (measured on 100k rows).
        keys = pd.DataFrame.from_records(values.tolist())
        return bytes.fromhex(frame_sha256(keys[sorted(keys.columns, key=str)]))
    return pd.util.hash_pandas_object(values.map(_canonical_json), index=False).to_numpy().tobytes()


def data_fingerprint(frame: pd.DataFrame) -> dict[str, Any]:
    """``{"sha256": ..., "rows": ...}`` of one table."""
    return {"sha256": frame_sha256(frame), "rows": len(frame)}


def partitions_fingerprint(partitions: Mapping[str, Callable[[], pd.DataFrame] | pd.DataFrame]) -> dict[str, Any]:
    """Fingerprint of each partition of a ``PartitionedDataset`` (loaded here), by partition id."""
    return {key: data_fingerprint(value() if callable(value) else value) for key, value in sorted(partitions.items())}


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_identity(run_params: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of Kedro's ``run_params`` that identify a run (``run_id`` is the session id)."""
    identity = {key: to_plain(run_params.get(key)) for key in RUN_KEYS}
    identity.update({key: to_plain(run_params[key]) for key in RUN_FILTERS if run_params.get(key)})
    return identity


def results_record(
    *,
    tables: Mapping[str, pd.DataFrame],
    config: Any,
    parameters: Mapping[str, Any],
    inputs: Mapping[str, Any],
    run: Mapping[str, Any],
) -> dict[str, Any]:
    """The results file: tables as records, plus what made them.

    Args:
        tables: Result tables by name (estimates, differences, comparisons, decisions).
        config: The settings the estimates were made with (``EstimationResult.config``).
        parameters: The parameter blocks the estimation read, as configured.
        inputs: Fingerprints of the input datasets, by dataset name.
        run: The run's identity (:func:`run_identity`); empty (no ``run_id``) when the pipeline ran
            without the project's hooks, which the record says (``run.note``).

    Returns:
        A JSON-able dict (missing numbers are ``null``).
    """
    return {
        "schema": SCHEMA,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": dict(run) if run.get("run_id") else {**run, "run_id": None, "note": NO_RUN_ID},
        "packages": {**package_versions(), "python": platform.python_version()},
        "configuration": {
            "estimation_config": to_plain(asdict(config)) if is_dataclass(config) else None,
            "parameters": to_plain(parameters),
        },
        "inputs": dict(inputs),
        **{name: json.loads(table.to_json(orient="records", double_precision=15)) for name, table in tables.items()},
    }


def _canonical_json(value: Any) -> str:
    return json.dumps(to_plain(value), sort_keys=True, default=str)
