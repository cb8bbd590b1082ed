"""Catalog types for platform result files: read as raw bytes (parsing lives in ``arena_cje.crowd``)
and archived byte-for-byte."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from arena_cje.crowd.parse import RawFile


class RawFileDataset(AbstractDataset[RawFile | bytes | str, RawFile]):
    """A file loaded as :class:`RawFile` (its name and exact bytes), whatever its format.

    Saving accepts a ``RawFile``, bytes or text (written as UTF-8).
    """

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> RawFile:
        if not self._filepath.is_file():
            raise DatasetError(
                f"{self._filepath}: no rating file. Put the labeling platform's result file (CSV or "
                "Label Studio JSON export) here, or run the full `labeling` pipeline with the simulated backend."
            )
        return RawFile(self._filepath.name, self._filepath.read_bytes())

    def save(self, data: RawFile | bytes | str) -> None:
        raw = RawFile.coerce(data, self._filepath.name)
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        self._filepath.write_bytes(raw.data)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._filepath))}


class RawFileArchive(AbstractDataset[RawFile, list[str]]):
    """A folder that keeps every received file untouched, never overwriting.

    Each save writes ``<UTC time>_<sha256 prefix>_<original name>``; loading lists the archived names.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> list[str]:
        return sorted(p.name for p in self._path.glob("*") if p.is_file()) if self._path.is_dir() else []

    def save(self, data: RawFile) -> None:
        raw = RawFile.coerce(data)
        digest = hashlib.sha256(raw.data).hexdigest()[:12]
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self._path / f"{stamp}_{digest}_{raw.name}"
        self._path.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as handle:  # "x": an existing archive entry is never replaced
            handle.write(raw.data)

    def _describe(self) -> dict[str, Any]:
        return {"path": str(PurePosixPath(self._path))}
