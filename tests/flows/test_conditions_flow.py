"""Personas and difficulty through the pipeline: each record carries the
persona it was written as and its level (the judge's, and the one asked
for); the card and quality.json show their spread against the targets; the
answer is written for the persona when `answer_register` is on.  And both
with the real embedded model."""

import json

from examples import example_recipe, params
from fakes import ScriptedLLM, route_llm, schema_answers

from sftmill.core.recipe import load_recipe
from sftmill.core.store import Store

LEVELS = {"recall": 0.4, "explain": 0.4, "multi_step": 0.2}


def test_records_carry_persona_and_difficulty_and_the_card_shows_their_spread(
        prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.pipeline import pipeline

    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    recipe = example_recipe(tmp_path, personas={"generate": 3, "answer_register": True},
                            difficulty={"levels": LEVELS, "evolve_share": 0.3},
                            search={"backend": "none"})
    pipeline(params(recipe))
    run = tmp_path / "run"
    store = Store.open(run / "sftmill.duckdb")
    personas = dict(store.execute("SELECT persona, share FROM personas"))
    assert len(personas) == 3 and all(abs(s - 1 / 3) < 1e-9 for s in personas.values())

    generated = [r for r in llm.requests if r.stage == "generate"]
    told = [m for r in generated for _role, m in r.messages]
    assert all(any(p in m for m in told) for p in personas)  # each persona was asked for
    assert any("several steps of reasoning" in m for m in told)

    records = [json.loads(line) for line in (run / "dataset.jsonl").read_text().splitlines()]
    assert records
    for record in records:
        meta = record["metadata"]["record"]
        assert meta["persona"] in personas
        assert meta["difficulty_asked"] in LEVELS and meta["difficulty"] in LEVELS
    # a share was rewritten harder (Evol-Instruct in depth), each rewrite asked one level up
    evolved = [r["metadata"]["record"] for r in records if r["metadata"]["record"]["origin"] == "evolved"]
    assert evolved and all(m["difficulty_asked"] in ("explain", "multi_step") for m in evolved)
    assert store.scalar("SELECT count(*) FROM rejects WHERE stage = 'evolve' AND reason = 'evolved'") \
        == store.scalar("SELECT count(*) FROM candidate_prompts WHERE origin = 'evolved'") > 0
    assert any(r.stage.startswith("evolve_") for r in llm.requests)
    judged = dict(store.execute("SELECT prompt_id, level FROM prompt_difficulty"))
    assert {r["metadata"]["record"]["difficulty"] for r in records} <= set(judged.values())
    answers = [r for r in llm.requests if r.stage == "answer"]
    assert answers and all(any(p in r.messages[0][1] for p in personas) for r in answers)

    quality = json.loads((run / "quality.json").read_text())
    assert quality["targets"]["difficulty"] == LEVELS
    assert {s["group"] for s in quality["shares"]["persona"]} == set(personas)
    assert {"persona_gap", "difficulty_gap"} <= {f["key"] for f in quality["figures"]}
    card = (run / "card.md").read_text()
    assert "| difficulty | records | actual | target |" in card and "| multi_step |" in card
    assert "| persona | records | actual | target |" in card


def test_personas_and_difficulty_with_the_real_embedded_model(tmp_path):
    """SmolLM2-135M drafts personas from the use cases and levels prompts:
    what it writes is used or topped up, never a crash."""
    from sftmill.tasks.stages.conditions import choose_personas, judge_difficulty

    recipe = load_recipe(example_recipe(tmp_path, personas={"generate": 2},
                                        difficulty={"levels": LEVELS}))
    store = Store.open(tmp_path / "run.duckdb")
    personas = choose_personas(store, recipe)
    assert len(personas) == 2 and all(len(p.split()) >= 2 for p in personas)
    prompts = [("p1", "What is the charge of an up quark?"),
               ("p2", "Why can quarks not be isolated?"),
               ("p3", "How would the proton's mass change if gluons had no energy?")]
    asked = judge_difficulty(store, recipe, prompts)
    assert asked == 3
    levels = dict(store.execute("SELECT prompt_id, level FROM prompt_difficulty"))
    assert set(levels.values()) <= set(LEVELS)
    missing = set(dict(prompts)) - set(levels)  # an unusable answer is a reject with its reason
    assert missing == {r[0] for r in store.execute(
        "SELECT item_id FROM rejects WHERE stage = 'difficulty'")}
