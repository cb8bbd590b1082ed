"""Loading the local model changes process-wide settings only where and while it must."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
model = pytest.importorskip("arena_cje.backends.local.model")


def test_importing_the_backend_sets_neither_hub_offline_nor_torch_threads():
    code = (
        "import json, os, torch; threads = torch.get_num_threads(); "
        "import arena_cje.backends.local_transformers as lt; "
        "from huggingface_hub import constants; "
        "print(json.dumps([os.environ.get('HF_HUB_OFFLINE'), constants.HF_HUB_OFFLINE, torch.get_num_threads() == threads]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(out.stdout.splitlines()[-1]) == [None, False, True]


def test_hub_offline_holds_only_inside_the_block(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with model.hub_offline():
        assert constants.is_offline_mode()
    assert not constants.is_offline_mode()
    with pytest.raises(RuntimeError), model.hub_offline():
        raise RuntimeError("a failed load")
    assert not constants.is_offline_mode()  # restored after an error too


def test_an_uncached_hub_name_fails_without_reaching_the_network(tmp_path, monkeypatch):
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network used in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # name lookup comes first
    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert model.resolve_model("no-such-org/no-such-model", tmp_path) == ("no-such-org/no-such-model", "hub-cache")
    with pytest.raises(OSError):
        model.load_model.__wrapped__("no-such-org/no-such-model")
    assert attempts == []
