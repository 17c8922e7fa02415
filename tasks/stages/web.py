"""Stage 5 — fresh documents from the web.

`web_queries`: the generator writes `queries_per_profile` search queries for
as many profiles as the target still needs — the profiles missing, at the
profiles per query earlier rounds gave (`profiles_to_query`), drawn across
subdomains.  `search_and_fetch`: the search backend
turns each query into URLs; pages are fetched with the guards of
`tasks.fetch` (or read from disk for the local backend's `file://` results),
cleaned with trafilatura and stored as documents that remember their query
and round.  The flow then sends them through chunk → relevance → profile,
round after round.

Reject reasons: llm_invalid_output (queries), search_failed, and the
fetch reasons of `tasks.fetch` (fetch_timeout, too_large, redirect_loop,
not_html, robots_disallowed, blocked_address, http_error, …).
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from sftmill.core.ids import content_id
from sftmill.core.progress import progress
from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.tasks.sources.documents import Doc, Skip, read_file
from sftmill.tasks.sources.fetch import Fetched, Fetcher
from sftmill.tasks.sources.search import SearchError, make_search
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.collect import document_row
from sftmill.tasks.stages.sizing import (
    MIN_QUERIES,
    PRIOR_PROFILES_PER_QUERY,
    interleave,
    needed_profiles,
    wave_size,
)

QUERY_STAGE = "web_queries"
FETCH_STAGE = "search_fetch"
QUERY_TOKENS = 32  # a search query is a few words; the cap stops a rambling model early
TEMPLATE = "web_queries"

def enough_profiles(profiles: StageResult, recipe: Recipe) -> bool:
    return profiles.out.rows >= needed_profiles(recipe)


def profiles_per_query(store: Store, round_no: int) -> float:
    """Profiles made from web pages per query of the earlier rounds (the
    prior before any)."""
    asked = store.scalar("SELECT count(*) FROM queries WHERE round < ?", [round_no]) or 0
    if not asked:
        return PRIOR_PROFILES_PER_QUERY
    gained = store.scalar("SELECT count(*) FROM profiles JOIN chunks USING (chunk_id) "
                          "JOIN documents USING (doc_id) WHERE source_kind = 'web'") or 0
    return gained / asked


def profiles_to_query(store: Store, recipe: Recipe, round_no: int) -> list[dict]:
    """The profiles this round writes queries for: enough queries for the
    profiles the target still misses, at the profiles per query seen so far
    (the relevance waves' rule: headroom, a minimum round), drawn
    round-robin across subdomains in a seeded order.  The others never cost
    a query."""
    missing = needed_profiles(recipe) - store.count("profiles")
    todo = store.query_dicts(
        "SELECT * FROM profiles WHERE profile_id NOT IN (SELECT profile_id FROM queries) "
        "ORDER BY profile_id")
    per_profile = recipe.sizes.queries_per_profile
    queries = wave_size(missing, profiles_per_query(store, round_no), len(todo) * per_profile,
                        MIN_QUERIES)
    order = interleave([(p["profile_id"], p["subdomain"] or "") for p in todo], recipe.seed)
    chosen = set(order[:math.ceil(queries / per_profile)]) if per_profile else set()
    return [p for p in todo if p["profile_id"] in chosen]


def write_queries(store: Store, recipe: Recipe, round_no: int) -> tuple[int, int]:
    """Queries for the profiles this round needs; return (queries written, profiles asked about)."""
    n = recipe.sizes.queries_per_profile
    todo = profiles_to_query(store, recipe, round_no)
    if not todo:
        return 0, 0
    base = load_template(TEMPLATE)
    template = with_schema(base, exact_items(base.schema, "queries", n))
    endpoint = recipe.llm.generator
    llm = make_llm(endpoint, store)
    results = llm_map(llm, endpoint, template, todo,
                      lambda p: {"domain": recipe.domain.name, "profile": p, "n": n},
                      stage=QUERY_STAGE, seed=recipe.seed,
                      max_tokens=QUERY_TOKENS * n + 16)
    rows = []
    for profile, result in answered(store, QUERY_STAGE, results, lambda p: p["profile_id"]):
        for query in dict.fromkeys(q.strip() for q in result.data["queries"] if q.strip()):
            rows.append({"query_id": content_id(profile["profile_id"], query),
                         "profile_id": profile["profile_id"], "query": query, "round": round_no,
                         "model": llm.model, "template_version": template.version,
                         "call_key": result.key})
    store.insert("queries", rows)
    return len(rows), len(todo)


def read_local(url: str) -> Fetched:
    path = Path(url2pathname(urlsplit(url).path))
    try:
        doc = read_file(path, 20_000_000)
    except Skip as skip:
        return Fetched(url, False, reason=skip.reason, detail=skip.detail)
    except OSError as err:
        return Fetched(url, False, reason="fetch_error", detail=str(err))
    return Fetched(url, True, url, doc.text, doc.title)


def run_searches(store: Store, recipe: Recipe, queries: list[tuple[str, str]],
                 stage: str = FETCH_STAGE) -> None:
    """Send (query_id, query) pairs to the search backend; results go to `search_results`."""
    backend = make_search(recipe, store)
    rows = []
    with progress("search", len(queries)) as bar:
        for query_id, query in queries:
            try:
                results = backend.search(query, recipe.search.results_per_query)
            except SearchError as err:
                store.reject(stage, query_id, "search_failed", str(err))
                results = []
            rows += [{"query_id": query_id, "url": r.url, "rank": rank, "title": r.title,
                      "snippet": r.snippet, "backend": backend.name}
                     for rank, r in enumerate(results, 1)]
            bar.advance()
    store.insert("search_results", rows)


def fetch_new_pages(store: Store, recipe: Recipe, round_no: int,
                    stage: str = FETCH_STAGE) -> tuple[int, list[str]]:
    """Fetch every found URL not fetched before; return (pages tried, IDs of the
    documents this added)."""
    todo = store.execute(
        "SELECT url, min_by(query_id, rank) FROM search_results WHERE url NOT IN "
        "(SELECT url FROM fetches) GROUP BY url ORDER BY url")
    web = [u for u, _ in todo if not u.startswith("file:")]
    fetched = dict(zip(web, Fetcher.from_recipe(recipe).fetch_many(web)))
    fetched.update({u: read_local(u) for u, _ in todo if u.startswith("file:")})
    docs, log = [], []
    for url, query_id in todo:
        page = fetched[url]
        doc_id = None
        if page.ok:
            row = document_row(Doc(page.final_url or url, page.text, page.title, "web"),
                               query_id, round_no)
            doc_id = row["doc_id"]
            docs.append(row)
        else:
            store.reject(stage, content_id(url), page.reason, f"{url}: {page.detail}")
        log.append({"url": url, "ok": page.ok, "reason": page.reason, "detail": page.detail,
                    "final_url": page.final_url, "doc_id": doc_id, "round": round_no})
    ids = sorted({d["doc_id"] for d in docs})
    known = {r[0] for r in store.execute(
        "SELECT doc_id FROM documents WHERE doc_id IN (SELECT unnest(?))", [ids])}
    store.insert("documents", docs)
    store.insert("fetches", log)
    return len(todo), [i for i in ids if i not in known]


@stage_task("web_queries", recipe=("domain", "llm", "sizes", "seed"), templates=(TEMPLATE,),
            reads=("profiles",), writes=("queries",))
def web_queries(recipe: Recipe, profiles: StageResult, round_no: int) -> StageResult:
    store = Store.open(profiles.out.db_path)
    timer = StageTimer(store, QUERY_STAGE)
    missing = max(0, needed_profiles(recipe) - store.count("profiles"))
    written, asked = write_queries(store, recipe, round_no)
    return timer.done(store.ref("queries", "query_id"), profiles.out.rows, written,
                      f"queries for {asked} profiles: the target misses {missing} profiles")


@stage_task("search_fetch", recipe=("search", "limits"), reads=("queries",), writes=("documents",))
def search_and_fetch(recipe: Recipe, queries: StageResult, round_no: int) -> StageResult:
    store = Store.open(queries.out.db_path)
    timer = StageTimer(store, FETCH_STAGE)
    run_searches(store, recipe, store.execute(
        "SELECT query_id, query FROM queries WHERE round = ? AND query_id NOT IN "
        "(SELECT query_id FROM search_results) ORDER BY query_id", [round_no]))
    tried, new_docs = fetch_new_pages(store, recipe, round_no)
    added = len(new_docs)
    return timer.done(store.ref("documents", "doc_id"), tried, added,
                      f"{added} new documents from {tried} pages")
