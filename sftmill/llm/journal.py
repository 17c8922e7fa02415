"""The call journal: every finished LLM call is a line appended to a JSONL
file beside the run database and flushed as it lands; `merge` moves the
lines into `llm_calls` in one insert — every few seconds from the thread
waiting on a batch, and at the batch's end.  A killed run replays what is
left on its next start, so a call that completed is never sent again — with
no database work per call on the event loop.

A merge swaps the journal for a fresh file (appends go on meanwhile),
inserts the swapped file's rows, then deletes it; until that insert commits
its calls still answer the cache from memory.  A kill in between leaves the
swapped file, which the next start inserts again (`call_id` is the key, so
nothing is counted twice).

Cache hits add no row: they are counted per (stage, model) in
`llm_cache_hits`.

When a ledger file (`<db>.calls.ledger.jsonl`) exists as the journal opens,
every line also goes there and stays: sftmill.core.remote creates it for a run
folder kept on object storage and uploads its new lines as they land.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from sftmill.core.store import JOURNAL, LEDGER, MERGING, Store

CACHED_FIELDS = ("key", "response_text", "tokens_in", "tokens_out", "reasoning")


class CallJournal:
    """One per run database and process (`for_store`); thread-safe."""

    _registry: dict[str, "CallJournal"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, store: Store):
        self.store = store
        self.path = Path(store.path + JOURNAL)
        self.moving = Path(store.path + MERGING)  # being inserted
        ledger = Path(store.path + LEDGER)  # kept for object storage
        self._ledger = open(ledger, "ab") if ledger.exists() else None
        self._lock = threading.Lock()  # the file and the in-memory rows
        self._merge_lock = threading.Lock()  # one merge at a time
        self._file = None
        self._done: dict[str, dict[str, Any]] = {}  # key → ok row not merged yet
        self._moving_done: dict[str, dict[str, Any]] = {}  # … being merged
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
            if self._ledger is not None:
                self._ledger.write(line)
                self._ledger.flush()
            if row["status"] == "ok":  # what the cache needs, not the whole row
                self._done[row["key"]] = {k: row.get(k) for k in CACHED_FIELDS}

    def count_hit(self, stage: str, model: str) -> None:
        with self._lock:
            self._hits[(stage, model)] += 1

    def unmerged(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Completed calls among `keys` that are in the journal, not yet in the table."""
        with self._lock:
            return {k: self._done.get(k) or self._moving_done[k] for k in keys
                    if k in self._done or k in self._moving_done}

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """A journal file's rows; a line torn by a kill mid-write is left out."""
        if not path.exists():
            return []
        lines = path.read_bytes().splitlines()
        try:  # one parse for the whole file (a loop per line showed in profiles)
            rows = orjson.loads(b"[" + b",".join(lines) + b"]")
            if len(rows) == len(lines):  # (a torn line cannot pass as a row)
                return rows
        except orjson.JSONDecodeError:
            pass
        rows = []
        for line in lines:
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return rows

    def merge(self) -> int:
        """Move the journal into `llm_calls` (and the hit counts into
        `llm_cache_hits`); returns the number of calls moved.  Safe while
        calls are being appended (from the LLM loop)."""
        with self._merge_lock:
            with self._lock:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                if self.path.exists():
                    if self.moving.exists():  # left by a kill mid-merge: add to it
                        with open(self.moving, "ab") as f:
                            f.write(self.path.read_bytes())
                        self.path.unlink()
                    else:
                        os.replace(self.path, self.moving)
                # (kept beside what a failed earlier merge left, still in `moving`)
                self._moving_done, self._done = {**self._moving_done, **self._done}, {}
                hits, self._hits = self._hits, Counter()
            rows = self.read(self.moving)
            if rows:
                self.store.insert("llm_calls", rows)  # by call_id: a replayed row is ignored
            if hits:
                self.store.execute(
                    "INSERT INTO llm_cache_hits SELECT * FROM (SELECT unnest(?) AS stage, "
                    "unnest(?) AS model, unnest(?) AS hits) "
                    "ON CONFLICT DO UPDATE SET hits = llm_cache_hits.hits + excluded.hits",
                    [[s for s, _ in hits], [m for _, m in hits], list(hits.values())])
            with self._lock:
                self.moving.unlink(missing_ok=True)
                self._moving_done = {}
            return len(rows)

    @classmethod
    def merge_all(cls) -> None:
        with cls._registry_lock:
            journals = list(cls._registry.values())
        for journal in journals:
            journal.merge()

    @classmethod
    def merge_and_forget(cls) -> None:
        """Before the stores close: every journal into its table, then dropped."""
        cls.merge_all()
        cls.forget()

    @classmethod
    def forget(cls) -> None:
        """Drop every journal object (their stores are being closed)."""
        with cls._registry_lock:
            for journal in cls._registry.values():
                with journal._lock:
                    if journal._ledger is not None:
                        journal._ledger.close()
                        journal._ledger = None
            cls._registry.clear()


Store.before_close_all(CallJournal.merge_and_forget)
