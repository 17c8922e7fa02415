import pytest
from webserver import GOOD, TinyWeb

from sftmill.tasks.sources.fetch import FetchConfig, Fetcher


@pytest.fixture(scope="module")
def web():
    server = TinyWeb(slow_s=3.0, big_bytes=200_000)
    yield server
    server.close()


def fetch(web, paths, **config):
    cfg = FetchConfig(allow_private=True, total_timeout_s=1.0, read_timeout_s=1.0,
                      max_bytes=50_000, per_host_delay_s=0.0, per_host_concurrency=4, **config)
    return {p: f for p, f in zip(paths, Fetcher(cfg).fetch_many([web.url(p) for p in paths]))}


def test_each_bad_page_is_skipped_with_its_reason(web):
    results = fetch(web, list(GOOD) + ["/slow", "/big", "/loop-a", "/image.png", "/private/notes",
                                       "/missing"])
    reasons = {p: (f.ok, f.reason) for p, f in results.items()}
    assert reasons == {
        "/quark-colour": (True, ""), "/gluon-jets": (True, ""),
        "/slow": (False, "fetch_timeout"), "/big": (False, "too_large"),
        "/loop-a": (False, "redirect_loop"), "/image.png": (False, "not_html"),
        "/private/notes": (False, "robots_disallowed"), "/missing": (False, "http_error"),
    }
    good = results["/quark-colour"]
    assert "colour charges" in good.text and "menu" not in good.text
    assert good.title == "Quark colour charge"


def test_loopback_is_refused_unless_allowed(web):
    cfg = FetchConfig(allow_private=False)
    (result,) = Fetcher(cfg).fetch_many([web.url("/quark-colour")])
    assert (result.ok, result.reason) == (False, "blocked_address")


def test_redirect_limit(web):
    # /chain/0 → /chain/1 → … → /chain/5 (a page): 5 redirects.
    assert fetch(web, ["/chain/0"], max_redirects=5)["/chain/0"].ok
    assert fetch(web, ["/chain/0"], max_redirects=4)["/chain/0"].reason == "too_many_redirects"


def test_robots_can_be_ignored_when_the_recipe_says_so(web):
    result = fetch(web, ["/private/notes"], respect_robots=False)["/private/notes"]
    assert result.ok


@pytest.mark.parametrize("url", ["ftp://example.org/x", "not a url"])
def test_bad_urls(url):
    (result,) = Fetcher(FetchConfig(allow_private=True)).fetch_many([url])
    assert result.reason == "bad_url"
