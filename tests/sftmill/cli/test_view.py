"""`sftmill view` in a real headless Chromium: the served page and the
static file show the records with their conversations and cited passages,
the rejected items with their reasons, filters and search; two runs side by
side; a folder made by `sftmill curate`."""

import os
import re
import subprocess
import sys

import httpx
import pytest
from browser import run_page
from prefect_homes import served_env

from sftmill.core.store import Store


def dom_data(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))


@pytest.fixture(scope="module")
def served(api_run):
    proc = subprocess.Popen([sys.executable, "-m", "sftmill.cli", "view", str(api_run), "--port", "0",
                             "--no-open"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"})
    line = proc.stderr.readline()
    url = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert url, line + (proc.stderr.read() if proc.poll() is not None else "")
    yield url.group(0)
    proc.terminate()
    proc.wait(timeout=10)


def test_the_served_page_answers_filters_and_shows_why_items_were_dropped(served, api_run):
    store = Store.reader(api_run / "sftmill.duckdb")
    reasons = {r[0] for r in store.execute("SELECT reason FROM rejects")}
    chunks = dict(store.execute("SELECT chunk_id, text FROM chunks"))
    n_rejects = store.scalar("SELECT count(*) FROM rejects")
    store.close()

    api = httpx.Client(base_url=served, timeout=10)
    everything = api.get("api/rows").json()
    kept = api.get("api/rows", params={"kind": "kept"}).json()
    rejected = api.get("api/rows", params={"kind": "rejected"}).json()
    assert rejected["total"] == n_rejects and everything["total"] == kept["total"] + rejected["total"]
    assert {r["reason"] for r in rejected["rows"]} <= reasons
    reason = rejected["rows"][0]["reason"]
    same = api.get("api/rows", params={"kind": "rejected", "reason": reason}).json()
    assert 0 < same["total"] <= rejected["total"] and {r["reason"] for r in same["rows"]} == {reason}
    search = api.get("api/rows", params={"q": "gluon"}).json()
    assert 0 < search["total"] < everything["total"]
    assert all("gluon" in (r["prompt"] + r["answer"] + r["detail"] + str(r["messages"])).lower()
               for r in search["rows"])
    scored = api.get("api/rows", params={"kind": "kept", "score": "lexical_support", "min": "0.5"}).json()
    assert all(r["scores"]["lexical_support"] >= 0.5 for r in scored["rows"])
    cited = kept["rows"][0]["metadata"]["citations"][0]["chunk_id"]  # a passage opens with its source
    passage = api.get("api/passage", params={"chunk_id": cited}).json()
    assert passage["text"] == chunks[cited] and passage["uri"].startswith("file://")
    assert api.get("api/rows", params={"offset": 50, "kind": "kept"}).json()["offset"] == 50

    shown = dom_data(run_page(served + "#selftest"))
    assert shown["ready"] == "1" and int(shown["rejected-shown"]) > 0
    assert int(shown["passage-shown"]) > 0  # a citation clicked opened its passage
    assert "search-ms" in shown and "filter-ms" in shown


def test_a_static_file_of_two_runs_side_by_side(api_run, tmp_path):
    page = tmp_path / "view.html"
    done = subprocess.run([sys.executable, "-m", "sftmill.cli", "view", str(api_run), str(api_run),
                           "--html", str(page)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    dom = run_page(page.as_uri() + "#selftest")
    shown = dom_data(dom)
    assert shown["ready"] == "1" and int(shown["passage-shown"]) > 0
    assert dom.count('class="list"') == 2  # one list per run
    assert re.search(r'<table id="figures"><tr><th>figure</th><th>[^<]+</th><th>[^<]+</th>', dom)
    missing = subprocess.run([sys.executable, "-m", "sftmill.cli", "view", str(tmp_path)],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no sftmill.duckdb here" in missing.stderr


def test_a_curate_folder_is_viewed_too(api_run, tmp_path):
    out = tmp_path / "curated"
    done = subprocess.run([sys.executable, "-m", "sftmill.cli", "curate", str(api_run / "dataset.jsonl"),
                           "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, **served_env(tmp_path / "prefect")})
    assert done.returncode == 0, done.stderr[-2000:]
    page = tmp_path / "curated.html"
    assert subprocess.run([sys.executable, "-m", "sftmill.cli", "view", str(out), "--html", str(page)],
                          capture_output=True, text=True).returncode == 0
    dom = run_page(page.as_uri() + "#selftest")
    assert dom_data(dom)["ready"] == "1"
    kept = int(re.search(r'id="counts">(\d+) kept', dom).group(1))
    assert kept == len((out / "dataset.jsonl").read_text().splitlines()) > 0
