"""Samples and the empty-run hint, read back from a run database."""
import pytest

from sftmill.core.store import Store
from sftmill.tasks.report.summary import empty_run_hint, sample_records


def filled_store(tmp_path) -> Store:
    store = Store.open(tmp_path / "run.duckdb")
    store.insert("documents", [{"doc_id": "d1", "uri": "file:///notes/qcd.md", "text": "x"}])
    store.insert("chunks", [{"chunk_id": f"c{i}", "doc_id": "d1", "text": f"Passage {i} on gluons."}
                            for i in range(4)])
    subs = ["Gluons and QCD", "Gluons and QCD", "Experiments", "Quarks"]
    store.insert("prompts", [{"prompt_id": f"p{i}", "text": f"Prompt {i}?", "subdomain": s}
                             for i, s in enumerate(subs)])
    store.insert("answers", [{"answer_id": f"a{i}", "prompt_id": f"p{i}", "text": f"Answer {i} [1].",
                              "cited_chunk_ids": [f"c{i}"], "cited_numbers": [1]} for i in range(4)])
    store.insert("dataset", [{"record_id": f"r{i}", "prompt_id": f"p{i}", "answer_id": f"a{i}",
                              "prompt": f"Prompt {i}?", "answer": f"Answer {i}.", "grounded": True,
                              "metadata": "{}"} for i in range(4)])
    return store


def test_samples_carry_the_cited_passage_and_cover_subdomains(tmp_path):
    store = filled_store(tmp_path)
    per_sub = sample_records(store, 1, per_subdomain=True)
    assert sorted(r["subdomain"] for r in per_sub) == ["Experiments", "Gluons and QCD", "Quarks"]
    first = next(r for r in per_sub if r["prompt"] == "Prompt 2?")
    assert first["passage"] == "Passage 2 on gluons." and first["source"].endswith("qcd.md")
    assert len(sample_records(store, 3)) == 3


def test_an_empty_run_names_the_stage_and_the_setting(tmp_path):
    store = Store.open(tmp_path / "run.duckdb")
    assert "nothing was dropped" in empty_run_hint(store)
    store.reject_many("answer", [(f"p{i}", "no_supporting_passage", "", None) for i in range(5)])
    store.reject_many("answer_checks", [("a1", "truncated", "", None), ("a2", "too_short", "", None)])
    hint = empty_run_hint(store)
    assert hint.startswith("No record survived. The answer stage removed the most (5; 5 of them "
                           "no_supporting_passage)") and "answers.min_similarity" in hint
    assert len(hint.splitlines()) == 1
    # the stage that removed the last records is named, however many other stages dropped
    store.reject_many("curate", [(f"r{i}", "degenerate", "", None) for i in range(4)]
                      + [("r9", "malformed_prompt", "", None)])
    store.insert("stage_stats", [{"run_id": "x", "stage": "self_instruct", "n_in": 0, "n_out": 5},
                                 {"run_id": "x", "stage": "curate", "n_in": 5, "n_out": 0}])
    hint = empty_run_hint(store, "model (--base-url and --model)")
    assert "The curate stage removed all 5 records it was given (4 degenerate, 1 malformed_prompt): " \
           "look at a more capable model (--base-url and --model): a small model loops" in hint


def test_llm_cost_prices_batch_calls_at_the_batch_rate(tmp_path):
    from examples import example_recipe

    from sftmill.core.recipe import load_recipe
    from sftmill.core.store import Store
    from sftmill.tasks.report.summary import summarize

    server = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "g"}
    recipe = load_recipe(example_recipe(
        tmp_path, llm={"generator": server, "judge": server},
        prices={"g": {"input": 2.0, "output": 8.0, "batch_input": 1.0, "batch_output": 4.0}}))
    store = Store.open(tmp_path / "run.duckdb")
    store.insert("llm_calls", [
        {"call_id": "a", "key": "a", "model": "g", "backend": "openai", "stage": "answer",
         "status": "ok", "tokens_in": 1_000_000, "tokens_out": 0},
        {"call_id": "b", "key": "b", "model": "g", "backend": "openai-batch", "stage": "answer",
         "status": "ok", "tokens_in": 1_000_000, "tokens_out": 1_000_000}])
    (row,) = summarize(store, recipe=recipe).llm
    assert row["sent"] == 2 and row["cost"] == pytest.approx(2.0 + 1.0 + 4.0)
