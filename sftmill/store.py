"""DuckDB store: one database file per run, one table per stage.

Row IDs are content hashes (`content_id`), and every insert is
`INSERT OR IGNORE`, so re-running a stage adds no duplicates.  Every row keeps
the IDs of its parents, which gives lineage from a final record back to the
source document.  Prefect tasks pass `TableRef`s (a table name plus a
fingerprint of its IDs) between each other, never DataFrames.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import duckdb

if TYPE_CHECKING:  # for annotations only: pyarrow is imported where rows are moved
    import pyarrow as pa

SCHEMA: dict[str, str] = {
    "meta": """
        key VARCHAR PRIMARY KEY,
        value VARCHAR
    """,
    # Every document that entered the run: local files, table rows, web pages.
    "documents": """
        doc_id VARCHAR PRIMARY KEY,
        uri VARCHAR,
        source_kind VARCHAR,          -- file | table | url | web
        title VARCHAR,
        text VARCHAR,
        n_chars INTEGER,
        query_id VARCHAR,             -- web documents: the search query that found them
        round INTEGER,
        created_at TIMESTAMP DEFAULT current_timestamp
    """,
    # Anything dropped by any stage, with a reason from a fixed vocabulary.
    "rejects": """
        stage VARCHAR,
        item_id VARCHAR,
        reason VARCHAR,
        detail VARCHAR,
        score DOUBLE,
        created_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (stage, item_id)
    """,
    "chunks": """
        chunk_id VARCHAR PRIMARY KEY,
        doc_id VARCHAR,
        idx INTEGER,
        char_start INTEGER,
        char_end INTEGER,
        heading VARCHAR,
        text VARCHAR,
        n_tokens INTEGER
    """,
    "relevance": """
        chunk_id VARCHAR PRIMARY KEY,
        score DOUBLE,
        reason VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "profiles": """
        profile_id VARCHAR PRIMARY KEY,
        chunk_id VARCHAR,
        domain VARCHAR,
        subdomain VARCHAR,
        topic VARCHAR,
        use_case VARCHAR,
        summary VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    # Web search: queries written from profiles, the URLs they found.
    "queries": """
        query_id VARCHAR PRIMARY KEY,
        profile_id VARCHAR,
        query VARCHAR,
        round INTEGER,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "search_results": """
        query_id VARCHAR,
        url VARCHAR,
        rank INTEGER,
        title VARCHAR,
        snippet VARCHAR,
        backend VARCHAR,
        PRIMARY KEY (query_id, url)
    """,
    "fetches": """
        url VARCHAR PRIMARY KEY,
        ok BOOLEAN,
        reason VARCHAR,
        detail VARCHAR,
        final_url VARCHAR,
        doc_id VARCHAR,
        round INTEGER
    """,
    # Local search backend: a BM25 index over a folder of saved pages.
    "search_pages": """
        page_id VARCHAR PRIMARY KEY,
        uri VARCHAR,
        title VARCHAR,
        n_terms INTEGER
    """,
    "search_terms": """
        page_id VARCHAR,
        term VARCHAR,
        tf INTEGER,
        PRIMARY KEY (page_id, term)
    """,
    # Every prompt made by generate / broaden / rephrase, before filtering.
    "candidate_prompts": """
        prompt_id VARCHAR PRIMARY KEY,
        text VARCHAR,
        origin VARCHAR,               -- generated | broadened | rephrased
        parent_id VARCHAR,            -- profile (generated, broadened) or prompt (rephrased)
        profile_id VARCHAR,
        task_type VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "prompt_scores": """
        prompt_id VARCHAR PRIMARY KEY,
        score DOUBLE,
        reason VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    # The prompt flow's output: kept prompts after filter and dedup.
    "prompts": """
        prompt_id VARCHAR PRIMARY KEY,
        text VARCHAR,
        origin VARCHAR,
        parent_id VARCHAR,
        profile_id VARCHAR,
        chunk_id VARCHAR,
        doc_id VARCHAR,
        subdomain VARCHAR,
        task_type VARCHAR,
        quality DOUBLE,
        n_near_duplicates INTEGER
    """,
    # The answer half.
    "answer_queries": """
        query_id VARCHAR PRIMARY KEY,
        prompt_id VARCHAR,
        query VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "retrievals": """
        prompt_id VARCHAR,
        rank INTEGER,
        chunk_id VARCHAR,
        similarity DOUBLE,
        PRIMARY KEY (prompt_id, chunk_id)
    """,
    "answers": """
        answer_id VARCHAR PRIMARY KEY,
        prompt_id VARCHAR,
        text VARCHAR,
        grounded BOOLEAN,
        cited_chunk_ids VARCHAR[],
        cited_numbers INTEGER[],
        citations_inferred BOOLEAN,  -- no [n] marker: cited the passage it draws on most
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "answer_checks": """
        answer_id VARCHAR PRIMARY KEY,
        groundedness DOUBLE,
        judge_reason VARCHAR,
        lexical_support DOUBLE,
        n_chars INTEGER,
        refusal BOOLEAN,
        citations_valid BOOLEAN,
        truncated BOOLEAN,       -- cut off: the token budget ran out, or it ends mid-sentence
        echoes_prompt BOOLEAN,   -- says nothing the prompt did not already say
        prompt_similarity DOUBLE, -- embedding cosine between the answer and its prompt
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    # The final SFT records (one per kept answer).
    "dataset": """
        record_id VARCHAR PRIMARY KEY,
        prompt_id VARCHAR,
        answer_id VARCHAR,
        prompt VARCHAR,
        answer VARCHAR,
        grounded BOOLEAN,
        metadata VARCHAR              -- JSON: lineage, models, template versions, scores
    """,
    "stage_stats": """
        run_id VARCHAR,
        stage VARCHAR,
        n_in INTEGER,
        n_out INTEGER,
        seconds DOUBLE,
        finished_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (run_id, stage)
    """,
    # Calls answered from the cache, counted (they add no llm_calls row).
    "llm_cache_hits": """
        stage VARCHAR,
        model VARCHAR,
        hits BIGINT,
        PRIMARY KEY (stage, model)
    """,
    # One row per LLM call sent (status ok | error); older runs also hold
    # a row per cache hit (status cache_hit).
    "llm_calls": """
        call_id VARCHAR PRIMARY KEY,
        key VARCHAR,
        model VARCHAR,
        backend VARCHAR,
        stage VARCHAR,
        status VARCHAR,
        request_json VARCHAR,
        response_text VARCHAR,
        error VARCHAR,
        attempts INTEGER,
        tokens_in INTEGER,
        tokens_out INTEGER,
        latency_s DOUBLE,
        created_at TIMESTAMP DEFAULT current_timestamp
    """,
    # Batches submitted to a Batch API (llm/batch_api.py): written when the
    # input file is uploaded, before the batch is created, so that a killed
    # run resumes the same batch instead of paying for its requests again.
    "llm_batches": """
        input_file_id VARCHAR PRIMARY KEY,
        batch_id VARCHAR,             -- null until the server created it
        base_url VARCHAR,
        model VARCHAR,
        stage VARCHAR,
        keys VARCHAR[],               -- the cache keys of its requests (their custom_id)
        status VARCHAR,               -- the server's last word: validating … completed | expired | failed | cancelled
        n_completed INTEGER,
        n_failed INTEGER,
        created_at TIMESTAMP DEFAULT current_timestamp,
        updated_at TIMESTAMP
    """,
    # Reviewers' resolved decisions on prompts at the prompt gate (`tasks/review.py`).
    "prompt_reviews": """
        prompt_id VARCHAR PRIMARY KEY,
        decision VARCHAR,             -- accept | reject | edit
        edited_prompt VARCHAR,
        note VARCHAR,
        n_reviewers INTEGER,
        source VARCHAR
    """,
    "embeddings": """
        text_hash VARCHAR,
        model VARCHAR,
        vector FLOAT[],
        PRIMARY KEY (text_hash, model)
    """,
}

# The prompts the answer stages work on: `prompts` with the prompt gate's
# reviews applied (rejected ones left out, edited ones as edited) and
# without the near-duplicates of other shards of a sharded run
# (`tasks/shard.py`), a view.
ANSWERABLE_PROMPTS_VIEW = (
    "CREATE OR REPLACE VIEW answerable_prompts AS "
    "SELECT p.* REPLACE (coalesce(r.edited_prompt, p.text) AS text) "
    "FROM prompts p LEFT JOIN prompt_reviews r USING (prompt_id) "
    "WHERE r.decision IS DISTINCT FROM 'reject' "
    "AND p.prompt_id NOT IN (SELECT item_id FROM rejects WHERE stage = 'shard_merge')")
# The records that go out: `dataset` without those curation dropped
# (`tasks/curate.py`) or a mix left over its weights (`tasks/mix.py`), as a subquery.
KEPT_DATASET = ("(SELECT * FROM dataset WHERE record_id NOT IN "
                "(SELECT item_id FROM rejects WHERE stage IN ('curate', 'mix')))")


def content_id(*parts: Any) -> str:
    """A stable 16-hex-digit ID from the JSON form of `parts`."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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

    def __init__(self, path: str | Path):
        self.path = str(Path(path).resolve())
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
    def close_all(cls) -> None:
        """Close every store opened with `open` (also run at interpreter exit),
        moving the LLM call journals into their tables first."""
        journal = sys.modules.get("sftmill.llm.journal")
        if journal is not None:
            journal.CallJournal.merge_all()
            journal.CallJournal.forget()
        with cls._open_lock:
            for store in cls._open.values():
                store._con.close()
            cls._open.clear()

    def ensure_tables(self, schema: dict[str, str]) -> None:
        """Create missing tables; add columns a newer sftmill declares to an
        older run database's tables (so an old run folder can be resumed)."""
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
        import uuid

        new = uuid.uuid4().hex[:16]
        self.set_meta("store_id", new)
        return new


atexit.register(Store.close_all)  # flush and close before interpreter teardown
