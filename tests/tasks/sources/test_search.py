from pathlib import Path

import pytest
from webserver import GOOD, TinyWeb

from sftmill.core.store import Store
from sftmill.tasks.sources.search import LocalSearch, SearchError, SearxngSearch, terms

EXAMPLE_WEB = Path(__file__).resolve().parents[3] / "data" / "example" / "web"


@pytest.fixture
def local(tmp_path):
    return LocalSearch(EXAMPLE_WEB, Store.open(tmp_path / "run.duckdb"))


@pytest.mark.parametrize("query, best", [
    ("top quark discovery at the Tevatron", "top-quark.html"),
    ("lattice grid Monte Carlo", "lattice-qcd.html"),
    ("tetraquark pentaquark", "hadrons.html"),
    ("football match report", "football.html"),
])
def test_bm25_ranks_the_matching_page_first(local, query, best):
    assert Path(local.search(query, 3)[0].url).name == best


def test_query_of_stopwords_only_finds_nothing(local):
    assert local.search("what is the", 3) == []


def test_index_is_built_once(tmp_path):
    store = Store.open(tmp_path / "run.duckdb")
    LocalSearch(EXAMPLE_WEB, store)
    n_terms = store.count("search_terms")
    LocalSearch(EXAMPLE_WEB, store)
    assert store.count("search_terms") == n_terms > 0


def test_terms_drop_stopwords_and_case():
    assert terms("What ARE the Quarks' colours?") == ["quarks", "colours"]


def test_searxng_client_reads_the_json_api():
    web = TinyWeb()
    try:
        results = SearxngSearch(web.url("")).search("quarks", 2)
        assert [r.url for r in results] == [web.url(p) for p in list(GOOD)[:2]]
        with pytest.raises(SearchError):
            SearxngSearch(web.url("/nowhere")).search("quarks", 2)
    finally:
        web.close()


def test_hosted_clients_read_their_result_paths(monkeypatch):
    import httpx

    from sftmill.tasks.sources.search import BraveSearch, TavilySearch

    answers = {"brave": {"web": {"results": [{"url": "https://a.org", "title": "A",
                                              "description": "about a"}]}},
               "tavily": {"results": [{"url": "https://b.org", "title": "B", "content": "about b"}]}}
    sent = []

    def fake(method, url, **kwargs):
        sent.append((method, kwargs["headers"]))
        key = "brave" if "brave" in url else "tavily"
        return httpx.Response(200, json=answers[key], request=httpx.Request(method, url))

    monkeypatch.setattr(httpx, "request", fake)
    monkeypatch.setenv("K", "secret")
    (brave,) = BraveSearch("K").search("q", 3)
    (tavily,) = TavilySearch("K").search("q", 3)
    assert (brave.url, brave.snippet, tavily.url, tavily.snippet) == (
        "https://a.org", "about a", "https://b.org", "about b")
    assert sent[0] == ("GET", {"X-Subscription-Token": "secret", "Accept": "application/json"})
    assert sent[1] == ("POST", {"Authorization": "Bearer secret"})
