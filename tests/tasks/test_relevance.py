import pytest


@pytest.mark.real_model
@pytest.mark.parametrize("served", [True, False])
def test_relevance_embeds_its_chunks_beside_a_served_judge(tmp_path, monkeypatch, served):
    """The profile stage orders subdomains by the chunks' vectors and retrieve
    embeds every chunk: against a served judge they are embedded while it is
    asked, and the profile stage then embeds nothing new."""
    from examples import example_recipe
    from fakes import ScriptedLLM, route_llm, schema_answers
    from sftmill.config import load_recipe
    from sftmill.store import Store
    from sftmill.tasks.profile import subdomain_orders
    from sftmill.tasks.relevance import score_chunks

    judge = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    judge.max_concurrency = 4 if served else 1  # 1: as the in-process model, which takes the CPU
    recipe = load_recipe(example_recipe(tmp_path, embedding={"model": "static:all-MiniLM-L6-v2"}))
    store = Store.open(recipe.db_path)
    texts = [f"Note {i}: quarks are bound by gluons into hadrons, case {i}." for i in range(12)]
    store.insert("chunks", [{"chunk_id": f"c{i}", "doc_id": "d", "text": t} for i, t in enumerate(texts)])
    assert score_chunks(store, recipe) == 12
    assert store.count("embeddings") == (12 if served else 0)
    subdomain_orders(store, recipe, texts)
    labels = len(recipe.domain.subdomains)
    assert store.count("embeddings") == 12 + labels  # the profile stage added only its labels
