"""The Self-Instruct flow: scripted for the logic, real model for the wiring."""

import json
from pathlib import Path

import pytest

from fakes import ScriptedLLM, route_llm, schema_answers
from sftmill.config import LLMEndpoint, RecipeError
from sftmill.store import Store
from tasks.self_instruct import SelfInstructConfig, load_seeds, sample_examples

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "data" / "self_instruct" / "seed_tasks.jsonl"


def test_shipped_seeds_load_and_bad_seeds_name_the_line(tmp_path):
    seeds = load_seeds(SEEDS)
    assert len(seeds) >= 12 and any(s["is_classification"] for s in seeds)
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(SEEDS.read_text() + '{"instruction": "x"}\n')
    with pytest.raises(RecipeError, match=r"seeds.jsonl:17: expected"):
        load_seeds(bad)


def test_eight_examples_six_human_two_machine():
    import random

    human, machine = [f"h{i}" for i in range(20)], [f"m{i}" for i in range(5)]
    picked = sample_examples(human, machine, random.Random(0))
    assert len(picked) == 8 and sum(p.startswith("m") for p in picked) == 2
    assert len(sample_examples(human, [], random.Random(0))) == 8


def test_self_instruct_flow_with_scripted_llm(prefect_harness, tmp_path, monkeypatch):
    from flows.self_instruct_flow import self_instruct_flow

    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    monkeypatch.setattr("tasks.self_instruct.make_llm", lambda endpoint, store=None: llm)
    llm.store = None
    cfg = SelfInstructConfig(seeds_path=str(SEEDS), output_dir=str(tmp_path / "si"), target=6,
                             prompts_per_round=2, max_rounds=5)
    results = self_instruct_flow(cfg)
    store = Store.open(tmp_path / "si" / "sftmill.duckdb")
    machine = store.query_dicts("SELECT * FROM si_tasks WHERE origin = 'machine'")
    assert len(machine) >= 6 and results[-1].stage == "export"
    reasons = {r for (r,) in store.execute("SELECT DISTINCT reason FROM rejects")}
    assert {"blocklisted_keyword", "rouge_l_duplicate", "output_equals_input"} <= reasons
    classified = {m["instruction"].split()[0]: m["is_classification"] for m in machine}
    assert classified == {"Describe": False, "Classify": True}
    # output-first instances of classification tasks keep the label as the output
    labels = {r[0] for r in store.execute(
        "SELECT i.output FROM si_instances i JOIN si_tasks t USING (task_id) WHERE t.is_classification")}
    assert labels == {"quark", "lepton"}
    records = [json.loads(line) for line in (tmp_path / "si" / "dataset.jsonl").read_text().splitlines()]
    assert records and all(r["metadata"]["generator"] == "self-instruct" for r in records)
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in records)
    card = (tmp_path / "si" / "card.md").read_text()
    assert card.startswith("# Dataset card: self-instruct run") and "## Records by round" in card
    assert (tmp_path / "si" / "plots" / "lengths.png").is_file()


@pytest.mark.real_model
def test_self_instruct_flow_with_the_real_embedded_model(prefect_harness, tmp_path):
    from flows.self_instruct_flow import self_instruct_flow

    cfg = SelfInstructConfig(seeds_path=str(SEEDS), output_dir=str(tmp_path / "si"), target=1,
                             prompts_per_round=1, new_per_prompt=2, max_rounds=1,
                             generator=LLMEndpoint(max_tokens=160))
    results = self_instruct_flow(cfg)
    store = Store.open(tmp_path / "si" / "sftmill.duckdb")
    stages = {r[0] for r in store.execute("SELECT DISTINCT stage FROM llm_calls")}
    assert "self_instruct_generate" in stages
    models = {r[0] for r in store.execute("SELECT DISTINCT model FROM llm_calls")}
    assert models == {"llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert results[-1].stage == "export"
    assert (tmp_path / "si" / "dataset.jsonl").is_file()
