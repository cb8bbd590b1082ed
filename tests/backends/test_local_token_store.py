"""The local backend's token-id store: SQLite only, so it is tested without torch."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from arena_cje.backends.local.token_store import TokenIdStore


def test_token_store_persists_across_instances(tmp_path):
    path = tmp_path / "tokens.sqlite"
    first = TokenIdStore(path)
    first.add("m", "Hello", [1, 2], False)
    first.add("m", "Hello", [1, 2], False)  # idempotent
    first.close()
    again = TokenIdStore(path)
    assert again.lookup("m", "Hello") == [((1, 2), False)]
    assert again.lookup("other-model", "Hello") == []
    again.close()


def test_two_recorded_tokenisations_of_one_text_are_both_returned():
    store = TokenIdStore(None)
    store.add("m", "Hello", [1, 2], True)
    store.add("m", "Hello", [3], True)
    assert sorted(store.lookup("m", "Hello")) == [((1, 2), True), ((3,), True)]


def test_a_closed_store_refuses_to_be_used(tmp_path):
    store = TokenIdStore(tmp_path / "tokens.sqlite")
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.lookup("m", "Hello")


def test_the_token_store_imports_without_torch():
    code = "import sys, arena_cje.backends.local.token_store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
