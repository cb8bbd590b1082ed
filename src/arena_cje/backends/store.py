"""Durable per-request record, so that a re-run repeats no completed (paid) call.

Every finished request is written to an SQLite database in WAL mode as soon as it finishes, in its
own transaction. A committed WAL transaction survives the process being killed (``kill -9``) at
any moment; a request in flight at that moment is simply not recorded and is sent again on the
next run. Rows are keyed by ``(stage, spec_hash, prompt_hash, item_key)``:

* ``stage``: ``generate``, ``teacher_force`` or ``judge``;
* ``spec_hash``: hash of everything that changes the answer (model, temperature, system prompt,
  max tokens, chat template, ...), so that editing a policy never reuses stale results;
* ``prompt_hash``: SHA-256 of the prompt text;
* ``item_key``: the sampling seed (generation) or the SHA-256 of the response (teacher forcing,
  judging), plus a replicate tag for judge re-scores.

The primary key makes duplicates impossible. Two statuses exist: ``done`` (the call completed;
its result, possibly a recorded ``None`` with a reason such as an unparseable judgement, is final)
and ``failed`` (transport failure after all retries; tried again on the next run). A ``failed``
row never overwrites a ``done`` one.

The one backend that spends money per call, ``openai_compatible``, keeps this record (its
``store_path`` option); the simulated and local backends are free and deterministic, so a re-run
simply recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from arena_cje.backends.base import EchoRepeat, Generation, Judgement, TeacherForced

#: stage name -> result class stored under it.
RESULT_TYPES: dict[str, type] = {
    "generate": Generation,
    "teacher_force": TeacherForced,
    "judge": Judgement,
    "echo_repeat": EchoRepeat,
}

DONE, FAILED = "done", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    stage TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    item_key TEXT NOT NULL,
    policy TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT NOT NULL,
    error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 1,
    updated_at REAL NOT NULL,
    PRIMARY KEY (stage, spec_hash, prompt_hash, item_key)
)
"""


def sha256(text: str) -> str:
    """Hex SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable mapping (keys sorted)."""
    return sha256(json.dumps(spec, sort_keys=True, default=str))[:16]


@dataclass(frozen=True)
class RecordKey:
    """Identity of one request in the store."""

    stage: str
    spec_hash: str
    prompt_hash: str
    item_key: str


def make_key(stage: str, spec: Mapping[str, Any], prompt: str, item: str) -> RecordKey:
    """Build the key of one request.

    Args:
        stage: ``generate`` | ``teacher_force`` | ``judge``.
        spec: Everything that changes the answer (hashed).
        prompt: Prompt text (hashed).
        item: Seed or response hash (plus replicate tag), used as is.
    """
    if stage not in RESULT_TYPES:
        raise ValueError(f"unknown stage {stage!r}; stages are {sorted(RESULT_TYPES)}")
    return RecordKey(stage, spec_hash(spec), sha256(prompt), item)


def encode_result(result: Any) -> str:
    """JSON text of a result dataclass."""
    return json.dumps(asdict(result) if is_dataclass(result) else result)


def decode_result(stage: str, text: str) -> Any:
    """Rebuild the result dataclass stored under ``stage``."""
    return RESULT_TYPES[stage](**json.loads(text))


@dataclass
class StatusRow:
    """Per stage and policy totals (what ``kedro cje-status`` prints)."""

    stage: str
    policy: str
    done: int
    failed: int
    with_error: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class RequestStore:
    """SQLite (WAL) record of completed requests; safe to share between threads.

    Args:
        path: Database file; parent folders are created.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: every put is its own transaction, committed before put returns.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=60)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (not a power cut) and keeps commits ~10 us.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "RequestStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(
        self,
        key: RecordKey,
        policy: str,
        result: Any,
        status: str = DONE,
        error: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        """Record one finished request (durable when this returns).

        A ``failed`` record never replaces a ``done`` one; a ``done`` record replaces anything.
        """
        if status not in (DONE, FAILED):
            raise ValueError(f"status must be {DONE!r} or {FAILED!r}, not {status!r}")
        row = (
            key.stage, key.spec_hash, key.prompt_hash, key.item_key, policy, status,
            encode_result(result), error, int(prompt_tokens), int(completion_tokens),
            float(cost_usd), time.time(),
        )
        with self._lock:
            self._conn.execute(
                """INSERT INTO requests (stage, spec_hash, prompt_hash, item_key, policy, status,
                       result, error, prompt_tokens, completion_tokens, cost_usd, updated_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT (stage, spec_hash, prompt_hash, item_key) DO UPDATE SET
                       policy=excluded.policy, status=excluded.status, result=excluded.result,
                       error=excluded.error,
                       prompt_tokens=requests.prompt_tokens + excluded.prompt_tokens,
                       completion_tokens=requests.completion_tokens + excluded.completion_tokens,
                       cost_usd=requests.cost_usd + excluded.cost_usd,
                       attempts=requests.attempts + 1, updated_at=excluded.updated_at
                   WHERE requests.status != 'done' OR excluded.status = 'done'""",
                row,
            )

    def get(self, key: RecordKey) -> tuple[str, Any] | None:
        """``(status, result)`` of one request, or ``None`` when never recorded."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT status, result FROM requests WHERE stage=? AND spec_hash=? AND prompt_hash=? AND item_key=?",
                (key.stage, key.spec_hash, key.prompt_hash, key.item_key),
            )
            row = cur.fetchone()
        return None if row is None else (row[0], decode_result(key.stage, row[1]))

    def get_done(self, keys: Iterable[RecordKey]) -> dict[RecordKey, Any]:
        """Results of the ``done`` requests among ``keys`` (one query per (stage, spec_hash))."""
        wanted: dict[tuple[str, str], set[RecordKey]] = {}
        for key in keys:
            wanted.setdefault((key.stage, key.spec_hash), set()).add(key)
        found: dict[RecordKey, Any] = {}
        for (stage, shash), group in wanted.items():
            with self._lock:
                rows = self._conn.execute(
                    "SELECT prompt_hash, item_key, result FROM requests "
                    "WHERE stage=? AND spec_hash=? AND status='done'",
                    (stage, shash),
                ).fetchall()
            for prompt_hash, item_key, text in rows:
                key = RecordKey(stage, shash, prompt_hash, item_key)
                if key in group:
                    found[key] = decode_result(stage, text)
        return found

    def total_cost(self) -> float:
        """Cost (USD) of every request recorded so far, failed attempts included."""
        with self._lock:
            (value,) = self._conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM requests").fetchone()
        return float(value)

    def count(self, stage: str | None = None, status: str | None = None) -> int:
        """Number of rows, optionally of one stage and/or status."""
        sql, args = "SELECT COUNT(*) FROM requests WHERE 1=1", []
        if stage is not None:
            sql, args = sql + " AND stage=?", [*args, stage]
        if status is not None:
            sql, args = sql + " AND status=?", [*args, status]
        with self._lock:
            (value,) = self._conn.execute(sql, args).fetchone()
        return int(value)

    def summary(self) -> list[StatusRow]:
        """Per stage and policy: done / failed counts, done-with-recorded-error, tokens, cost."""
        with self._lock:
            rows = self._conn.execute(
                """SELECT stage, policy,
                          SUM(status='done'), SUM(status='failed'),
                          SUM(status='done' AND json_extract(result, '$.error') IS NOT NULL),
                          SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd)
                   FROM requests GROUP BY stage, policy ORDER BY stage, policy"""
            ).fetchall()
        return [StatusRow(s, p, int(d), int(f), int(e), int(pt), int(ct), float(c)) for s, p, d, f, e, pt, ct, c in rows]
