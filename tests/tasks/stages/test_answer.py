import json

import pytest
from fakes import ScriptedLLM, route_llm, schema_answers

from sftmill.core.recipe import parse_recipe
from sftmill.core.store import Store
from sftmill.tasks.stages.answer import (
    check_answers,
    citations_valid,
    cited_numbers,
    decide,
    lexical_support,
    reject_reason,
    strip_markers,
    write_answers,
)


def test_cited_numbers_merge_list_and_markers():
    assert cited_numbers("Quarks [2] are confined [3].", [1, 2]) == [1, 2, 3]
    assert cited_numbers("No markers.", []) == []


def test_citation_validity():
    assert citations_valid([1, 2], 2)
    assert not citations_valid([3], 2)
    assert not citations_valid([1], 0)
    assert citations_valid([], 0)


def test_lexical_support():
    passages = ["Gluons carry colour charge and bind quarks."]
    assert lexical_support("Gluons bind quarks [1].", passages) == 1.0
    assert lexical_support("Bananas grow on trees.", passages) == 0.0


def test_strip_markers():
    assert strip_markers("Six flavours exist [1], in three generations [2][3].") == \
        "Six flavours exist, in three generations."




def make_recipe(tmp_path, **answers):
    (tmp_path / "a.txt").write_text("x")
    return parse_recipe({"name": "t", "output_dir": "run", "inputs": [{"path": "a.txt"}],
                         "search": {"backend": "none"}, "domain": {"name": "Physics"},
                         "answers": answers}, tmp_path)


CHECK = {"n_chars": 100, "refusal": False, "citations_valid": True, "cited": True,
         "lexical_support": 0.8, "groundedness": 0.75}


@pytest.mark.parametrize("change, grounded, reason", [
    ({}, True, None),
    ({"n_chars": 5}, True, "too_short"),
    ({"n_chars": 99999}, True, "too_long"),
    ({"refusal": True}, True, "refusal"),
    ({"truncated": True}, True, "truncated"),
    ({"echoes_prompt": True}, True, "echoes_prompt"),
    ({"prompt_similarity": 0.1}, True, "off_topic_answer"),
    ({"prompt_similarity": 0.6}, True, None),
    ({"citations_valid": False}, True, "invalid_citation"),
    ({"cited": False}, True, "no_citations"),
    ({"lexical_support": 0.05}, True, "low_lexical_support"),
    ({"groundedness": 0.25}, True, "not_grounded"),
    ({"groundedness": None}, True, "llm_invalid_output"),
    ({"cited": False, "groundedness": None}, False, None),  # ungrounded answers are flagged, kept
])
def test_reject_reasons(tmp_path, change, grounded, reason):
    assert reject_reason({**CHECK, **change}, grounded, make_recipe(tmp_path)) == reason


def prepared_store(tmp_path):
    """Two kept prompts; only the first has a retrieved passage."""
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    store.insert("documents", [{"doc_id": "d1", "uri": "file:///notes.md", "text": "t"}])
    store.insert("chunks", [{"chunk_id": "c1", "doc_id": "d1", "idx": 0, "char_start": 0,
                             "char_end": 10, "heading": "",
                             "text": "Gluons carry colour charge and bind quarks into hadrons.",
                             "n_tokens": 12}])
    store.insert("prompts", [
        {"prompt_id": "p1", "text": "What do gluons do?", "origin": "generated"},
        {"prompt_id": "p2", "text": "Why are quarks confined by gluons?", "origin": "generated"}])
    store.insert("retrievals", [{"prompt_id": "p1", "rank": 1, "chunk_id": "c1", "similarity": 0.7}])
    return store


@pytest.mark.parametrize("allow", [False, True])
def test_prompt_without_passages_is_dropped_or_flagged_never_grounded(tmp_path, monkeypatch, allow):
    route_llm(monkeypatch, ScriptedLLM(schema_answers))
    recipe = make_recipe(tmp_path, allow_ungrounded=allow)
    store = prepared_store(tmp_path)
    write_answers(store, recipe)
    check_answers(store, recipe)
    decide(store, recipe)
    records = {r["prompt_id"]: r for r in store.query_dicts("SELECT * FROM dataset")}
    assert records["p1"]["grounded"] is True
    if allow:
        assert records["p2"]["grounded"] is False
        assert json.loads(records["p2"]["metadata"])["citations"] == []
    else:
        assert "p2" not in records
        assert store.execute("SELECT item_id, reason FROM rejects WHERE stage = 'answer'") == [
            ("p2", "no_supporting_passage")]


def test_a_cut_off_answer_is_rejected_as_truncated():
    from sftmill.core.text import ends_mid_sentence
    from sftmill.tasks.stages.answer import echoes_prompt

    cut = "There are six flavours of quark, arranged in three generations of increasing mass:"
    assert ends_mid_sentence(cut) and ends_mid_sentence("Quarks bind through gluons and [1]")
    assert ends_mid_sentence("The heaviest quarks are, for example, top and")
    assert not ends_mid_sentence("Quarks come in six flavours [1].")
    assert not ends_mid_sentence("Why? Because the colour field forms a tube [2] [3]")
    assert echoes_prompt("What happens to mesons when they decay? [1]",
                         "What happens to mesons when they decay?")
    assert not echoes_prompt("Mesons decay into lighter hadrons [1].", "What happens to mesons?")


def store_with_prompts(path, n: int):
    """n kept prompts, each with one retrieved passage."""
    store = Store.open(path / "run" / "sftmill.duckdb")
    store.insert("documents", [{"doc_id": "d1", "uri": "file:///notes.md", "text": "t"}])
    store.insert("chunks", [{"chunk_id": f"c{i}", "doc_id": "d1", "idx": i, "char_start": 0,
                             "char_end": 10, "heading": "", "n_tokens": 12,
                             "text": f"Gluons of kind {i} carry colour charge and bind quarks."}
                            for i in range(n)])
    store.insert("prompts", [{"prompt_id": f"p{i}", "text": f"What do gluons of kind {i} do?",
                              "origin": "generated"} for i in range(n)])
    store.insert("retrievals", [{"prompt_id": f"p{i}", "rank": 1, "chunk_id": f"c{i}",
                                 "similarity": 0.7} for i in range(n)])
    return store


def test_answers_are_checked_as_they_arrive_and_the_check_stage_only_decides(tmp_path, monkeypatch):
    from sftmill.tasks.stages import answer as answer_task

    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    monkeypatch.setattr(answer_task.ChecksAhead, "BATCH", 64)  # several batches
    checks, kept = {}, {}
    for ahead in (True, False):
        folder = tmp_path / str(ahead)
        folder.mkdir()
        recipe = make_recipe(folder)
        store = store_with_prompts(folder, 150)
        if not ahead:
            monkeypatch.setattr(answer_task.ChecksAhead, "start", lambda *a, **k: None)
        llm.requests.clear()
        write_answers(store, recipe)
        in_answer_stage = [r.stage for r in llm.requests]
        judged_later = check_answers(store, recipe)
        assert in_answer_stage.count("answer") == 150
        if ahead:  # the judge's calls went out in the answer stage; none is sent again
            assert in_answer_stage.count("answer_checks") > 0 and judged_later == 0
            assert len(llm.requests) == len(in_answer_stage)
        else:
            assert "answer_checks" not in in_answer_stage
            assert judged_later == sum(r.stage == "answer_checks" for r in llm.requests) > 0
        decide(store, recipe)
        checks[ahead] = store.query_dicts("SELECT * FROM answer_checks ORDER BY answer_id")
        kept[ahead] = store.execute("SELECT record_id FROM dataset ORDER BY record_id")
        assert len(checks[ahead]) == store.count("answers") == 150
        Store.close_all()
    assert checks[True] == checks[False] and kept[True] == kept[False] != []


def test_an_unusable_groundedness_answer_is_judged_again_on_the_next_run(tmp_path, monkeypatch):
    broken = {"on": True}

    def flaky(request):
        if request.schema and set(request.schema.get("properties", {})) == {"score", "reason"} \
                and broken["on"]:
            return "no JSON here"
        return schema_answers(request)

    llm = route_llm(monkeypatch, ScriptedLLM(flaky))
    recipe = make_recipe(tmp_path, min_groundedness=0.5)
    store = prepared_store(tmp_path)
    write_answers(store, recipe)
    check_answers(store, recipe)
    decide(store, recipe)
    assert store.execute("SELECT item_id IS NOT NULL, reason FROM rejects WHERE stage = 'answer_checks'") \
        == [(True, "llm_invalid_output")]
    broken["on"] = False
    sent = len(llm.requests)
    assert check_answers(store, recipe) == 1  # the next run asks the judge again
    decide(store, recipe)
    assert len(llm.requests) > sent
    assert store.scalar("SELECT count(*) FROM dataset WHERE prompt_id = 'p1'") == 1
