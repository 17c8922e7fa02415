"""Web rounds sized by the target: queries only for as many
profiles as the profiles still missing need, at the profiles per query the
earlier rounds gave, spread over the subdomains."""

from collections import Counter

from examples import example_recipe

from sftmill.core.recipe import load_recipe
from sftmill.core.store import Store
from sftmill.tasks.stages.sizing import needed_profiles
from sftmill.tasks.stages.web import profiles_per_query, profiles_to_query

SUBDOMAINS = ["Quarks", "Gluons", "Experiments"]


def store_with_profiles(tmp_path, n: int) -> Store:
    store = Store.open(tmp_path / "run.duckdb")
    store.insert("documents", [{"doc_id": "d", "source_kind": "file", "text": "x"}])
    store.insert("chunks", [{"chunk_id": f"c{i}", "doc_id": "d", "text": "x"} for i in range(n)])
    store.insert("profiles", [{"profile_id": f"p{i}", "chunk_id": f"c{i}",
                               "subdomain": SUBDOMAINS[i % 3] if i < 150 else "Quarks"}
                              for i in range(n)])
    return store


def test_queries_for_the_missing_profiles_only_spread_over_subdomains(tmp_path):
    recipe = load_recipe(example_recipe(tmp_path, sizes={
        "target_prompts": 1000, "prompts_per_profile": 2, "broaden_per_profile": 0,
        "rephrasings_per_prompt": 0, "queries_per_profile": 3}))
    assert needed_profiles(recipe) == 500
    store = store_with_profiles(tmp_path, 400)
    # 100 missing at the prior 1 profile per query, ×1.25 headroom: 125 queries, 42 profiles
    chosen = profiles_to_query(store, recipe, round_no=1)
    assert len(chosen) == 42
    by_subdomain = Counter(p["subdomain"] for p in chosen)
    assert set(by_subdomain) == set(SUBDOMAINS) and max(by_subdomain.values()) - min(by_subdomain.values()) <= 1
    assert profiles_to_query(store, recipe, round_no=1) == chosen  # the same draw on a rerun

    # A round whose 126 queries gave 21 web profiles: 1/6 per query — the next asks for more.
    store.insert("queries", [{"query_id": f"q{i}", "profile_id": chosen[i // 3]["profile_id"],
                              "query": f"q{i}", "round": 1} for i in range(126)])
    store.insert("documents", [{"doc_id": "w", "source_kind": "web", "text": "y"}])
    store.insert("chunks", [{"chunk_id": f"w{i}", "doc_id": "w", "text": "y"} for i in range(21)])
    store.insert("profiles", [{"profile_id": f"w{i}", "chunk_id": f"w{i}", "subdomain": "Gluons"}
                              for i in range(21)])
    assert profiles_per_query(store, round_no=2) == 21 / 126
    # 79 missing / (1/6) × 1.25 = 593 queries → 198 profiles, but only 379 are without queries
    assert len(profiles_to_query(store, recipe, round_no=2)) == 198


def test_no_query_when_the_target_has_its_profiles(tmp_path):
    recipe = load_recipe(example_recipe(tmp_path, sizes={"target_prompts": 20}))
    store = store_with_profiles(tmp_path, needed_profiles(recipe))
    assert profiles_to_query(store, recipe, round_no=1) == []
