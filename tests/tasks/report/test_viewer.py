"""The viewer's rows and filters (the page itself is tested in Chromium:
tests/sftmill/cli/test_view.py)."""

import json

from sftmill.core.store import Store
from sftmill.tasks.report.viewer import kept_row, load_run, matches, searchable, select


def row(kind="kept", **kw):
    base = {"kind": kind, "id": "x", "stage": "kept", "reason": "kept", "detail": "", "prompt": "",
            "answer": "", "messages": [], "subdomain": None, "task_type": None, "persona": None,
            "difficulty": None, "origin": None, "scores": {}, "review": None, "metadata": {}}
    return {**base, **kw}


def test_filters_search_facets_and_score_ranges():
    rows = [row(id="a", prompt="Why do gluons bind?", subdomain="QCD", scores={"groundedness": 0.9}),
            row(id="b", prompt="What is a quark?", subdomain="Quarks", scores={"groundedness": 0.4}),
            row("rejected", id="c", stage="dedup", reason="near_duplicate", detail="cosine 0.95 to a",
                prompt="Why do gluons bind quarks?")]
    searchable(rows)
    ids = lambda f: [r["id"] for r in rows if matches(r, f)]  # noqa: E731
    assert ids({"q": "GLUON"}) == ["a", "c"] and ids({"q": "cosine"}) == ["c"]
    assert ids({"kind": "kept"}) == ["a", "b"] and ids({"kind": "rejected", "reason": "near_duplicate"}) == ["c"]
    assert ids({"subdomain": "QCD"}) == ["a"]
    assert ids({"score": "groundedness", "min": "0.5"}) == ["a"]
    assert ids({"score": "groundedness", "max": "0.5"}) == ["b"]  # a row without the score is out
    page = select(rows, {"kind": "all"}, offset=1, limit=1)
    assert page["total"] == 3 and [r["id"] for r in page["rows"]] == ["b"] and "_text" not in page["rows"][0]


def test_a_generator_record_and_a_conversation_become_rows():
    evol = kept_row({"record_id": "r1", "prompt": "Explain spin.", "answer": "Spin is …",
                     "metadata": json.dumps({"generator": "evol-instruct", "round": 2}), "turns": None})
    assert evol["origin"] == "evol-instruct" and evol["subdomain"] is None
    assert [m["role"] for m in evol["messages"]] == ["user", "assistant"]
    turns = [{"user": "And gluons?", "assistant": "They carry colour.", "reasoning": "think"}]
    conv = kept_row({"record_id": "r2", "prompt": "Why?", "answer": "Because.", "reasoning": None,
                     "turns": json.dumps(turns), "metadata": json.dumps({
                         "record": {"task_type": "question", "persona": "a student", "difficulty": "recall"},
                         "profile": {"subdomain": "QCD"}, "scores": {"groundedness": 0.75, "note": "x"},
                         "review": {"decision": "edit"}})})
    assert len(conv["messages"]) == 4 and conv["messages"][3]["reasoning_content"] == "think"
    assert (conv["subdomain"], conv["persona"], conv["difficulty"], conv["review"]) == \
        ("QCD", "a student", "recall", "edit")
    assert conv["scores"] == {"groundedness": 0.75}


def test_a_rejected_item_carries_its_text_from_the_table_its_id_belongs_to(tmp_path):
    store = Store.open(tmp_path / "sftmill.duckdb")
    store.insert("candidate_prompts", [{"prompt_id": "p1", "text": "What is colour charge?"}])
    store.reject("prompt_filter", "p1", "vague_prompt", "no content word")
    store.reject("answer_checks", "zz", "truncated", "cut off")  # an ID no table holds
    Store.close_all()
    view = load_run(tmp_path)
    rejected = {r["id"]: r for r in view.rows if r["kind"] == "rejected"}
    assert rejected["p1"]["prompt"] == "What is colour charge?" and rejected["p1"]["reason"] == "vague_prompt"
    assert rejected["zz"]["prompt"] == "" and rejected["zz"]["detail"] == "cut off"
    assert view.summary["kept"] == 0 and view.summary["rejected"] == 2
    assert view.summary["facets"]["reason"] == ["truncated", "vague_prompt"]


def test_a_dropped_answer_shows_its_prompt_and_itself(tmp_path):
    store = Store.open(tmp_path / "sftmill.duckdb")
    store.insert("candidate_prompts", [{"prompt_id": "p1", "text": "Why are quarks confined?"}])
    store.insert("answers", [{"answer_id": "a1", "prompt_id": "p1", "text": "[1] Copied passage text."}])
    store.reject("answer_checks", "a1", "copies_passage", "0.95 of its words in 5-word runs")
    Store.close_all()
    (dropped,) = [r for r in load_run(tmp_path).rows if r["kind"] == "rejected"]
    assert (dropped["prompt"], dropped["answer"]) == ("Why are quarks confined?", "[1] Copied passage text.")
