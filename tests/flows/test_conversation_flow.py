"""Grounded multi-turn conversations through the pipeline: follow-ups with
their own retrieval, grounded answers and checks; conversations exported up
to their last turn that passed, in every format; the card and the quality
report show turns, kinds and drops; and the real embedded model."""

import json

import pytest
from examples import example_recipe, params
from fakes import ScriptedLLM, route_llm, schema_answers

from sftmill.core.recipe import load_recipe
from sftmill.core.store import Store


@pytest.fixture(scope="module")
def conversations_run(prefect_harness, tmp_path_factory):
    from _pytest.monkeypatch import MonkeyPatch

    from sftmill.flows.pipeline import pipeline

    tmp = tmp_path_factory.mktemp("conversations")
    patch = MonkeyPatch()
    try:
        llm = route_llm(patch, ScriptedLLM(schema_answers))
        recipe = example_recipe(tmp, conversations={"share": 0.5, "turns": [2, 3]},
                                search={"backend": "none"}, answers={"min_groundedness": 0.5})
        pipeline(params(recipe))
    finally:
        patch.undo()
    return tmp / "run", llm


def test_conversations_are_exported_with_every_turn_cited(conversations_run):
    run, _llm = conversations_run
    store = Store.open(run / "sftmill.duckdb")
    chunks = {c for (c,) in store.execute("SELECT chunk_id FROM chunks")}
    records = [json.loads(line) for line in (run / "dataset.jsonl").read_text().splitlines()]
    multi = [r for r in records if len(r["messages"]) > 2]
    assert multi and len(multi) < len(records)  # about half
    for record in multi:
        messages, conv = record["messages"], record["metadata"]["conversation"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * conv["turns"]
        assert 2 <= conv["turns"] <= 3 and len(conv["follow_ups"]) == conv["turns"] - 1
        for follow_up in conv["follow_ups"]:
            assert follow_up["citations"] and {c["chunk_id"] for c in follow_up["citations"]} <= chunks
            assert follow_up["kind"] in ("deeper", "example", "challenge", "neighbour")
        assert all("[1]" not in m["content"] for m in messages)  # markers removed, as in single turns
    kept = store.query_dicts("SELECT * FROM turns WHERE kept")
    assert len(kept) == sum(r["metadata"]["conversation"]["turns"] - 1 for r in multi)


def test_a_follow_up_gets_its_own_retrieval_and_the_conversation_so_far(conversations_run):
    _run, llm = conversations_run
    answers = [r for r in llm.requests if r.stage == "follow_up_answer"]
    assert answers
    text = answers[0].messages[-1][1]
    assert text.index("Earlier in this conversation:") < text.index("Background:") < text.index(
        "Question: ") and "in a real experiment" in text.split("Question: ")[1]
    assert {r.stage for r in llm.requests} >= {"follow_up", "follow_up_answer", "follow_up_checks"}


def test_the_card_and_quality_report_show_turns_kinds_and_drops(conversations_run):
    run, _llm = conversations_run
    card = (run / "card.md").read_text()
    assert "## Conversations" in card and "| turn | asked | kept |" in card
    quality = json.loads((run / "quality.json").read_text())
    figures = {f["key"]: f for f in quality["figures"]}
    assert figures["turns_per_conversation"]["value"] >= 2
    assert "follow_up_kind" in quality["shares"]


def test_sharegpt_and_alpaca_hold_the_conversation(conversations_run, tmp_path):
    from sftmill.tasks.report.export import export_jsonl

    run, _llm = conversations_run
    store = Store.open(run / "sftmill.duckdb")
    export_jsonl(store, "sharegpt", tmp_path / "s.jsonl")
    export_jsonl(store, "alpaca", tmp_path / "a.jsonl")
    share = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    alpaca = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    for s, a in zip(share, alpaca):
        turns = s["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert a["instruction"] == turns[-2]["value"] and a["output"] == turns[-1]["value"]
        assert len(a.get("history", [])) == len(turns) // 2 - 1


def test_a_failed_turn_ends_its_conversation_with_its_reason(prefect_harness, tmp_path, monkeypatch):
    """Every follow-up answer contradicts an earlier one: each conversation
    ends after its first turn, dropped as contradicts_earlier."""
    from sftmill.flows.pipeline import pipeline

    def contradicting(request):
        if request.schema and set(request.schema["properties"]) == {"consistent", "reason"}:
            return {"consistent": False, "reason": "it says the opposite"}
        return schema_answers(request)

    route_llm(monkeypatch, ScriptedLLM(contradicting))
    recipe = example_recipe(tmp_path, conversations={"share": 1.0, "turns": [3, 3],
                                                     "consistency_judge": True},
                            search={"backend": "none"})
    pipeline(params(recipe))
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    assert store.count("dataset") > 0
    turns = store.query_dicts("SELECT turn, kept, reason FROM turns")
    assert {(t["turn"], t["kept"]) for t in turns} == {(2, False)}  # none reached turn 3
    assert "contradicts_earlier" in {t["reason"] for t in turns}
    assert store.scalar("SELECT count(*) FROM dataset WHERE turns IS NOT NULL") == 0
    assert store.scalar("SELECT count(*) FROM rejects WHERE stage = 'conversation'") == store.count("turns")


def test_conversations_with_the_real_embedded_model(prefect_harness, tmp_path, monkeypatch):
    """A scripted run's records, then one follow-up turn on two of them with
    SmolLM2-135M: whatever it writes is kept with its citations or dropped
    with a reason."""
    from sftmill.flows.pipeline import pipeline
    from sftmill.tasks.stages.conversation import extend_conversations

    recipe_path = example_recipe(tmp_path, search={"backend": "none"})
    with monkeypatch.context() as patch:
        route_llm(patch, ScriptedLLM(schema_answers))
        pipeline(params(recipe_path))
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    store.execute("DELETE FROM dataset WHERE record_id NOT IN "
                  "(SELECT record_id FROM dataset ORDER BY record_id LIMIT 2)")
    recipe = load_recipe(example_recipe(tmp_path / "again", conversations={"share": 1.0, "turns": [2, 2]},
                                        output_dir=str(tmp_path / "run")))
    made, kept = extend_conversations(store, recipe)
    assert made == 2 and store.count("turns") == 2
    for turn in store.query_dicts("SELECT * FROM turns"):
        assert turn["kept"] or turn["reason"]
        if turn["kept"]:
            assert turn["cited_chunk_ids"]
    assert kept == store.scalar("SELECT count(*) FROM turns WHERE kept")
    assert store.scalar("SELECT count(*) FROM llm_calls WHERE stage = 'follow_up' "
                        "AND model LIKE 'llama.cpp:%'") == 2
