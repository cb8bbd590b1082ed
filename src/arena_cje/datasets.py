"""Catalog dataset types: the reference JSONL layout and optional inputs (probe slices, true values, raw Arena conversations)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import get_filepath_str
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.pandas import CSVDataset, JSONDataset
from kedro_datasets.partitions import PartitionedDataset

from arena_cje.cje.data import LAYOUTS, CJEDataError, parse_jsonl
from arena_cje.report.figures import MATPLOTLIB_LOCK


class OptionalPartitionedDataset(PartitionedDataset):
    """A ``PartitionedDataset`` that loads as ``{}`` when its folder is missing or empty.

    Probe slices are optional: a run without probes must still estimate (and say so).
    """

    def load(self) -> dict[str, Callable[[], Any]]:
        self._invalidate_caches()
        if not self._list_partitions():
            return {}
        return super().load()


class PngFigureDataset(MatplotlibDataset):
    """A Matplotlib figure saved as PNG (``matplotlib.MatplotlibDataset``) that loads as the PNG file's bytes.

    The report embeds the plot nodes' files instead of drawing the same figures a second time
    (the drawing is most of the reporting stage's time); kedro-viz previews it as before.
    """

    def load(self) -> bytes:
        with self._fs.open(get_filepath_str(self._get_load_path(), self._protocol), mode="rb") as png:
            return png.read()

    def save(self, data: Any) -> None:
        """Save as ``MatplotlibDataset`` does (then ``plt.close("all")``), one figure at a time."""
        with MATPLOTLIB_LOCK:
            super().save(data)


class CJEJsonlLoadError(DatasetError, CJEDataError):
    """A ``CJEDataError`` raised while loading; as a ``DatasetError`` Kedro re-raises it with its message intact
    (other exceptions become "Failed while loading data from dataset <repr>")."""


class CJEJsonlDataset(JSONDataset):
    """One JSONL file of the reference (``cje-eval``) layout, read line by line.

    Loading parses with :func:`arena_cje.cje.parse_jsonl`: the frame's index is the file's line
    numbers and it remembers its path, so every error about it names file, line and field
    (:class:`arena_cje.cje.CJEDataError`). Saving is ``pandas.JSONDataset``'s (``lines``, ``records``).

    Args:
        layout: ``logged``, ``fresh_draws`` or ``probe``: which file of the layout this is (quoted
            when the file is empty).
        **kwargs: ``pandas.JSONDataset`` arguments (``filepath``, ``save_args``, ...).
    """

    def __init__(self, *, layout: str, **kwargs: Any) -> None:
        if layout not in LAYOUTS:
            raise DatasetError(f"CJEJsonlDataset: layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        kwargs.setdefault("save_args", {"lines": True, "orient": "records"})
        super().__init__(**kwargs)
        self._layout = layout

    def load(self) -> pd.DataFrame:
        from kedro.io.core import get_filepath_str

        path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(path, mode="rb") as f:
            data = f.read()
        try:
            return parse_jsonl(data, source=path, layout=self._layout)
        except CJEDataError as e:
            raise CJEJsonlLoadError(e.problem, file=e.file, line=e.line, field=e.field, in_file=e.in_file) from None


class OptionalCSVDataset(CSVDataset):
    """A ``pandas.CSVDataset`` that loads as an empty frame with ``columns`` when the file is absent."""

    def __init__(self, *, columns: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._columns = list(columns or [])

    def load(self) -> pd.DataFrame:
        if not self._exists():
            return pd.DataFrame(columns=self._columns)
        return super().load()


class ArenaConversationsDataset(AbstractDataset[None, dict[str, Callable[[], pd.DataFrame]]]):
    """The raw Chatbot Arena conversations, loaded only when the run asks for them.

    ``load()`` reads nothing: it returns ``{"arena_local": loader, "arena_hf": loader}`` (like a
    ``PartitionedDataset``'s lazy partitions). The ``data_prep`` node calls the loader named by
    ``prompts.source``, so the default ``simulated`` run works with no raw file and no token.

    Args:
        filepath: Local export (``.parquet``, ``.jsonl``, ``.json``, or a folder of them).
        hf_dataset: Arguments of kedro-datasets' ``huggingface.HFDataset``: ``dataset_name`` and
            ``dataset_kwargs`` (passed to ``datasets.load_dataset``: ``split``, ``revision``, ...).
        credentials: Kedro credentials; ``token`` is the Hugging Face access token (the dataset is
            gated). Without it ``datasets`` falls back to ``HF_TOKEN`` / ``hf auth login``.
        metadata: Kedro-Viz and other metadata.
    """

    def __init__(
        self,
        *,
        filepath: str | None = None,
        hf_dataset: dict[str, Any] | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = filepath
        self._hf_dataset = dict(hf_dataset or {})
        self._token = (credentials or {}).get("token")
        self.metadata = metadata

    def load(self) -> dict[str, Callable[[], pd.DataFrame]]:
        return {"arena_local": self._load_local, "arena_hf": self._load_hf}

    def save(self, data: Any) -> None:
        raise DatasetError("ArenaConversationsDataset is read-only (raw input)")

    def _describe(self) -> dict[str, Any]:
        # Never the token.
        return {"filepath": self._filepath, "hf_dataset": self._hf_dataset.get("dataset_name")}

    def _exists(self) -> bool:
        from pathlib import Path

        return self._filepath is not None and Path(self._filepath).exists()

    def _load_local(self) -> pd.DataFrame:
        from arena_cje.prompts import read_arena_export

        if self._filepath is None:
            raise DatasetError("prompts.source=arena_local: set `filepath` of the arena_conversations catalog entry")
        try:
            return read_arena_export(self._filepath)
        except FileNotFoundError as exc:
            raise DatasetError(
                f"prompts.source=arena_local: {exc}. Export lmsys/chatbot_arena_conversations there "
                "(Parquet, JSON or JSONL) or point arena_conversations.filepath at your copy in "
                "conf/local/catalog.yml (see docs/prompts.md)."
            ) from exc

    def _load_hf(self) -> pd.DataFrame:
        if "dataset_name" not in self._hf_dataset:
            raise DatasetError("prompts.source=arena_hf: set `hf_dataset.dataset_name` of the arena_conversations catalog entry")
        import importlib.util

        # Checked first: importing kedro_datasets.huggingface without `datasets` still pulls in
        # transformers (tens of seconds) before failing.
        if importlib.util.find_spec("datasets") is None:
            raise DatasetError(
                "prompts.source=arena_hf needs the Hugging Face `datasets` package: "
                "pip install 'kedro-datasets[huggingface-hfdataset]'"
            )
        from kedro_datasets.huggingface import HFDataset
        kwargs = dict(self._hf_dataset.get("dataset_kwargs") or {})
        if self._token:
            kwargs["token"] = self._token
        data = HFDataset(dataset_name=self._hf_dataset["dataset_name"], dataset_kwargs=kwargs).load()
        if hasattr(data, "to_pandas"):
            return data.to_pandas()
        # A DatasetDict (no `split` given): the Arena dataset has a single `train` split.
        splits = list(data.keys())
        if len(splits) != 1:
            raise DatasetError(f"prompts.source=arena_hf: several splits {splits}; set hf_dataset.dataset_kwargs.split")
        return data[splits[0]].to_pandas()


class OptionalJSONDataset(AbstractDataset[Any, Any]):
    """A ``json.JSONDataset`` that loads as ``None`` when the file is absent (optional report inputs).

    Used where an upstream stage may not have run, e.g. the ``cje_import`` environment, which
    estimates on imported data with no generation, judging or labeling reports.
    """

    def __init__(self, *, filepath: str, save_args: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        from kedro_datasets.json import JSONDataset

        self._inner = JSONDataset(filepath=filepath, save_args=save_args)
        self.metadata = metadata

    def load(self) -> Any:
        return self._inner.load() if self._inner.exists() else None

    def save(self, data: Any) -> None:
        self._inner.save(data)

    def _describe(self) -> dict[str, Any]:
        return {"inner": self._inner._describe()}

    def _exists(self) -> bool:
        return self._inner.exists()


class OptionalParquetDataset(AbstractDataset[pd.DataFrame, pd.DataFrame | None]):
    """A ``pandas.ParquetDataset`` that loads as ``None`` when the file is absent (optional report inputs)."""

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        from kedro_datasets.pandas import ParquetDataset

        self._inner = ParquetDataset(filepath=filepath)
        self.metadata = metadata

    def load(self) -> pd.DataFrame | None:
        return self._inner.load() if self._inner.exists() else None

    def save(self, data: pd.DataFrame) -> None:
        self._inner.save(data)

    def _describe(self) -> dict[str, Any]:
        return {"inner": self._inner._describe()}

    def _exists(self) -> bool:
        return self._inner.exists()
