"""`sftmill plan`: expected calls, tokens and cost per LLM stage, before running."""

import math
import subprocess
import sys

import pytest
from examples import example_recipe

from sftmill.core.recipe import load_recipe
from sftmill.tasks.report.plan import plan_recipe, plan_stages


def test_plan_follows_the_sizing_rules_and_prices(tmp_path):
    recipe = load_recipe(example_recipe(
        tmp_path, sizes={"target_prompts": 40, "prompts_per_profile": 4, "broaden_per_profile": 0},
        llm={"generator": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "g"},
             "judge": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "j",
                       "max_tokens": 60}},
        thresholds={"prompt_quality": 0.5, "max_opening_share": 1.0},
        answers={"min_groundedness": 0.6, "queries_per_prompt": 0},
        prices={"g": {"input": 1.0, "output": 2.0}}))
    plans = {p.stage: p for p in plan_stages(recipe, chunks=10_000, chunk_tokens=300, keep_rate=0.5)}
    # 40 prompts / 4 per profile = 10 profiles, ×1.5 margin = 15 relevant chunks;
    # at a keep rate of 0.5 with 1.25 headroom the wave is ceil(15 / 0.5 × 1.25) = 38.
    assert plans["relevance"].calls == 38 and plans["profile"].calls == 15
    assert plans["generate"].calls == 40  # one call per prompt with openings
    assert plans["prompt_filter"].calls == 40 and plans["answer"].calls == 40
    assert plans["answer_checks"].calls == 40 and "rephrase" not in plans
    assert plans["relevance"].cost is None  # no price for the judge's model
    g = plans["answer"]
    assert g.cost == pytest.approx(g.tokens_in / 1e6 * 1.0 + g.tokens_out / 1e6 * 2.0)
    assert g.tokens_in > 40 * 3 * 300  # three passages of 300 tokens each, and the template


def test_plan_command_on_the_example(tmp_path):
    recipe = example_recipe(tmp_path)
    plans, chunks, rates = plan_recipe(load_recipe(recipe))
    assert chunks == 35 and "assumed before any run" in rates
    # 40 profiles needed (160 prompts, 4 each); at the prior 80 % the corpus
    # gives 28, so a web round is planned for the 12 missing: 16 queries (2 per
    # profile: 8 calls), and 18 relevant chunks' worth of pages (12 x the 1.5
    # margin) judged (23 at 80 %) and profiled.
    by_stage = {p.stage: p.calls for p in plans}
    assert by_stage["relevance"] == 35 + 23 and by_stage["web_queries"] == 8
    assert by_stage["profile"] == 28 + 18 and "answer_queries" not in by_stage
    out = subprocess.run([sys.executable, "-m", "sftmill.cli", "plan", str(recipe)],
                         capture_output=True, text=True, timeout=120,
                         env={"COLUMNS": "160", **__import__("os").environ})
    assert out.returncode == 0, out.stderr
    shown = out.stdout + out.stderr  # rich's console may write to either
    assert "relevance" in shown and "total" in shown and "prices:" in shown
    dry = subprocess.run([sys.executable, "-m", "sftmill.cli", "run", "--dry-run", str(recipe)],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "total" in dry.stdout + dry.stderr
    assert not (tmp_path / "run" / "sftmill.duckdb").exists()  # nothing was run


def test_a_batch_endpoint_is_planned_at_the_batch_price(tmp_path):
    server = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "g"}
    recipe = load_recipe(example_recipe(
        tmp_path, llm={"generator": {**server, "batch": True, "batch_min": 20},
                       "judge": {**server, "model": "j"}},
        prices={"g": {"input": 2.0, "output": 8.0, "batch_input": 1.0, "batch_output": 4.0},
                "j": {"input": 2.0, "output": 8.0, "batch_input": 1.0, "batch_output": 4.0}}))
    plans = {p.stage: p for p in plan_stages(recipe, chunks=10_000, chunk_tokens=300)}
    answer, relevance = plans["answer"], plans["relevance"]
    assert answer.batch and answer.calls >= 20
    assert answer.cost == pytest.approx(answer.tokens_in / 1e6 * 1.0 + answer.tokens_out / 1e6 * 4.0)
    assert not relevance.batch  # the judge is online: the online price
    assert relevance.cost == pytest.approx(relevance.tokens_in / 1e6 * 2.0
                                           + relevance.tokens_out / 1e6 * 8.0)


@pytest.mark.parametrize("below, share", [(0.5, 0.3), (1.0, 1.0)])
def test_the_extended_answer_search_is_planned_for_weakly_supported_prompts(tmp_path, below, share):
    recipe = load_recipe(example_recipe(
        tmp_path, answers={"queries_per_prompt": 2, "search_below": below}))
    plans = {p.stage: p for p in plan_stages(recipe, chunks=10_000, chunk_tokens=300)}
    assert plans["answer_queries"].calls == math.ceil(plans["answer"].calls * share)


def test_curation_judges_and_preference_pairs_are_planned_per_record(tmp_path):
    recipe = load_recipe(example_recipe(
        tmp_path, curation={"adherence": {"enabled": True}}, export={"preference_pairs": True}))
    plans = {p.stage: p.calls for p in plan_stages(recipe, chunks=10_000, chunk_tokens=300)}
    records = plans["answer"]
    assert plans["curate_adherence"] == records and "curate_safety" not in plans
    assert plans["negative_answer"] == plans["negative_check"] == records


def test_a_reasoning_generator_is_planned_with_its_traces(tmp_path):
    server = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "g",
              "max_tokens": 2048}
    plain = load_recipe(example_recipe(tmp_path / "plain", llm={"generator": server}))
    thinking = load_recipe(example_recipe(tmp_path / "thinking", llm={"generator": {
        **server, "reasoning": True, "reasoning_tokens": 700}}))
    before, after = ({p.stage: p for p in plan_stages(r, chunks=10_000, chunk_tokens=300)}
                     for r in (plain, thinking))
    for stage in ("answer", "profile", "generate"):  # every generator call thinks first
        assert after[stage].calls == before[stage].calls
        assert after[stage].tokens_out == before[stage].tokens_out + 700 * before[stage].calls
    assert after["relevance"].tokens_out == before["relevance"].tokens_out  # the judge does not


def test_drafted_personas_and_the_difficulty_judge_are_planned(tmp_path):
    recipe = load_recipe(example_recipe(tmp_path, personas={"generate": 4},
                                        difficulty={"levels": {"recall": 0.5, "explain": 0.5}}))
    plans = {p.stage: p for p in plan_stages(recipe, chunks=10_000, chunk_tokens=300)}
    assert plans["personas"].calls == 1
    # the example's generator writes one prompt a call, and its filter keeps every prompt
    assert plans["difficulty"].calls == plans["generate"].calls > 0
    assert "evolve" not in plans
    evolving = load_recipe(example_recipe(tmp_path / "evolve", difficulty={"evolve_share": 0.25}))
    plans = {p.stage: p for p in plan_stages(evolving, chunks=10_000, chunk_tokens=300)}
    assert plans["evolve"].calls == math.ceil(plans["generate"].calls * 0.25)


def test_conversations_are_planned_per_follow_up_turn(tmp_path):
    recipe = load_recipe(example_recipe(tmp_path, conversations={
        "share": 0.5, "turns": [2, 4], "consistency_judge": True}, answers={"min_groundedness": 0.5}))
    plans = {p.stage: p for p in plan_stages(recipe, chunks=10_000, chunk_tokens=300)}
    turns = math.ceil(plans["answer"].calls * 0.5 * 2)  # (2 + 4) / 2 - 1 follow-ups per conversation
    for stage in ("follow_up", "follow_up_answer", "follow_up_checks", "follow_up_consistency"):
        assert plans[stage].calls == turns
    assert plans["follow_up_answer"].tokens_in > plans["answer"].tokens_in / plans["answer"].calls * turns
