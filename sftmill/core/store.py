"""DuckDB store: one database file per run, one table per stage.

Row IDs are content hashes (`content_id`), and every insert is
`INSERT OR IGNORE`, so re-running a stage adds no duplicates.  Every row keeps
the IDs of its parents, which gives lineage from a final record back to the
source document.  Prefect tasks pass `TableRef`s (a table name plus a
fingerprint of its IDs) between each other, never DataFrames.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import duckdb

from sftmill.core.schema import ANSWERABLE_PROMPTS_VIEW, SCHEMA

if TYPE_CHECKING:  # for annotations only: pyarrow is imported where rows are moved
    import pyarrow as pa

# Beside the run database `<db>`: the LLM call journal `<db>.calls.jsonl`, the
# file being merged, and the ledger kept for object storage (`llm/journal.py`).
JOURNAL, MERGING, LEDGER = ".calls.jsonl", ".calls.merging.jsonl", ".calls.ledger.jsonl"


@dataclass(frozen=True)
class TableRef:
    """What a stage task returns: a table and a fingerprint of its rows.

    The fingerprint makes Prefect's INPUTS cache policy follow table contents.
    """

    db_path: str
    table: str
    fingerprint: str
    rows: int


class StoreBusyError(RuntimeError):
    """Another process holds the run database (DuckDB admits one writer)."""


class Store:
    """A DuckDB file shared by all tasks of one process (DuckDB allows one
    writing process per file; threads share the connection under a lock)."""

    _open: dict[str, "Store"] = {}
    _open_lock = threading.Lock()
    _before_close_all: list[Callable[[], None]] = []

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = str(Path(path).resolve())
        self.read_only = read_only
        if read_only:  # a finished run, as it is: no table made or changed
            self._con = duckdb.connect(self.path, read_only=True)
            self._lock = threading.RLock()
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(self.path)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise
            holder = str(err).split("Conflicting lock is held in", 1)[-1].strip().rstrip(".")
            raise StoreBusyError(
                f"{self.path} is in use by another process ({holder}); runs that write to the "
                "same output folder must take turns, or use another output folder") from None
        self._lock = threading.RLock()
        self.ensure_tables(SCHEMA)
        self._con.execute(ANSWERABLE_PROMPTS_VIEW)

    @classmethod
    def open(cls, path: str | Path) -> "Store":
        """The process-wide store for `path` (opened on first use)."""
        key = str(Path(path).resolve())
        with cls._open_lock:
            store = cls._open.get(key)
            if store is None:
                store = cls._open[key] = cls(key)
            return store

    @classmethod
    def reader(cls, path: str | Path) -> "Store":
        """A read-only store of an existing run database (not shared, not
        closed by `close_all`: close it with `close`).  Fails while another
        process writes to it."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no run database at {path}")
        return cls(path, read_only=True)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @classmethod
    def before_close_all(cls, hook: Callable[[], None]) -> None:
        """Run `hook` whenever `close_all` is about to close the stores (once per hook)."""
        if hook not in cls._before_close_all:
            cls._before_close_all.append(hook)

    @classmethod
    def close_all(cls) -> None:
        """Close every store opened with `open` (also run at interpreter exit),
        after the hooks registered with `before_close_all` (the LLM call
        journals move into their tables there)."""
        for hook in list(cls._before_close_all):
            try:
                hook()
            except OSError as err:  # a full disk: what the hook could not move stays for the next run
                logging.getLogger(__name__).warning("closing the run databases: %s", err)
        with cls._open_lock:
            for store in cls._open.values():
                store._con.close()
            cls._open.clear()

    def ensure_tables(self, schema: dict[str, str]) -> None:
        """Create missing tables; add columns a newer sftmill declares to an
        older run database's tables (so an old run folder can be resumed).
        A read-only store is left as it is."""
        if self.read_only:
            return
        with self._lock:
            for name, columns in schema.items():
                self._con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
                have = {r[0] for r in self._con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                    [name]).fetchall()}
                for line in columns.split("\n"):
                    decl = line.split("--")[0].strip().rstrip(",")
                    col = decl.split(" ", 1)[0] if decl else ""
                    if (col and col.isidentifier() and col not in have
                            and not decl.upper().startswith("PRIMARY KEY")):
                        self._con.execute(f"ALTER TABLE {name} ADD COLUMN {decl.split(' PRIMARY')[0]}")

    def execute(self, sql: str, params: Iterable[Any] | None = None) -> list[tuple]:
        with self._lock:
            return self._con.execute(sql, params or []).fetchall()

    def query_dicts(self, sql: str, params: Iterable[Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._con.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def arrow(self, sql: str, params: Iterable[Any] | None = None):
        """The query's result as a pyarrow Table (vectors without a Python
        object per number)."""
        with self._lock:
            return self._con.sql(sql, params=list(params or [])).to_arrow_table()

    def scalar(self, sql: str, params: Iterable[Any] | None = None) -> Any:
        rows = self.execute(sql, params)
        return rows[0][0] if rows else None

    def insert(self, table: str, rows: "list[dict[str, Any]] | pa.Table", replace: bool = False) -> int:
        """Insert rows (dicts, or a pyarrow Table) by column name; rows whose
        key exists are ignored (or replaced when `replace`).  Returns the
        number of rows offered."""
        import pyarrow as pa

        if len(rows) == 0:
            return 0
        if isinstance(rows, pa.Table):
            arrow = rows
        else:
            columns = list(rows[0])
            arrow = pa.table({c: [r.get(c) for r in rows] for c in columns})
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self._lock:
            self._con.register("_incoming", arrow)
            try:
                self._con.execute(f"{verb} INTO {table} BY NAME SELECT * FROM _incoming")
            finally:
                self._con.unregister("_incoming")
        return len(rows)

    def replace_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        """Replace every row of `table` with `rows`, in one transaction (a
        crash never leaves the table emptied).  Returns the number offered."""
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                self._con.execute(f"DELETE FROM {table}")
                self.insert(table, rows)
                self._con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):  # a COMMIT that failed has rolled back
                    self._con.execute("ROLLBACK")
                raise
        return len(rows)

    def count(self, table: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table}"))

    def ref(self, table: str, id_column: str) -> TableRef:
        """A TableRef whose fingerprint changes whenever the set of IDs does."""
        fp, n = self.execute(
            f"SELECT md5(coalesce(string_agg({id_column}, ',' ORDER BY {id_column}), '')), "
            f"count(*) FROM {table}"
        )[0]
        return TableRef(self.path, table, fp[:16], int(n))

    def reject(self, stage: str, item_id: str, reason: str, detail: str = "",
               score: float | None = None) -> None:
        self.insert(
            "rejects",
            [{"stage": stage, "item_id": item_id, "reason": reason,
              "detail": detail[:2000], "score": score}],
            replace=True,
        )

    def reject_many(self, stage: str, rejects: list[tuple[str, str, str, float | None]]) -> None:
        """Several (item_id, reason, detail, score) drops of one stage in one insert."""
        self.insert("rejects", [{"stage": stage, "item_id": i, "reason": r, "detail": (d or "")[:2000],
                                 "score": sc} for i, r, d, sc in rejects], replace=True)

    @contextmanager
    def drops(self, stage: str):
        """Collect drops of one stage (`add(item_id, reason, detail, score)`)
        and write them in one insert when the block ends."""
        rows: list[tuple[str, str, str, float | None]] = []

        class _Drops:
            @staticmethod
            def add(item_id: str, reason: str, detail: str = "", score: float | None = None) -> None:
                rows.append((item_id, reason, detail, score))

        try:
            yield _Drops
        finally:
            self.reject_many(stage, rows)

    def reject_counts(self, stage: str | None = None) -> list[tuple[str, str, int]]:
        where = "WHERE stage = ?" if stage else ""
        return self.execute(
            f"SELECT stage, reason, count(*) FROM rejects {where} "
            "GROUP BY ALL ORDER BY stage, count(*) DESC",
            [stage] if stage else None,
        )

    def get_meta(self, key: str) -> str | None:
        return self.scalar("SELECT value FROM meta WHERE key = ?", [key])

    def set_meta(self, key: str, value: str) -> None:
        self.insert("meta", [{"key": key, "value": value}], replace=True)

    def store_id(self) -> str:
        """A random ID minted when the database file was created.  Part of
        every stage's cache key, so deleting the run folder never lets a
        cached task claim a table that no longer exists."""
        existing = self.get_meta("store_id")
        if existing:
            return existing

        new = uuid.uuid4().hex[:16]
        self.set_meta("store_id", new)
        return new


atexit.register(Store.close_all)  # flush and close before interpreter teardown
