"""The Self-Instruct flow: scripted for the logic, real model for the wiring."""

import json
from pathlib import Path

import pytest
from fakes import ScriptedLLM, route_llm, schema_answers

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.errors import RecipeError
from sftmill.core.hub import split_header
from sftmill.core.store import Store
from sftmill.tasks.generators.self_instruct import SelfInstructConfig, load_seeds, sample_examples

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
    from sftmill.flows.self_instruct_flow import self_instruct_flow

    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    monkeypatch.setattr("sftmill.tasks.generators.self_instruct.make_llm", lambda endpoint, store=None: llm)
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
    header, card = split_header((tmp_path / "si" / "card.md").read_text())
    assert header["pretty_name"] == "sftmill self-instruct run"
    assert card.startswith("# Dataset card: self-instruct run") and "## Records by round" in card
    assert (tmp_path / "si" / "plots" / "lengths.png").is_file()


@pytest.mark.real_model
def test_self_instruct_flow_with_the_real_embedded_model(prefect_harness, tmp_path):
    from sftmill.flows.self_instruct_flow import self_instruct_flow

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


TOPICS = ["quark confinement", "gluon self-interaction", "baryon number", "the strong coupling",
          "deep inelastic scattering", "jet reconstruction", "lattice QCD", "the top quark",
          "charm mesons", "pentaquarks", "colour charge", "asymptotic freedom", "pion exchange"]


def realistic_seeds(path: Path, n: int = 175) -> Path:
    """A seed file shaped like the paper's release: 175 tasks, about a sixth
    classification, instructions of 15–30 words and instances of a few
    sentences."""
    lines = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        is_cls = i % 6 == 0
        instruction = (f"Task {i}: read the short description of an experiment or idea about {topic} "
                       "and " + ("classify it as theory, experiment or simulation, giving one label."
                                 if is_cls else "explain it to a first-year student in plain words, "
                                 "mentioning why physicists care about it and one open question."))
        text = (f"A group of physicists studied {topic} with a new method in case {i}. They compared "
                "their measurements with the predictions of quantum chromodynamics and found small "
                "differences that may come from effects nobody has calculated yet. ") * 2
        output = "theory" if is_cls else (f"In case {i}, the study of {topic} tests QCD. " * 4).strip()
        lines.append(json.dumps({"instruction": instruction, "is_classification": is_cls,
                                 "instances": [{"input": text, "output": output}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.real_model
def test_175_realistic_seeds_fit_the_embedded_model_and_yield_records(prefect_harness, tmp_path):
    """The paper-shaped seed file once made every classification prompt
    overflow the 4,096-token context: now each prompt keeps as many
    in-context examples as fit, deterministically, and the choice is recorded."""
    from sftmill.flows.self_instruct_flow import self_instruct_flow

    seeds = realistic_seeds(tmp_path / "seeds.jsonl")
    cfg = SelfInstructConfig(seeds_path=str(seeds), output_dir=str(tmp_path / "si"), target=1,
                             prompts_per_round=2, new_per_prompt=3, max_rounds=3,
                             generator=LLMEndpoint(max_tokens=200))
    self_instruct_flow(cfg)
    store = Store.open(tmp_path / "si" / "sftmill.duckdb")
    assert store.count("dataset") > 0
    too_long = store.scalar("SELECT count(*) FROM rejects WHERE reason IN "
                            "('prompt_too_long', 'llm_invalid_output') AND detail LIKE '%context%'")
    assert too_long == 0
    fit = json.loads(store.get_meta("context_fit:self_instruct_instances"))
    assert fit["kept_max"] >= 1 and fit["offered"] == 3


def test_a_template_that_can_never_fit_stops_before_any_call(prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.self_instruct_flow import self_instruct_flow
    from sftmill.tasks.preflight import check_templates_fit

    tiny = LLMEndpoint(n_ctx=512, max_tokens=600)
    cfg = SelfInstructConfig(seeds_path=str(SEEDS), output_dir=str(tmp_path / "si"), generator=tiny)
    with pytest.raises(RecipeError, match=r"^generator: prompt 'self_instruct_generate' can never "
                                          r"fit the model's context .* > n_ctx 512"):
        check_templates_fit(cfg.llm_templates())
    state = self_instruct_flow(cfg, return_state=True)
    assert state.is_failed() and "can never fit" in state.message
    assert not Store.open(tmp_path / "si" / "sftmill.duckdb").count("llm_calls")


def test_fit_to_context_keeps_the_longest_prefix_that_fits():
    from sftmill.llm.map import fit_to_context
    from sftmill.prompts import load_template

    llm = ScriptedLLM(schema_answers)
    template = load_template("self_instruct_classify")
    seeds = [{"instruction": f"Classify sample number {i} " + "word " * 40, "is_classification": i % 2 == 0}
             for i in range(60)]
    variables = {"examples": seeds, "instruction": "Classify the particle."}
    assert fit_to_context(llm, template, variables, "examples", 16) == (variables, 60)  # no window
    llm.context_window = 1500
    fitted, kept = fit_to_context(llm, template, variables, "examples", 16)
    assert 0 < kept < 60 and fitted["examples"] == seeds[:kept]
    assert llm.count_tokens(template.messages(**fitted)) + 16 <= 1500
    assert llm.count_tokens(template.messages(**{**variables, "examples": seeds[:kept + 1]})) + 16 > 1500
    llm.context_window = 10  # nothing fits: no example kept, and the call would be refused
    assert fit_to_context(llm, template, variables, "examples", 16)[1] == 0


def test_self_instruct_stops_when_rounds_make_no_progress(prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.self_instruct_flow import self_instruct_flow

    # Every proposed instruction is blocklisted ("Draw a diagram …"): no round adds anything.
    llm = route_llm(monkeypatch, ScriptedLLM(
        lambda req: {"instructions": ["Draw a diagram of a proton."]}
        if "instructions" in (req.schema or {}).get("properties", {}) else schema_answers(req)))
    monkeypatch.setattr("sftmill.tasks.generators.self_instruct.make_llm", lambda endpoint, store=None: llm)
    llm.store = None
    cfg = SelfInstructConfig(seeds_path=str(SEEDS), output_dir=str(tmp_path / "si"), target=5,
                             prompts_per_round=1, max_rounds=20)
    results = self_instruct_flow(cfg)
    assert len([r for r in results if r.stage not in ("dataset", "curate", "export")]) == 3  # rounds run
    message = Store.open(tmp_path / "si" / "sftmill.duckdb").get_meta("stopped_early")
    assert message.startswith("self-instruct stopped after round 3") and "blocklisted_keyword" in message
