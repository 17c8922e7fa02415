"""Search backends: a query in, ranked results (URL, title, snippet) out.

* `local` (offline default): BM25 over a folder of saved pages or texts,
  indexed into the run's DuckDB (`search_pages`, `search_terms`) and scored
  in SQL.  Result URLs are `file://` URIs of the saved pages.
* `searxng`: the JSON API of a self-hosted SearxNG (`/search?format=json`).
* `brave`, `tavily`: hosted APIs, key read from the environment at call time.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from sftmill.core.ids import content_id
from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.tasks.sources.documents import Skip, read_file

BM25_K1 = 1.2
BM25_B = 0.75
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
STOPWORDS = frozenset(
    "a an and are as at be by for from how in into is it its of on or that the their this "
    "to was were what when where which who why with does do did can".split())


@dataclass(frozen=True)
class SearchResult:
    url: str
    title: str = ""
    snippet: str = ""


class SearchError(Exception):
    """The backend failed for one query (recorded; the round goes on)."""


def terms(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS and len(t) > 1]


class LocalSearch:
    """BM25 over the files of one folder (html, htm, txt, md)."""

    name = "local"
    SUFFIXES = {".html", ".htm", ".txt", ".md"}

    def __init__(self, folder: Path, store: Store):
        self.folder, self.store = folder.resolve(), store
        self._index()

    def _index(self) -> None:
        known = {r[0] for r in self.store.execute("SELECT uri FROM search_pages")}
        pages, postings = [], []
        for path in sorted(self.folder.rglob("*")):
            if path.suffix.lower() not in self.SUFFIXES or path.as_uri() in known:
                continue
            try:
                doc = read_file(path, 20_000_000)
            except (Skip, OSError):
                continue  # an unreadable page is not findable; fetch would skip it anyway
            counts = Counter(terms(doc.title + " " + doc.text))
            page_id = content_id(path.as_uri())
            pages.append({"page_id": page_id, "uri": path.as_uri(), "title": doc.title,
                          "n_terms": sum(counts.values())})
            postings += [{"page_id": page_id, "term": t, "tf": n} for t, n in counts.items()]
        # Terms first: a page row means "indexed", so an interrupted run re-indexes it.
        self.store.insert("search_terms", postings)
        self.store.insert("search_pages", pages)

    def search(self, query: str, k: int) -> list[SearchResult]:
        words = sorted(set(terms(query)))
        if not words:
            return []
        n_pages = self.store.count("search_pages")
        avg_len = self.store.scalar("SELECT avg(n_terms) FROM search_pages") or 1.0
        rows = self.store.execute(
            """
            WITH df AS (SELECT term, count(*) AS df FROM search_terms
                        WHERE term IN (SELECT unnest(?)) GROUP BY term)
            SELECT p.uri, p.title,
                   sum(ln(1 + (? - df.df + 0.5) / (df.df + 0.5))
                       * t.tf * (? + 1) / (t.tf + ? * (1 - ? + ? * p.n_terms / ?))) AS score
            FROM search_terms t JOIN df USING (term) JOIN search_pages p USING (page_id)
            GROUP BY p.uri, p.title ORDER BY score DESC, p.uri LIMIT ?
            """,
            [words, n_pages, BM25_K1, BM25_K1, BM25_B, BM25_B, avg_len, k],
        )
        return [SearchResult(uri, title or "") for uri, title, _score in rows]


def request_results(backend: str, method: str, url: str, path: tuple[str, ...],
                    snippet_key: str, k: int, timeout_s: float, with_detail: bool = False,
                    **request) -> list[SearchResult]:
    """One search API call: the result objects at `path` in its JSON answer,
    as SearchResults.  Any HTTP or JSON failure is a SearchError; the error's
    text is left out for hosted APIs (`with_detail=False`)."""
    try:
        response = httpx.request(method, url, timeout=timeout_s, **request)
        response.raise_for_status()
        found = response.json()
        for key in path:
            found = found.get(key, {})
    except (httpx.HTTPError, ValueError) as err:
        detail = f": {err}" if with_detail else ""
        raise SearchError(f"{backend}: {type(err).__name__}{detail}") from None
    return [SearchResult(r["url"], r.get("title", ""), r.get(snippet_key, ""))
            for r in found or [] if r.get("url")][:k]


class SearxngSearch:
    name = "searxng"

    def __init__(self, base_url: str, timeout_s: float = 15.0):
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s

    def search(self, query: str, k: int) -> list[SearchResult]:
        return request_results(self.name, "GET", f"{self.base_url}/search", ("results",),
                               "content", k, self.timeout_s, with_detail=True,
                               params={"q": query, "format": "json"})


class BraveSearch:
    name = "brave"
    URL = "https://api.search.brave.com/res/v1/web/search"

    def __init__(self, key_env: str, timeout_s: float = 15.0):
        self.key_env, self.timeout_s = key_env, timeout_s

    def search(self, query: str, k: int) -> list[SearchResult]:
        headers = {"X-Subscription-Token": os.environ.get(self.key_env, ""),
                   "Accept": "application/json"}
        return request_results(self.name, "GET", self.URL, ("web", "results"), "description", k,
                               self.timeout_s, params={"q": query, "count": k}, headers=headers)


class TavilySearch:
    name = "tavily"
    URL = "https://api.tavily.com/search"

    def __init__(self, key_env: str, timeout_s: float = 15.0):
        self.key_env, self.timeout_s = key_env, timeout_s

    def search(self, query: str, k: int) -> list[SearchResult]:
        headers = {"Authorization": f"Bearer {os.environ.get(self.key_env, '')}"}
        return request_results(self.name, "POST", self.URL, ("results",), "content", k,
                               self.timeout_s, json={"query": query, "max_results": k},
                               headers=headers)


def make_search(recipe: Recipe, store: Store):
    """The backend the recipe names (None for 'none')."""
    cfg = recipe.search
    if cfg.backend == "local":
        return LocalSearch(recipe.resolve(cfg.local_dir), store)
    if cfg.backend == "searxng":
        return SearxngSearch(cfg.searxng_url)
    if cfg.backend == "brave":
        return BraveSearch(cfg.key_env())
    if cfg.backend == "tavily":
        return TavilySearch(cfg.key_env())
    return None

