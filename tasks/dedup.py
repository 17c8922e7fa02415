"""Stage 10 — near-duplicate removal with embeddings and FAISS, then the
`prompts` table: the prompt flow's output.

Prompts are embedded (normalised, so inner product = cosine) and put in
priority order: generated before broadened before rephrased, then higher
judge score, then prompt ID.  Walking that order, each prompt that is still
in keeps itself and removes every later prompt at cosine ≥ the recipe's
`thresholds.dedup_cosine`, so each group of near-duplicates keeps one
deterministic representative, and chains (a≈b, b≈c, a≉c) do not remove c.

Index: exact (`IndexFlatIP` with range search) up to `EXACT_MAX` prompts;
past that an HNSW graph (`IndexHNSWFlat`, M=32, efSearch=128) searched for
the `NEIGHBOURS` nearest, which keeps 1M prompts practical (exact search is
quadratic: ~30 s for 20k × 200k here) at the price of missing a few
duplicates that are not among a prompt's 32 nearest neighbours.
"""

from __future__ import annotations

import numpy as np

from sftmill.config import Recipe
from sftmill.embeddings import Embedder
from sftmill.progress import progress
from sftmill.stages import StageResult, StageTimer, stage_task
from sftmill.store import Store
from sftmill.tasks.rephrase import REPLACED

STAGE = "dedup"
EXACT_MAX = 50_000
NEIGHBOURS = 32
ORIGIN_RANK = {"generated": 0, "broadened": 1, "rephrased": 2}


def neighbour_lists(vectors: np.ndarray, threshold: float, first: int = 0,
                    ) -> list[list[tuple[int, float]]]:
    """For every row from `first` on, the other rows with cosine ≥ threshold."""
    import faiss

    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = vectors[first:]
    out: list[list[tuple[int, float]]] = [[] for _ in range(n - first)]
    if n <= EXACT_MAX:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        # range_search keeps results strictly above the radius: nudge it down.
        lims, sims, ids = index.range_search(queries, threshold - 1e-6)
        for q in range(n - first):
            for j, s in zip(ids[lims[q]:lims[q + 1]], sims[lims[q]:lims[q + 1]]):
                if j != first + q:
                    out[q].append((int(j), float(s)))
        return out
    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(vectors)
    index.hnsw.efSearch = 128
    sims, ids = index.search(queries, NEIGHBOURS + 1)
    for q in range(n - first):
        out[q] = [(int(j), float(s)) for j, s in zip(ids[q], sims[q])
                  if j != first + q and j >= 0 and s >= threshold]
    return out


def near_duplicates(vectors: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """Rows to drop → (row kept in their place, cosine).  Rows are in priority order."""
    removed: dict[int, tuple[int, float]] = {}
    for i, neighbours in enumerate(neighbour_lists(vectors, threshold)):
        if i in removed:
            continue
        for j, sim in neighbours:
            if j > i and j not in removed:
                removed[j] = (i, sim)
    return removed


def new_near_duplicates(old: np.ndarray, new: np.ndarray, threshold: float,
                        old_groups: list | None = None, new_groups: list | None = None,
                        ) -> dict[int, tuple[str, int, float]]:
    """Rows of `new` to drop → ("old" | "new", index of the row they repeat,
    cosine).  Each new row is compared with every old row and with the new
    rows before it that were kept; rows of the same group (say, one
    Evol-Instruct lineage) are never compared.  Old rows are never dropped."""
    n_old = len(old)
    if not len(new):
        return {}
    groups = list(old_groups or range(n_old)) + list(new_groups or range(n_old, n_old + len(new)))
    vectors = np.vstack([old, new]) if n_old else new
    removed: dict[int, tuple[str, int, float]] = {}
    for k, neighbours in enumerate(neighbour_lists(vectors, threshold, first=n_old)):
        row = n_old + k
        for j, sim in sorted(neighbours, key=lambda js: (-js[1], js[0])):
            if groups[j] == groups[row]:
                continue
            if j < n_old:
                removed[k] = ("old", j, sim)
                break
            if j < row and (j - n_old) not in removed:
                removed[k] = ("new", j - n_old, sim)
                break
    return removed


def kept_candidates(store: Store, threshold: float) -> list[dict]:
    rows = store.query_dicts(
        "SELECT c.*, s.score AS quality, p.subdomain, p.chunk_id, ch.doc_id "
        "FROM candidate_prompts c JOIN prompt_scores s USING (prompt_id) "
        "LEFT JOIN profiles p USING (profile_id) LEFT JOIN chunks ch ON ch.chunk_id = p.chunk_id "
        f"WHERE s.score >= ? AND c.prompt_id NOT IN ({REPLACED})", [threshold])
    return sorted(rows, key=lambda r: (ORIGIN_RANK.get(r["origin"], 9), -r["quality"], r["prompt_id"]))


def dedup_prompts(store: Store, recipe: Recipe) -> tuple[int, int]:
    rows = kept_candidates(store, recipe.thresholds.prompt_quality)
    with progress("dedup", len(rows)) as bar:
        vectors = Embedder(recipe.embedding, store).embed([r["text"] for r in rows])
        removed = near_duplicates(vectors, recipe.thresholds.dedup_cosine) if rows else {}
        bar.advance(len(rows))
    store.execute("DELETE FROM rejects WHERE stage = ?", [STAGE])
    for j, (i, sim) in removed.items():
        store.reject(STAGE, rows[j]["prompt_id"], "near_duplicate",
                     f"cosine {sim:.3f} to {rows[i]['prompt_id']}: {rows[i]['text'][:120]}", sim)
    groups = {i: 0 for i in range(len(rows))}
    for i, _sim in removed.values():
        groups[i] += 1
    keep = [{"prompt_id": r["prompt_id"], "text": r["text"], "origin": r["origin"],
             "parent_id": r["parent_id"], "profile_id": r["profile_id"], "chunk_id": r["chunk_id"],
             "doc_id": r["doc_id"], "subdomain": r["subdomain"], "task_type": r["task_type"],
             "quality": r["quality"], "n_near_duplicates": groups[i]}
            for i, r in enumerate(rows) if i not in removed]
    store.replace_rows("prompts", keep)
    return len(rows), len(keep)


@stage_task("dedup", sections=("embedding", "thresholds"))
def dedup(recipe: Recipe, filtered: StageResult) -> StageResult:
    store = Store.open(filtered.out.db_path)
    timer = StageTimer(store, STAGE)
    n_in, n_out = dedup_prompts(store, recipe)
    return timer.done(store.ref("prompts", "prompt_id"), n_in, n_out,
                      f"{n_in - n_out} near duplicates removed")
