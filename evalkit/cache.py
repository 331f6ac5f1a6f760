"""The on-disk response cache: an interrupted run resumes without recomputing.

Responses are keyed by (model identity, request, decoding) and committed to
SQLite as each batch finishes. SQLite's journal makes every commit atomic, so
a run killed by SIGKILL loses at most the batch in flight, and several
processes (ranks) may share one cache file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from evalkit.decoding.config import DecodingConfig
from evalkit.requests import Generate, Request, Response, request_key


def default_cache_dir() -> Path:
    import os

    root = os.environ.get("EVALKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "evalkit")
    return Path(root)


def response_key(model_id: str, request: Request, decoding: DecodingConfig | None) -> str:
    """Generation depends on the decoding config; scoring requests do not (the label is irrelevant)."""
    parts = [model_id, request_key(request)]
    if isinstance(request, Generate) and decoding is not None:
        parts.append(decoding.key())
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Response]:
        found: dict[str, Response] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk):
                found[key] = Response.from_dict(json.loads(blob))
        return found

    def put_many(self, items: dict[str, Response]) -> None:
        rows = [(key, json.dumps(resp.to_dict(), ensure_ascii=False)) for key, resp in items.items()]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO responses (key, response) VALUES (?, ?)", rows)

    def close(self) -> None:
        self._db.close()
