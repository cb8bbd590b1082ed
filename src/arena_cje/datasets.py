"""Catalog dataset types for optional inputs (probe slices, true values)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
from kedro_datasets.pandas import CSVDataset
from kedro_datasets.partitions import PartitionedDataset


class OptionalPartitionedDataset(PartitionedDataset):
    """A ``PartitionedDataset`` that loads as ``{}`` when its folder is missing or empty.

    Probe slices are optional: a run without probes must still estimate (and say so).
    """

    def load(self) -> dict[str, Callable[[], Any]]:
        self._invalidate_caches()
        if not self._list_partitions():
            return {}
        return super().load()


class OptionalCSVDataset(CSVDataset):
    """A ``pandas.CSVDataset`` that loads as an empty frame with ``columns`` when the file is absent."""

    def __init__(self, *, columns: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._columns = list(columns or [])

    def load(self) -> pd.DataFrame:
        if not self._exists():
            return pd.DataFrame(columns=self._columns)
        return super().load()
