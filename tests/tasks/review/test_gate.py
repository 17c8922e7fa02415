"""Review gates on a run database: the sample, CSV sheets from several
reviewers, how their verdicts resolve, what the answer stages then see,
and the card's review section."""

import csv
import datetime as dt
import json

import pytest

from sftmill.core.recipe import parse_recipe
from sftmill.core.store import Store
from sftmill.tasks.review.annotations import resolve, review_section
from sftmill.tasks.review.gate import advance, open_gate, pending_gate, sample_size
from sftmill.tasks.review.sheets import apply_sheet, write_sheet


def recipe_for(tmp_path, **review):
    (tmp_path / "in.txt").write_text("x")
    return parse_recipe({"name": "gate", "output_dir": "run", "inputs": [{"path": "in.txt"}],
                         "domain": {"name": "Physics"}, "search": {"backend": "none"},
                         "review": {"gates": ["prompts"], **review}}, tmp_path)


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    store.insert("prompts", [{"prompt_id": f"p{i}", "text": f"Why is quark {i} confined?",
                              "origin": "generated", "parent_id": "", "profile_id": "",
                              "chunk_id": "c", "doc_id": "d", "subdomain": ["Quarks", "Gluons"][i % 2],
                              "task_type": "question", "quality": i / 10} for i in range(10)])
    return store


def fill(path, decisions, reviewer=None):
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update(decisions.get(row["item_id"], {}))
        if reviewer:
            row["reviewer"] = reviewer
    out = path if reviewer is None else path.with_name(f"prompts-{reviewer}.csv")
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def ann(item, reviewer, decision, minute, **more):
    return {"gate": "prompts", "item_id": item, "reviewer": reviewer, "decision": decision,
            "edited_prompt": None, "edited_answer": None, "scales": None, "note": None,
            "source": "t", "annotated_at": dt.datetime(2026, 12, 1, 12, minute), **more}


def test_majority_then_latest_and_agreement():
    resolved = resolve([
        ann("a", "r1", "accept", 1), ann("a", "r2", "reject", 2), ann("a", "r3", "accept", 3),
        ann("b", "r1", "reject", 5), ann("b", "r2", "edit", 4, edited_prompt="Better?"),  # tie: latest
        ann("c", "r1", "edit", 1, edited_prompt="old"), ann("c", "r2", "edit", 2, edited_prompt="new"),
        ann("d", "r1", "accept", 1)])
    decided = {k: v["decision"] for k, v in resolved.decisions.items()}
    assert decided == {"a": "accept", "b": "reject", "c": "edit", "d": "accept"}
    assert resolved.decisions["c"]["edited_prompt"] == "new"  # the latest edit's text
    assert resolved.multi_reviewed == 3 and resolved.unanimous == 1
    assert resolved.pairwise == pytest.approx(2 / 5)  # a: 1 of 3 pairs, b: 0 of 1, c: 1 of 1


def test_sample_sizes():
    assert [sample_size(200, s) for s in (50, 0.1, "all", 500)] == [50, 20, 200, 200]


def test_csv_gate_waits_for_every_reviewer_then_applies(tmp_path, store):
    recipe = recipe_for(tmp_path, sample=4, reviewers_per_item=2)
    state = open_gate(store, recipe, "prompts")
    sheet = tmp_path / "run" / "review" / "prompts.csv"
    assert state.location == str(sheet) and state.n_items == 4 and state.outcome is None
    items = [r["item_id"] for r in csv.DictReader(sheet.open())]
    assert len(items) == 4 and open_gate(store, recipe, "prompts").n_items == 4  # drawn once
    a, b, c, d = items

    fill(sheet, {a: {"decision": "reject", "note": "off topic"},
                 b: {"decision": "edit", "edited_prompt": "Why are quarks confined in hadrons?"},
                 c: {"decision": "accept"}, d: {"decision": "accept"}}, reviewer="ann")
    state = advance(store, recipe, "prompts", "wait")
    assert (state.n_reviewed, state.n_annotations, state.outcome) == (0, 4, None)
    assert pending_gate(store, recipe).gate == "prompts"
    assert store.count("answerable_prompts") == 10  # nothing applied while the gate is open

    fill(sheet, {a: {"decision": "reject"}, b: {"decision": "accept"},
                 c: {"decision": "accept"}, d: {"decision": "maybe"}}, reviewer="bob")
    state = advance(store, recipe, "prompts", "wait")
    assert (state.n_reviewed, state.outcome) == (3, None)  # d: bob's verdict is unusable

    state = advance(store, recipe, "prompts", "use")
    assert state.outcome == "reviewed" and pending_gate(store, recipe) is None
    answerable = dict(store.execute("SELECT prompt_id, text FROM answerable_prompts"))
    assert a not in answerable and len(answerable) == 9
    # b: one accept, one edit — a tie, so the later sheet's verdict (bob: accept)
    assert answerable[b] == store.scalar("SELECT text FROM prompts WHERE prompt_id = ?", [b])
    assert store.execute("SELECT item_id, reason, detail FROM rejects WHERE stage = 'prompt_review'") \
        == [(a, "rejected_by_reviewer", "off topic")]

    section = "\n".join(review_section(store))
    assert "4 prompts reviewed by 2 reviewer(s) (7 annotations)" in section
    assert "67% unanimous" in section
    assert "kept 1 that reviewers rejected" in section


def test_edited_prompt_is_what_the_answer_stages_read(tmp_path, store):
    recipe = recipe_for(tmp_path, sample="all")
    open_gate(store, recipe, "prompts")
    sheet = tmp_path / "run" / "review" / "prompts.csv"
    fill(sheet, {"p1": {"decision": "edit", "edited_prompt": "Why can no quark be isolated?"},
                 "p2": {"decision": "reject"}})
    assert advance(store, recipe, "prompts", "wait").outcome is None  # 8 still blank
    assert advance(store, recipe, "prompts", "use").outcome == "reviewed"
    texts = dict(store.execute("SELECT prompt_id, text FROM answerable_prompts"))
    assert texts["p1"] == "Why can no quark be isolated?" and "p2" not in texts
    assert store.scalar("SELECT text FROM prompts WHERE prompt_id = 'p1'") == "Why is quark 1 confined?"


def test_skip_applies_nothing(tmp_path, store):
    recipe = recipe_for(tmp_path, sample=3)
    open_gate(store, recipe, "prompts")
    sheet = tmp_path / "run" / "review" / "prompts.csv"
    fill(sheet, {r["item_id"]: {"decision": "reject"} for r in csv.DictReader(sheet.open())})
    assert advance(store, recipe, "prompts", "skip").outcome == "skipped"
    assert store.count("answerable_prompts") == 10
    assert advance(store, recipe, "prompts", "wait").outcome == "skipped"  # reruns pass it


def test_record_sheet_with_reviewers_and_scales(tmp_path, store):
    store.insert("dataset", [{"record_id": f"r{i}", "prompt_id": f"p{i}", "answer_id": f"a{i}",
                              "prompt": f"Q{i}?", "answer": f"A{i}.", "grounded": True,
                              "metadata": json.dumps({})} for i in range(3)])
    sheet = tmp_path / "sheet.csv"
    write_sheet(store, sheet, 3)
    rows = list(csv.DictReader(sheet.open()))
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "reviewer", "style"])
        writer.writeheader()
        for reviewer, decision, style in (("x", "accept", "4"), ("y", "reject", "2"), ("z", "reject", "9")):
            writer.writerow({**rows[0], "decision": decision, "reviewer": reviewer, "style": style})
    report = apply_sheet(store, sheet)
    assert report.skipped == [(4, "style '9' is not 1-5")]
    # one accept, one reject: the tie goes to the latest row (y: reject)
    assert store.execute("SELECT record_id, decision FROM reviews") == [("r0", "reject")]
    section = "\n".join(review_section(store))
    assert "## Human review: records" in section and "| style | 2 | 3.00 | 0 | 1 | 0 | 1 | 0 |" in section
