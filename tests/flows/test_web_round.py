"""Search → fetch → extract → chunk → profile against pages served on
127.0.0.1 through a fake SearxNG: bad pages are skipped with their reasons
and the run completes."""

import textwrap

import pytest
from examples import params
from fakes import ScriptedLLM, route_llm, schema_answers
from webserver import TinyWeb

from sftmill.core.store import Store


@pytest.fixture
def web():
    server = TinyWeb(slow_s=4.0, big_bytes=300_000)
    yield server
    server.close()


def test_web_round_with_bad_pages(prefect_harness, tmp_path, monkeypatch, web):
    from sftmill.flows.prompt_flow import prompt_flow

    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    (tmp_path / "notes.md").write_text(
        "# Quarks\n\nQuarks are elementary particles that combine into hadrons such as "
        "protons and neutrons, held together by gluons.\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: web-round
        output_dir: run
        domain: {{name: Particle physics}}
        inputs: [{{path: notes.md}}]
        sizes: {{target_prompts: 100, queries_per_profile: 1, max_rounds: 1}}
        limits: {{max_page_bytes: 100000}}
        search:
          backend: searxng
          searxng_url: {web.url("")}
          results_per_query: 10
          allow_private_addresses: true
          fetch_timeout_s: 1.5
          per_host_delay_s: 0
          per_host_concurrency: 8
    """))
    results = prompt_flow(params(recipe))
    assert results[-1].stage == "dedup"
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    skipped = {r["detail"].split(":", 2)[2].split("/", 1)[1].split(":")[0]: r["reason"]
               for r in store.query_dicts("SELECT * FROM rejects WHERE stage = 'search_fetch'")}
    assert skipped == {"slow": "fetch_timeout", "big": "too_large", "loop-a": "redirect_loop",
                       "image.png": "not_html", "private/notes": "robots_disallowed"}
    web_docs = store.query_dicts("SELECT * FROM documents WHERE source_kind = 'web'")
    assert sorted(d["title"] for d in web_docs) == ["Gluon jets at PETRA", "Quark colour charge"]
    # the new documents went through chunk → relevance → profile
    profiled = store.scalar(
        "SELECT count(*) FROM profiles p JOIN chunks c USING (chunk_id) "
        "JOIN documents d USING (doc_id) WHERE d.source_kind = 'web'")
    assert profiled >= 2
    assert "/private/notes" not in web.hits  # robots.txt was respected
    assert llm.requests  # the LLM stages ran
