"""The call journal: every finished LLM call is a line appended to a JSONL
file beside the run database and flushed as it lands; `merge` moves the
lines into `llm_calls` in one insert (at the end of a batch) and empties
the file.  A killed run replays what is left on its next start, so a call
that completed is never sent again — with no database work per call on
the event loop.

Cache hits add no row: they are counted per (stage, model) in
`llm_cache_hits`.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from sftmill.store import Store


CACHED_FIELDS = ("key", "response_text", "tokens_in", "tokens_out")


class CallJournal:
    """One per run database and process (`for_store`); thread-safe."""

    _registry: dict[str, "CallJournal"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, store: Store):
        self.store = store
        self.path = Path(store.path + ".calls.jsonl")
        self._lock = threading.Lock()
        self._file = None
        self._done: dict[str, dict[str, Any]] = {}  # key → ok row not merged yet
        self._hits: Counter[tuple[str, str]] = Counter()
        self.merge()  # a killed run's calls first

    @classmethod
    def for_store(cls, store: Store) -> "CallJournal":
        with cls._registry_lock:
            journal = cls._registry.get(store.path)
            if journal is None or journal.store is not store:
                journal = cls._registry[store.path] = cls(store)
            return journal

    def append(self, row: dict[str, Any]) -> None:
        """Write one finished call; it is on disk (in the OS) when this returns."""
        line = orjson.dumps(row, default=str, option=orjson.OPT_PASSTHROUGH_DATETIME) + b"\n"
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "ab")
            self._file.write(line)
            self._file.flush()
            if row["status"] == "ok":  # what the cache needs, not the whole row
                self._done[row["key"]] = {k: row[k] for k in CACHED_FIELDS}

    def count_hit(self, stage: str, model: str) -> None:
        with self._lock:
            self._hits[(stage, model)] += 1

    def unmerged(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Completed calls among `keys` that are in the journal, not yet in the table."""
        with self._lock:
            return {k: self._done[k] for k in keys if k in self._done}

    def read(self) -> list[dict[str, Any]]:
        """The journal's rows; a line torn by a kill mid-write is left out."""
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def merge(self) -> int:
        """Move the journal into `llm_calls` (and the hit counts into
        `llm_cache_hits`); returns the number of calls moved."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            rows = self.read()
            if rows:
                self.store.insert("llm_calls", rows)
            if self._hits:
                self.store.execute(
                    "INSERT INTO llm_cache_hits SELECT * FROM (SELECT unnest(?) AS stage, "
                    "unnest(?) AS model, unnest(?) AS hits) "
                    "ON CONFLICT DO UPDATE SET hits = llm_cache_hits.hits + excluded.hits",
                    [[s for s, _ in self._hits], [m for _, m in self._hits],
                     list(self._hits.values())])
                self._hits.clear()
            if self.path.exists():
                os.truncate(self.path, 0)
            self._done.clear()
            return len(rows)

    @classmethod
    def merge_all(cls) -> None:
        with cls._registry_lock:
            journals = list(cls._registry.values())
        for journal in journals:
            journal.merge()

    @classmethod
    def forget(cls) -> None:
        """Drop every journal object (their stores are being closed)."""
        with cls._registry_lock:
            cls._registry.clear()
