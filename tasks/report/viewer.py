"""What `sftmill view` shows: a run folder's records and rejected items as
rows the page filters and pages through, the passages records cite, and the
summary (counts, drops by reason, quality figures, review decisions).

Any run folder works (pipeline, generators, curate, mix): everything is read
once, read-only, from its `sftmill.duckdb` and `quality.json`.  Each row:
    kind        kept | rejected
    id          record ID (kept) or the dropped item's ID
    stage, reason, detail     why a rejected item was dropped ("kept" for records)
    prompt, answer, messages  the record as exported (a rejected item: its text)
    subdomain, task_type, persona, difficulty, origin   facets, where present
    scores      {name: value} (relevance, prompt_quality, groundedness …)
    review      a reviewer's decision, where a review ran
    metadata    the record's metadata (kept rows)
`select` filters (text search, facets, a score range) and pages them; the
page calls it through the server, and the static page does the same in the
browser over the rows embedded in it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftmill.core.recipe import DB_FILE
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store
from sftmill.tasks.report.export import to_record
from sftmill.tasks.report.quality import QUALITY_FILE, read_quality
from sftmill.tasks.review.annotations import reviewed_rows

FACETS = ("subdomain", "task_type", "persona", "difficulty", "origin", "stage", "reason")
PAGE_SIZE = 50
# Where a dropped item's text is, by the table its ID belongs to (the tables a run has).
# (A dropped answer shows its prompt and itself.)
ITEM_TEXT = (("dataset", "record_id", "prompt"), ("candidate_prompts", "prompt_id", "text"),
             ("chunks", "chunk_id", "text"), ("documents", "doc_id", "uri"))


@dataclass
class RunView:
    """One run folder, loaded for the viewer."""

    run_dir: Path
    name: str
    rows: list[dict[str, Any]]
    passages: dict[str, dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def table_names(store: Store) -> set[str]:
    return {r[0] for r in store.execute("SELECT table_name FROM information_schema.tables")}


def kept_row(row: dict) -> dict:
    meta = json.loads(row["metadata"] or "{}")
    record, profile = meta.get("record", {}), meta.get("profile", {})
    turns = json.loads(row.get("turns") or "[]")
    messages = to_record("openai", row["prompt"], row["answer"] or "", {}, row.get("reasoning"),
                         "field", turns)["messages"]
    return {"kind": "kept", "id": row["record_id"], "stage": "kept", "reason": "kept", "detail": "",
            "prompt": row["prompt"], "answer": row["answer"] or "", "messages": messages,
            "subdomain": profile.get("subdomain") or meta.get("subdomain"),
            "task_type": record.get("task_type") or meta.get("task_type"),
            "persona": record.get("persona"), "difficulty": record.get("difficulty"),
            "origin": record.get("origin") or meta.get("generator"),
            "scores": {k: v for k, v in (meta.get("scores") or {}).items() if isinstance(v, (int, float))},
            "review": (meta.get("review") or {}).get("decision"), "metadata": meta}


def exported_rows(store: Store, tables: set[str]) -> list[dict]:
    """The records as exported (a run stopped before its export: as they stand)."""
    if "dataset" not in tables:
        return []
    if "reviews" in tables:
        return reviewed_rows(store)
    return store.query_dicts(f"SELECT * FROM {KEPT_DATASET} ORDER BY record_id")


def rejected_rows(store: Store, tables: set[str]) -> list[dict]:
    """Every drop of the run, with the text of the item where a table holds it."""
    joins, texts = [], []
    for i, (table, key, column) in enumerate(ITEM_TEXT):
        if table in tables:
            joins.append(f"LEFT JOIN {table} t{i} ON t{i}.{key} = r.item_id")
            texts.append(f"t{i}.{column}")
    answer = "NULL"
    if {"answers", "candidate_prompts"} <= tables:
        joins.append("LEFT JOIN answers a ON a.answer_id = r.item_id "
                     "LEFT JOIN candidate_prompts ap ON ap.prompt_id = a.prompt_id")
        texts.insert(0, "ap.text")
        answer = "a.text"
    text = f"coalesce({', '.join(texts)})" if texts else "NULL"
    rows = store.query_dicts(f"SELECT r.stage, r.item_id, r.reason, r.detail, r.score, {text} AS text, "
                             f"{answer} AS answer FROM rejects r {' '.join(joins)} "
                             "ORDER BY r.stage, r.reason, r.item_id")
    if "reviews" in tables:  # records a reviewer rejected
        rows += store.query_dicts(
            "SELECT 'review' AS stage, v.record_id AS item_id, 'rejected_by_reviewer' AS reason, "
            "coalesce(v.note, '') AS detail, NULL AS score, d.prompt AS text, d.answer FROM reviews v "
            "LEFT JOIN dataset d USING (record_id) WHERE v.decision = 'reject'")
    return [{"kind": "rejected", "id": r["item_id"], "stage": r["stage"], "reason": r["reason"],
             "detail": r["detail"] or "", "prompt": r["text"] or "", "answer": r["answer"] or "",
             "messages": [],
             "subdomain": None, "task_type": None, "persona": None, "difficulty": None,
             "origin": None, "scores": {} if r["score"] is None else {"score": r["score"]},
             "review": "reject" if r["stage"] == "review" else None, "metadata": {}}
            for r in rows]


def cited_passages(store: Store, tables: set[str], rows: list[dict]) -> dict[str, dict]:
    """chunk ID → {text, uri, title} for every passage a kept record cites."""
    wanted = {c["chunk_id"] for r in rows for c in _citations(r["metadata"]) if c.get("chunk_id")}
    if not wanted or "chunks" not in tables or "documents" not in tables:
        return {}
    found = store.query_dicts(
        "SELECT c.chunk_id, c.text, d.uri, d.title FROM chunks c LEFT JOIN documents d USING (doc_id) "
        "WHERE c.chunk_id IN (SELECT unnest(?))", [sorted(wanted)])
    return {r["chunk_id"]: {"text": r["text"], "uri": r["uri"], "title": r["title"]} for r in found}


def _citations(meta: dict) -> list[dict]:
    follow_ups = (meta.get("conversation") or {}).get("follow_ups") or []
    return list(meta.get("citations") or []) + [c for f in follow_ups for c in f.get("citations") or []]


def summary_of(rows: list[dict], quality: dict | None, name: str) -> dict:
    kept = [r for r in rows if r["kind"] == "kept"]
    drops = Counter(f"{r['stage']} / {r['reason']}" for r in rows if r["kind"] == "rejected")
    facets = {f: sorted({str(r[f]) for r in rows if r[f] is not None}) for f in FACETS}
    return {"name": name, "kept": len(kept), "rejected": len(rows) - len(kept),
            "drops": drops.most_common(), "facets": facets,
            "scores": sorted({k for r in rows for k in r["scores"]}),
            "reviews": {d: sum(1 for r in kept if r["review"] == d) for d in ("accept", "edit")},
            "figures": [{k: f.get(k) for k in ("key", "label", "value", "good")}
                        for f in (quality or {}).get("figures", [])]}


def load_run(run_dir: Path) -> RunView:
    """A run folder for the viewer (read-only; a run still writing to it cannot be opened)."""
    store = Store.reader(Path(run_dir) / DB_FILE)
    try:
        names = table_names(store)
        kept = [kept_row(r) for r in exported_rows(store, names)]
        rows = kept + rejected_rows(store, names)
        passages = cited_passages(store, names, kept)
        name = next((r["metadata"].get("recipe", {}).get("name") for r in kept
                     if r["metadata"].get("recipe")), None) or Path(run_dir).resolve().name
    finally:
        store.close()
    return RunView(Path(run_dir), name, rows, passages,
                   summary_of(rows, read_quality(Path(run_dir) / QUALITY_FILE), name))


def matches(row: dict, filters: dict[str, str]) -> bool:
    """The page's filters: kind, a text search, facets, a score range."""
    kind = filters.get("kind") or "all"
    if kind != "all" and row["kind"] != kind:
        return False
    for facet in FACETS:
        wanted = filters.get(facet)
        if wanted and str(row[facet]) != wanted:
            return False
    q = (filters.get("q") or "").lower()
    if q and q not in row["_text"]:
        return False
    score = filters.get("score")
    if score:
        value = row["scores"].get(score)
        low, high = filters.get("min"), filters.get("max")
        if value is None or (low not in (None, "") and value < float(low)) or \
                (high not in (None, "") and value > float(high)):
            return False
    return True


def searchable(rows: list[dict]) -> None:
    """Give each row the lower-cased text the search looks in (once)."""
    for r in rows:
        r["_text"] = " ".join([r["prompt"], r["answer"], r["reason"], r["detail"],
                               *(m["content"] for m in r["messages"][2:])]).lower()


def select(rows: list[dict], filters: dict[str, str], offset: int = 0, limit: int = PAGE_SIZE) -> dict:
    """One page of the rows the filters keep, and how many they keep."""
    kept = [r for r in rows if matches(r, filters)]
    page = [{k: v for k, v in r.items() if k != "_text"} for r in kept[offset:offset + limit]]
    return {"total": len(kept), "offset": offset, "rows": page}
