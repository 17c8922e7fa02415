"""The profile stage: subdomain orders embedded a wave at a time while the
waves before are in flight, every order's calls in one batch, each call's
schema offering the subdomains in its chunk's order."""

import threading

import pytest
from fakes import ScriptedLLM, route_llm, schema_answers

import sftmill.tasks.stages.profile as profile_task
from sftmill.core.recipe import parse_recipe
from sftmill.core.store import Store

SUBDOMAINS = [{"name": "Quarks", "description": "quark flavours, hadrons, confinement"},
              {"name": "Gluons", "description": "gluon exchange, colour charge, QCD"},
              {"name": "Bread", "description": "sourdough, flour, baking"}]
TEXTS = ["Quarks come in six flavours and bind into hadrons.",
         "Gluons carry colour charge and bind quarks through QCD.",
         "Sourdough needs flour, water and a long rise before baking.",
         "Protons are hadrons made of two up quarks and a down quark.",
         "Colour confinement keeps gluons and quarks inside hadrons.",
         "Knead the dough, let it rise, then bake the bread."]


@pytest.mark.parametrize("by", ["llm", "embedding"])
def test_orders_are_embedded_in_waves_beside_the_calls(tmp_path, monkeypatch, by):
    (tmp_path / "a.txt").write_text("x")
    recipe = parse_recipe({"name": "t", "output_dir": "run", "inputs": [{"path": "a.txt"}],
                           "search": {"backend": "none"},
                           "domain": {"name": "Physics", "subdomains": SUBDOMAINS, "subdomain_by": by}},
                          tmp_path)
    store = Store.open(recipe.db_path)
    store.insert("chunks", [{"chunk_id": f"c{i}", "doc_id": "d", "idx": i, "char_start": 0,
                             "char_end": len(t), "heading": "", "text": t, "n_tokens": 12}
                            for i, t in enumerate(TEXTS)])
    events = []
    orders_of = {}
    embed_orders = profile_task.subdomain_orders
    called = threading.Event()

    def orders(store_, recipe_, texts):
        if events:  # a later wave: the first wave's calls are out by now (or never, in one batch)
            called.wait(timeout=10)
        found = embed_orders(store_, recipe_, texts)
        events.append(("embedded", len(texts)))
        orders_of.update(zip(texts, found))
        return found

    def respond(request):
        events.append(("call", None))
        called.set()
        return schema_answers(request)

    monkeypatch.setattr(profile_task, "subdomain_orders", orders)
    monkeypatch.setattr(profile_task, "WAVE", 2)
    llm = route_llm(monkeypatch, ScriptedLLM(respond))

    assert profile_task.profile_chunks(store, recipe, [f"c{i}" for i in range(6)]) == 6
    assert [e for e in events if e[0] == "embedded"] == [("embedded", 2)] * 3
    assert events.index(("call", None)) < events.index(("embedded", 2), 1)  # waves beside the calls
    assert len(llm.requests) == 6 and store.count("profiles") == 6
    for request in llm.requests:
        text = next(t for t in TEXTS if t in request.messages[-1][1])
        offered = request.schema["properties"]["subdomain"]["enum"]
        expected = list(orders_of[text][:1] if by == "embedding" else orders_of[text])
        assert offered == expected, (text, offered)
    assert orders_of[TEXTS[2]][0] == "Bread" and orders_of[TEXTS[0]][0] == "Quarks"
    for chunk_id, subdomain in store.execute("SELECT chunk_id, subdomain FROM profiles"):
        assert subdomain in {s["name"] for s in SUBDOMAINS}
    # Nothing left to profile: no call, no batch.
    assert profile_task.profile_chunks(store, recipe, [f"c{i}" for i in range(6)]) == 0
    assert len(llm.requests) == 6


def test_only_the_chunks_the_target_needs_are_profiled_spread_over_the_subdomains(tmp_path):
    """Twelve relevant chunks, three subdomains at 50/25/25 %, a target that
    needs four profiles (five with the margin): five chosen, no subdomain
    left out, and what is profiled already is kept."""
    (tmp_path / "a.txt").write_text("x")
    subdomains = [{**SUBDOMAINS[0], "share": 0.5}, {**SUBDOMAINS[1], "share": 0.25},
                  {**SUBDOMAINS[2], "share": 0.25}]
    recipe = parse_recipe({"name": "t", "output_dir": "run", "inputs": [{"path": "a.txt"}],
                           "search": {"backend": "none"}, "domain": {"name": "Physics",
                                                                      "subdomains": subdomains},
                           "sizes": {"target_prompts": 16, "prompts_per_profile": 4,
                                     "profile_margin": 1.25}}, tmp_path)
    store = Store.open(recipe.db_path)
    texts = TEXTS * 2  # four chunks about each subdomain
    store.insert("chunks", [{"chunk_id": f"c{i:02d}", "doc_id": f"d{i % 3}", "idx": i, "char_start": 0,
                             "char_end": len(t), "heading": "", "text": t, "n_tokens": 12}
                            for i, t in enumerate(texts)])
    kept = [f"c{i:02d}" for i in range(12)]
    chosen = profile_task.choose_chunks(store, recipe, kept)
    assert len(chosen) == 5
    nearest = {c: o[0] for c, o in zip(kept, profile_task.subdomain_orders(store, recipe, texts))}
    counts = {s["name"]: sum(nearest[c] == s["name"] for c in chosen) for s in subdomains}
    assert counts == {"Quarks": 3, "Gluons": 1, "Bread": 1}
    store.insert("profiles", [{"profile_id": "p", "chunk_id": "c02", "subdomain": "Bread"}])
    again = profile_task.choose_chunks(store, recipe, kept)
    assert "c02" in again and len(again) == 5
