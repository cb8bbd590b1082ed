"""Read a local export of the Arena conversations (Parquet, JSON or JSON Lines)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: File suffix -> reader. ``.json`` may be a JSON array of records or JSON Lines.
SUFFIXES: tuple[str, ...] = (".parquet", ".jsonl", ".ndjson", ".json")


def read_arena_export(path: str | Path) -> pd.DataFrame:
    """Load an export of ``lmsys/chatbot_arena_conversations``.

    Args:
        path: A ``.parquet``, ``.jsonl``/``.ndjson`` or ``.json`` file, or a folder whose files with
            those suffixes are concatenated in name order (the Hub ships the data as Parquet shards).

    Raises:
        FileNotFoundError: nothing to read at ``path``.
        ValueError: unsupported suffix.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no {', '.join(SUFFIXES)} file in the folder {path}")
        return pd.concat([_read_file(p) for p in files], ignore_index=True)
    if not path.exists():
        raise FileNotFoundError(f"no Arena export at {path}")
    return _read_file(path)


def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".json":
        # A Hub "JSON" export is usually JSON Lines; a hand-made one may be one array of records.
        with path.open("rb") as f:
            head = f.read(64).lstrip()
        return pd.read_json(path, lines=not head.startswith(b"["), dtype=False)
    raise ValueError(f"unsupported Arena export {path.name}: use one of {SUFFIXES}")
