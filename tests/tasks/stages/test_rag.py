"""Extended answer search sized by need: queries only for prompts
the run's chunks support weakly."""

from examples import example_recipe
from fakes import ScriptedLLM, route_llm, schema_answers

from sftmill.core.recipe import load_recipe
from sftmill.core.store import Store
from sftmill.tasks.stages.rag import extended_search_into, weakly_supported

CHUNK = "Gluons carry the colour charge that binds quarks inside protons and neutrons."


def fill(store: Store) -> None:
    store.insert("chunks", [{"chunk_id": "c1", "doc_id": "d", "text": CHUNK}])
    store.insert("prompts", [
        {"prompt_id": "p1", "text": "What binds quarks inside protons and neutrons?"},
        {"prompt_id": "p2", "text": "How long should sourdough bread rise before baking?"}])


def test_only_weakly_supported_prompts_get_queries(tmp_path, monkeypatch):
    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    recipe = load_recipe(example_recipe(tmp_path, answers={"queries_per_prompt": 2}))
    store = Store.open(recipe.db_path)
    fill(store)
    prompts = store.execute("SELECT prompt_id, text FROM prompts ORDER BY prompt_id")
    assert [p for p, _ in weakly_supported(store, recipe, prompts)] == ["p2"]
    written, _added, note = extended_search_into(store, recipe)
    assert written == 2 and len(llm.requests) == 1  # one call, for the bread prompt
    assert "1 of 2 new prompts below answers.search_below 0.5: 2 queries" in note
    assert {r for r, in store.execute("SELECT DISTINCT prompt_id FROM answer_queries")} == {"p2"}


def test_search_below_one_searches_every_prompt_and_none_searches_nothing(tmp_path, monkeypatch):
    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    recipe = load_recipe(example_recipe(tmp_path / "a", answers={"queries_per_prompt": 1,
                                                                 "search_below": 1}))
    store = Store.open(recipe.db_path)
    fill(store)
    assert extended_search_into(store, recipe)[0] == 2
    quiet = load_recipe(example_recipe(tmp_path / "b", answers={"queries_per_prompt": 1},
                                       search={"backend": "none"}))
    fill(Store.open(quiet.db_path))
    asked = len(llm.requests)
    assert extended_search_into(Store.open(quiet.db_path), quiet)[0] == 0
    assert len(llm.requests) == asked  # no queries written that nobody would search
