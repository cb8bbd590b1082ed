"""The token ids of generated responses, so teacher forcing scores exactly the sampled ids.

Decoding then re-encoding a sampled id sequence does not always give it back (a model may sample
a non-canonical split such as ``"Hel" + "lo"``). Every generated response's ids are therefore
recorded here, keyed by model and response text, and teacher forcing scores the *recorded* ids.
Needs neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ResponseTokens:
    """The exact token ids of a response, without the end-of-turn token.

    Attributes:
        ids: Response token ids.
        ended: Whether the response ended with the end-of-turn token (``False``: cut at max_tokens).
        recorded: Whether the ids were recorded at generation time (``False``: canonical encoding).
    """

    ids: tuple[int, ...]
    ended: bool
    recorded: bool


class TokenIdStore:
    """Generated responses' token ids, keyed by ``(model key, SHA-256 of the text)``.

    SQLite so that a later process (a re-run replaying stored generations) still scores the ids
    that were sampled. ``path=None`` keeps the table in memory. :meth:`close` releases the
    connection (the backend's ``close`` calls it at the end of a run).
    """

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS response_tokens (model_key TEXT NOT NULL, text_sha TEXT NOT NULL, "
        "ids TEXT NOT NULL, ended INTEGER NOT NULL, PRIMARY KEY (model_key, text_sha, ids, ended))"
    )

    def __init__(self, path: str | Path | None) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False, timeout=30)
        with self._lock, self._conn:
            if path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(self._SCHEMA)

    def close(self) -> None:
        """Close the SQLite connection (the recorded ids stay on disk)."""
        with self._lock:
            self._conn.close()

    @staticmethod
    def _sha(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def add(self, model_key: str, text: str, ids: Sequence[int], ended: bool) -> None:
        """Record that ``text`` was generated as ``ids`` (idempotent)."""
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO response_tokens VALUES (?, ?, ?, ?)",
                (model_key, self._sha(text), json.dumps(list(ids)), int(ended)),
            )

    def lookup(self, model_key: str, text: str) -> list[tuple[tuple[int, ...], bool]]:
        """All distinct ``(ids, ended)`` recorded for ``text`` (usually zero or one)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT ids, ended FROM response_tokens WHERE model_key = ? AND text_sha = ?",
                (model_key, self._sha(text)),
            ).fetchall()
        return [(tuple(json.loads(ids)), bool(ended)) for ids, ended in rows]
