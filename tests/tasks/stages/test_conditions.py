"""Personas and difficulty levels: spread to their target shares, drafted
personas, the judge's levels, and the recipe's one-line errors."""

from collections import Counter

import pytest
from fakes import ScriptedLLM, route_llm, schema_answers

from sftmill.core.errors import RecipeError
from sftmill.core.recipe import parse_recipe
from sftmill.core.store import Store
from sftmill.tasks.stages.conditions import (
    assign,
    choose_personas,
    condition_targets,
    from_use_case,
    judge_difficulty,
    spread,
)


def recipe(tmp_path, **sections):
    (tmp_path / "a.txt").write_text("x")
    return parse_recipe({"name": "t", "output_dir": "o", "inputs": [{"path": "a.txt"}],
                         "search": {"backend": "none"},
                         "domain": {"name": "Physics", "use_cases": ["Preparing for an exam"]},
                         **sections}, tmp_path)


def test_every_prefix_of_the_spread_keeps_close_to_the_shares():
    shares = {"recall": 0.5, "explain": 0.3, "multi_step": 0.2}
    labels = spread(shares, 100)
    assert Counter(labels) == {"recall": 50, "explain": 30, "multi_step": 20}
    for n in range(1, 101):
        seen = Counter(labels[:n])
        assert all(abs(seen[k] - v * n) < 1 for k, v in shares.items())
    assert spread({}, 5) == []


def test_personas_and_levels_are_assigned_apart_to_their_shares(tmp_path):
    r = recipe(tmp_path, difficulty={"levels": {"recall": 0.25, "explain": 0.25, "multi_step": 0.5}})
    told = assign(r, {"a student": 0.5, "an engineer": 0.5}, 40)
    assert Counter(p for p, _ in told) == {"a student": 20, "an engineer": 20}
    assert Counter(d for _, d in told) == {"recall": 10, "explain": 10, "multi_step": 20}
    assert len(Counter(told)) == 6  # every persona meets every level
    assert told == assign(r, {"a student": 0.5, "an engineer": 0.5}, 40)  # the seed decides
    assert assign(recipe(tmp_path), {}, 3) == [(None, None)] * 3


def test_given_personas_split_what_their_shares_leave(tmp_path):
    r = recipe(tmp_path, personas=["a student", {"name": "a detector engineer", "share": 0.6}])
    store = Store.open(tmp_path / "run.duckdb")
    assert choose_personas(store, r) == pytest.approx({"a student": 0.4, "a detector engineer": 0.6})
    assert condition_targets(store, r)["persona"] == pytest.approx(
        {"a student": 0.4, "a detector engineer": 0.6})
    assert "difficulty" not in condition_targets(store, r)


def test_drafted_personas_come_from_the_generator_and_are_topped_up_from_use_cases(
        tmp_path, monkeypatch):
    r = recipe(tmp_path, personas={"generate": 3})
    store = Store.open(tmp_path / "run.duckdb")
    replies = iter([{"personas": ["a physics teacher", "a physics teacher.", "teacher"]}])
    route_llm(monkeypatch, ScriptedLLM(lambda request: next(replies)))
    shares = choose_personas(store, r)
    assert list(shares) == ["a physics teacher", "someone preparing for an exam"]
    assert store.execute("SELECT source FROM personas ORDER BY persona") == [
        ("generated",), ("use_case",)]
    assert from_use_case("QCD lattice studies") == "someone QCD lattice studies"


def test_the_judge_levels_each_prompt_once(tmp_path, monkeypatch):
    r = recipe(tmp_path, difficulty={"levels": {"recall": 0.5, "multi_step": 0.5}})
    store = Store.open(tmp_path / "run.duckdb")
    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    prompts = [("p1", "What is a quark?"), ("p2", "Compare quarks and leptons."),
               ("p3", "Why are quarks confined?")]
    assert judge_difficulty(store, r, prompts) == 3
    assert dict(store.execute("SELECT prompt_id, level FROM prompt_difficulty")) == {
        "p1": "recall", "p2": "multi_step", "p3": "explain"}
    calls = len(llm.requests)
    assert judge_difficulty(store, r, prompts) == 0 and len(llm.requests) == calls


@pytest.mark.parametrize("sections, message", [
    ({"difficulty": {"levels": {"recall": 0.5}}}, "difficulty shares add up to 0.5, not 1"),
    ({"difficulty": {"levels": {"hard": 1.0}}}, "hard"),
    ({"personas": {"given": ["a student"], "generate": 2}}, "not both"),
    ({"personas": ["a student", "a student"]}, "listed twice"),
])
def test_a_bad_personas_or_difficulty_section_is_one_line(tmp_path, sections, message):
    with pytest.raises(RecipeError, match=message) as err:
        recipe(tmp_path, **sections)
    assert "\n" not in str(err.value)
