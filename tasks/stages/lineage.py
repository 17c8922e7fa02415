"""A kept answer's lineage, as the JSON metadata its record carries: source document and URI,
chunk, profile, the queries that brought web sources in, the cited passages and their URLs, model
names, template versions, scores and reviews."""

from __future__ import annotations

from typing import Iterable

import orjson

from sftmill.core.recipe import Recipe
from sftmill.core.store import Store


def _keyed(store: Store, sql: str, ids: Iterable[str], key: str) -> dict[str, dict]:
    """Rows of `sql` (whose `?` is a list of IDs) by their `key` column."""
    ids = sorted({i for i in ids if i is not None})
    return {r[key]: r for r in store.query_dicts(sql, [ids])} if ids else {}


def conditions(prompt: dict, judged: dict | None) -> dict:
    """A record's persona and difficulty, where the recipe asked for them:
    `difficulty` is the judge's level (else the one asked for), `difficulty_asked` the one asked for."""
    out = {"persona": prompt["persona"]} if prompt.get("persona") else {}
    asked, level = prompt.get("difficulty"), (judged or {}).get("level")
    if asked or level:
        out.update(difficulty=level or asked, difficulty_asked=asked)
    return out


def build_metadata(store: Store, recipe: Recipe, rows: list[dict]) -> list[str]:
    """JSON lineage of each kept answer (`rows` join answers, checks and
    prompts), looked up with one query per table for the whole batch."""
    in_ids = "IN (SELECT unnest(?))"
    pids = [r["prompt_id"] for r in rows]
    prompts = _keyed(store, f"SELECT * FROM prompts WHERE prompt_id {in_ids}", pids, "prompt_id")
    candidates = _keyed(store, "SELECT prompt_id, model, template_version FROM candidate_prompts "
                        f"WHERE prompt_id {in_ids}", pids, "prompt_id")
    profiles = _keyed(store, f"SELECT * FROM profiles WHERE profile_id {in_ids}",
                      (p.get("profile_id") for p in prompts.values()), "profile_id")
    sources = _keyed(store, "SELECT d.doc_id, d.uri, d.source_kind, q.query FROM documents d "
                     f"LEFT JOIN queries q USING (query_id) WHERE d.doc_id {in_ids}",
                     (p.get("doc_id") for p in prompts.values()), "doc_id")
    prompt_reviews = _keyed(store, f"SELECT * FROM prompt_reviews WHERE prompt_id {in_ids}",
                            pids, "prompt_id")
    judged_levels = _keyed(store, f"SELECT prompt_id, level FROM prompt_difficulty WHERE prompt_id {in_ids}",
                           pids, "prompt_id")
    relevance = _keyed(store, f"SELECT chunk_id, score FROM relevance WHERE chunk_id {in_ids}",
                       (p.get("chunk_id") for p in prompts.values()), "chunk_id")
    retrieved: dict[str, list[dict]] = {}
    for r in store.query_dicts(
            "SELECT r.prompt_id, r.rank AS n, r.chunk_id, r.similarity, d.doc_id, d.uri "
            "FROM retrievals r JOIN chunks c USING (chunk_id) JOIN documents d USING (doc_id) "
            f"WHERE r.prompt_id {in_ids} ORDER BY r.prompt_id, r.rank", [sorted(set(pids))]):
        retrieved.setdefault(r["prompt_id"], []).append(r)
    queries: dict[str, list[str]] = {}
    for prompt_id, query in store.execute(
            f"SELECT prompt_id, query FROM answer_queries WHERE prompt_id {in_ids} "
            "ORDER BY prompt_id, query", [sorted(set(pids))]):
        queries.setdefault(prompt_id, []).append(query)
    recipe_meta = {"name": recipe.name, "fingerprint": recipe.fingerprint()}
    out = []
    for row in rows:
        prompt = prompts.get(row["prompt_id"], {})
        candidate = candidates.get(row["prompt_id"], {})
        profile = profiles.get(prompt.get("profile_id"), {})
        source = sources.get(prompt.get("doc_id"), {})
        cited_numbers = set(row["cited_numbers"] or [])
        cited = [c for c in retrieved.get(row["prompt_id"], []) if c["n"] in cited_numbers]
        meta = {
            "record": {"prompt_id": row["prompt_id"], "answer_id": row["answer_id"],
                       "origin": prompt.get("origin"), "task_type": prompt.get("task_type"),
                       "grounded": row["grounded"]},
            "source": {"doc_id": source.get("doc_id"), "uri": source.get("uri"),
                       "kind": source.get("source_kind"), "chunk_id": prompt.get("chunk_id"),
                       "found_by_query": source.get("query")},
            "profile": {k: profile.get(k) for k in ("profile_id", "domain", "subdomain", "topic",
                                                    "use_case")},
            "answer_queries": queries.get(row["prompt_id"], []),
            "citations": [{"n": c["n"], "chunk_id": c["chunk_id"], "doc_id": c["doc_id"],
                           "uri": c["uri"], "similarity": round(c["similarity"], 4)} for c in cited],
            "cited_urls": sorted({c["uri"] for c in cited}),
            "citations_inferred": bool(row.get("citations_inferred")),
            "models": {"prompt": candidate.get("model"), "profile": profile.get("model"),
                       "answer": row["model"], "judge": row.get("judge_model")},
            "templates": {"prompt": candidate.get("template_version"),
                          "profile": profile.get("template_version"),
                          "answer": row["template_version"]},
            "scores": {"relevance": relevance.get(prompt.get("chunk_id"), {}).get("score"),
                       "prompt_quality": prompt.get("quality"),
                       "groundedness": row.get("groundedness"),
                       "lexical_support": row.get("lexical_support"),
                       "copied_share": row.get("copied_share")},
            "recipe": recipe_meta,
        }
        meta["record"].update(conditions(prompt, judged_levels.get(row["prompt_id"])))
        reviewed = prompt_reviews.get(row["prompt_id"])
        if reviewed:  # the prompt gate's decision; an edited prompt keeps its original here
            meta["prompt_review"] = {"decision": reviewed["decision"], "note": reviewed["note"],
                                     "reviewers": reviewed["n_reviewers"], "source": reviewed["source"]}
            if reviewed["decision"] == "edit":
                meta["prompt_review"]["original_prompt"] = prompt.get("text")
        # orjson as the JSONL export: dates and other values as str(), as json.dumps(default=str) did
        out.append(orjson.dumps(meta, default=str, option=orjson.OPT_PASSTHROUGH_DATETIME).decode())
    return out
