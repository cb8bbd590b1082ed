"""The lazy raw-input dataset: nothing is read unless asked; the HF path passes the token through."""

import importlib.machinery
import importlib.util
import sys
import types

import pandas as pd
import pytest
from kedro.io import DataCatalog, DatasetError

from arena_cje.datasets import ArenaConversationsDataset

from .arena_fixture import arena_frame, write_arena_fixture

HF = {"dataset_name": "lmsys/chatbot_arena_conversations", "dataset_kwargs": {"split": "train"}}


def test_load_reads_nothing_until_a_loader_is_called(tmp_path):
    ds = ArenaConversationsDataset(filepath=str(tmp_path / "absent"), hf_dataset=HF)
    loaders = ds.load()  # no file, no network: fine
    assert set(loaders) == {"arena_local", "arena_hf"}
    assert not ds.exists()
    with pytest.raises(DatasetError, match="no Arena export at .*absent.*docs/prompts.md"):
        loaders["arena_local"]()


def test_local_loader_reads_the_export(tmp_path):
    path = write_arena_fixture(tmp_path / "raw" / "arena.jsonl")
    ds = ArenaConversationsDataset(filepath=str(path.parent))
    assert ds.exists()
    assert len(ds.load()["arena_local"]()) == len(arena_frame())


class _FakeHFDataset:
    """Stands in for kedro_datasets.huggingface.HFDataset (no `datasets`, no network)."""

    calls: list = []

    def __init__(self, *, dataset_name, dataset_kwargs=None, metadata=None):
        self.calls.append((dataset_name, dict(dataset_kwargs or {})))

    def load(self):
        return types.SimpleNamespace(to_pandas=arena_frame)


@pytest.fixture
def fake_hf(monkeypatch):
    module = types.ModuleType("kedro_datasets.huggingface")
    module.HFDataset = _FakeHFDataset
    monkeypatch.setitem(sys.modules, "kedro_datasets.huggingface", module)
    if importlib.util.find_spec("datasets") is None:
        datasets = types.ModuleType("datasets")
        datasets.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
        monkeypatch.setitem(sys.modules, "datasets", datasets)
    _FakeHFDataset.calls = []
    return _FakeHFDataset


def test_hf_token_comes_from_kedro_credentials(fake_hf):
    config = {"arena_conversations": {
        "type": "arena_cje.datasets.ArenaConversationsDataset", "hf_dataset": HF, "credentials": "huggingface",
    }}
    catalog = DataCatalog.from_config(config, credentials={"huggingface": {"token": "hf_secret"}})
    frame = catalog.load("arena_conversations")["arena_hf"]()
    pd.testing.assert_frame_equal(frame, arena_frame())
    assert fake_hf.calls == [("lmsys/chatbot_arena_conversations", {"split": "train", "token": "hf_secret"})]
    assert "hf_secret" not in str(catalog["arena_conversations"])


def test_hf_without_credentials_passes_no_token(fake_hf):
    ArenaConversationsDataset(hf_dataset=HF).load()["arena_hf"]()
    assert fake_hf.calls == [("lmsys/chatbot_arena_conversations", {"split": "train"})]


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="`datasets` is installed")
def test_hf_without_the_datasets_package_says_what_to_install():
    with pytest.raises(DatasetError, match=r"pip install 'kedro-datasets\[huggingface-hfdataset\]'"):
        ArenaConversationsDataset(hf_dataset=HF).load()["arena_hf"]()


def test_dataset_is_read_only():
    with pytest.raises(DatasetError, match="read-only"):
        ArenaConversationsDataset(filepath="x").save({})
