"""Answer steps 1–2 — extended queries and chop-n-RAG.

`extended_search`: for each kept prompt the run's chunks support weakly (its
best passage below `answers.search_below`; work sized by need), the
generator writes `answers.queries_per_prompt` search queries covering more
details and aspects of it; the search
backend and the guarded fetcher of the prompt flow bring pages in (same
limits, same `fetches` log, so a URL is fetched once per run); new pages are
chunked.  `retrieve`: every chunk of the run — the recipe's own sources
always included — is a candidate passage; prompts and passages are embedded
and FAISS (exact inner product) returns the `top_k` passages per prompt with
cosine ≥ `answers.min_similarity`.
"""

from __future__ import annotations

import numpy as np

from sftmill.core.ids import content_id
from sftmill.core.progress import progress
from sftmill.core.recipe import Recipe
from sftmill.core.store import Store, TableRef
from sftmill.embed.embedder import Embedder
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.chunk import chunk_documents
from sftmill.tasks.stages.web import QUERY_TOKENS, fetch_new_pages, run_searches

QUERY_STAGE = "answer_queries"
SEARCH_STAGE = "answer_search"
RETRIEVE_STAGE = "retrieve"
TEMPLATE = "answer_queries"


def weakly_supported(store: Store, recipe: Recipe, prompts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (prompt_id, text) pairs whose best passage among the run's chunks
    has a cosine below `answers.search_below` (the vectors are cached for
    the retrieve stage)."""
    below = recipe.answers.search_below
    if below >= 1 or not prompts:
        return prompts
    passages = [t for t, in store.execute("SELECT text FROM chunks ORDER BY chunk_id")]
    embedder = Embedder(recipe.embedding, store)
    best = top_passages(embedder.embed([t for _, t in prompts]), embedder.embed(passages), 1, -1.0)
    return [p for p, hits in zip(prompts, best) if not hits or hits[0][1] < below]


def write_answer_queries(store: Store, recipe: Recipe) -> tuple[int, int, int]:
    """Queries for the prompts that need them; return (queries written,
    prompts asked about, prompts looked at)."""
    n = recipe.answers.queries_per_prompt
    fresh = store.execute("SELECT prompt_id, text FROM answerable_prompts WHERE prompt_id NOT IN "
                          "(SELECT prompt_id FROM answer_queries) ORDER BY prompt_id")
    todo = weakly_supported(store, recipe, fresh)
    if n == 0 or not todo:
        return 0, 0, len(fresh)
    base = load_template(TEMPLATE)
    template = with_schema(base, exact_items(base.schema, "queries", n))
    endpoint = recipe.llm.generator
    llm = make_llm(endpoint, store)
    results = llm_map(llm, endpoint, template, todo,
                      lambda row: {"domain": recipe.domain.name, "prompt": row[1], "n": n},
                      stage=QUERY_STAGE, seed=recipe.seed,
                      max_tokens=QUERY_TOKENS * n + 16)
    rows = []
    for (prompt_id, _text), result in answered(store, QUERY_STAGE, results, lambda row: row[0]):
        for query in dict.fromkeys(q.strip() for q in result.data["queries"] if q.strip()):
            rows.append({"query_id": content_id("answer", prompt_id, query), "prompt_id": prompt_id,
                         "query": query, "model": llm.model, "template_version": template.version,
                         "call_key": result.key})
    store.insert("answer_queries", rows)
    return len(rows), len(todo), len(fresh)


def extended_search_into(store: Store, recipe: Recipe) -> tuple[int, int, str]:
    """Queries → search → fetch → chunk for the prompts the corpus supports
    weakly; return (queries written, documents added, a note)."""
    if recipe.search.backend == "none" or recipe.answers.queries_per_prompt == 0:
        return 0, 0, "no extended search (search.backend none or answers.queries_per_prompt 0)"
    written, asked, looked = write_answer_queries(store, recipe)
    note = (f"{asked} of {looked} new prompts below answers.search_below "
            f"{recipe.answers.search_below:g}: {written} queries")
    run_searches(store, recipe, store.execute(
        "SELECT query_id, query FROM answer_queries WHERE query_id NOT IN "
        "(SELECT query_id FROM search_results) ORDER BY query_id"), SEARCH_STAGE)
    _tried, new_docs = fetch_new_pages(store, recipe, round_no=0, stage=SEARCH_STAGE)
    if new_docs:
        chunk_documents(store, recipe, new_docs)
    return written, len(new_docs), f"{note}, {len(new_docs)} new documents"


def top_passages(prompt_vectors: np.ndarray, passage_vectors: np.ndarray, k: int,
                 min_similarity: float) -> list[list[tuple[int, float]]]:
    """Per prompt, up to k (passage index, cosine) with cosine ≥ min_similarity, best first."""
    import faiss

    if len(passage_vectors) == 0:
        return [[] for _ in range(len(prompt_vectors))]
    index = faiss.IndexFlatIP(passage_vectors.shape[1])
    index.add(np.ascontiguousarray(passage_vectors, dtype=np.float32))
    sims, ids = index.search(np.ascontiguousarray(prompt_vectors, dtype=np.float32),
                             min(k, len(passage_vectors)))
    return [[(int(j), float(s)) for j, s in zip(row_ids, row_sims) if j >= 0 and s >= min_similarity]
            for row_ids, row_sims in zip(ids, sims)]


def retrieve_into(store: Store, recipe: Recipe) -> tuple[int, int]:
    """Fill `retrievals`; return (prompts, prompts with at least one passage)."""
    prompts = store.execute("SELECT prompt_id, text FROM answerable_prompts ORDER BY prompt_id")
    passages = store.execute("SELECT chunk_id, text FROM chunks ORDER BY chunk_id")
    embedder = Embedder(recipe.embedding, store)
    with progress("retrieve", len(prompts)) as bar:
        prompt_vectors = embedder.embed([t for _, t in prompts])
        passage_vectors = embedder.embed([t for _, t in passages])
        hits = top_passages(prompt_vectors, passage_vectors, recipe.answers.top_k,
                            recipe.answers.min_similarity)
        bar.advance(len(prompts))
    rows = [{"prompt_id": prompts[i][0], "rank": rank, "chunk_id": passages[j][0], "similarity": s}
            for i, found in enumerate(hits) for rank, (j, s) in enumerate(found, 1)]
    store.replace_rows("retrievals", rows)
    return len(prompts), sum(1 for found in hits if found)


@stage_task("answer_search", recipe=("domain", "llm", "search", "limits", "chunking",
                                       "answers", "embedding", "seed"),
            templates=(TEMPLATE,), reads=("answerable_prompts",), writes=("answer_queries", "chunks"))
def extended_search(recipe: Recipe, prompts: TableRef) -> StageResult:
    store = Store.open(prompts.db_path)
    timer = StageTimer(store, SEARCH_STAGE)
    _written, added, note = extended_search_into(store, recipe)
    return timer.done(store.ref("chunks", "chunk_id"), prompts.rows, added, note)


@stage_task("retrieve", recipe=("embedding", "answers"),
            reads=("answerable_prompts", "chunks"), writes=("retrievals",))
def retrieve(recipe: Recipe, prompts: TableRef, passages: StageResult) -> StageResult:
    store = Store.open(passages.out.db_path)
    timer = StageTimer(store, RETRIEVE_STAGE)
    n_prompts, supported = retrieve_into(store, recipe)
    return timer.done(store.ref("retrievals", "prompt_id || chunk_id"), n_prompts, supported,
                      f"{n_prompts - supported} prompts without a passage above the minimum")

