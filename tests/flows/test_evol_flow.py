"""The Evol-Instruct flow: scripted for the eliminator's logic, real model
for the wiring."""

import json
from pathlib import Path

import pytest
from fakes import ScriptedLLM, route_llm, user_text

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.hub import split_header
from sftmill.core.sections import EVOL_OPERATIONS
from sftmill.core.store import Store
from sftmill.tasks.generators.evol import EvolConfig
from sftmill.tasks.generators.respond import response_problem

ROOT = Path(__file__).resolve().parents[2]


def test_response_checks():
    assert response_problem("", False) == "empty_response"
    assert response_problem("Spin is intrinsic angular momentum.", True) == "response_truncated"
    assert response_problem("Sorry, I cannot answer that.", False) == "response_refusal"
    long_apology = "I apologise for the delay. " + "Spin is intrinsic angular momentum. " * 20
    assert response_problem(long_apology, False) is None
    assert response_problem("Yes, it is.", False) == "response_too_short"
    assert response_problem("Spin is intrinsic angular momentum.", False) is None


def instruction_of(request) -> str:
    return user_text(request).rsplit("Instruction:\n", 1)[-1].strip()


def scripted(request):
    """Evolutions that exercise each elimination reason, keyed by the input."""
    system = request.messages[0][1]
    if request.schema and "equal" in request.schema["properties"]:
        return {"equal": "in the same way" in user_text(request)}
    if "knowledgeable, careful assistant" in system:
        text = user_text(request)
        return "Sorry, I cannot." if "apologise" in text else f"A full answer about {text[:40]}."
    parent = instruction_of(request)
    if parent.startswith("Explain what colour charge"):
        return parent + " Give one more example."
    if parent.startswith("Why are quarks"):
        return "#Rewritten Prompt#: " + parent
    if parent.startswith("Describe how a proton"):
        return parent
    if parent.startswith("What is asymptotic"):
        return "   "
    if parent.startswith("Compare gluons"):
        return parent + " in the same way"
    return parent.rstrip(".") + " and apologise."


def test_the_curate_stage_applies_the_generators_curation(prefect_harness, tmp_path, monkeypatch):
    from sftmill.core.curation import Curation
    from sftmill.flows.evol_flow import evol_flow

    route_llm(monkeypatch, ScriptedLLM(scripted))
    cfg = EvolConfig(input_path=str(ROOT / "data" / "evol" / "instructions.txt"),
                     output_dir=str(tmp_path / "evol"), rounds=2,
                     curation=Curation(keywords={"block": ["one more example"]}))
    evol_flow(cfg, "alpaca")
    store = Store.open(cfg.db_path)
    dropped = store.execute("SELECT reason, count(*) FROM rejects WHERE stage = 'curate' GROUP BY ALL")
    assert dropped == [("blocked_keyword", 2)]  # both records say it (see the test below)
    assert (tmp_path / "evol" / "dataset.jsonl").read_text() == ""


def test_evol_flow_with_scripted_llm(prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.evol_flow import evol_flow

    llm = route_llm(monkeypatch, ScriptedLLM(scripted))
    cfg = EvolConfig(input_path=str(ROOT / "data" / "evol" / "instructions.txt"),
                     output_dir=str(tmp_path / "evol"), rounds=2)
    results = evol_flow(cfg, "alpaca")
    assert [r.stage for r in results] == ["input", "evol_r1", "evol_r2", "dataset", "curate", "export"]
    store = Store.open(cfg.db_path)
    reasons = {(s, r): n for s, r, n in store.execute(
        "SELECT stage, reason, count(*) FROM rejects WHERE stage LIKE 'evol%' GROUP BY ALL")}
    # every failing lineage fails in both rounds: its parent was put back
    assert reasons == {(f"evol_r{i}", reason): n for i in (1, 2) for reason, n in (
        ("copies_template_words", 1), ("no_information_gain", 2), ("empty_evolution", 1),
        ("response_refusal", 1))}
    parents = {json.loads(d)["parent_id"] for (d,) in store.execute(
        "SELECT detail FROM rejects WHERE reason = 'copies_template_words'")}
    assert len(parents) == 1  # round 2 evolved the same (original) instruction again
    judged = [c for c in llm.requests if c.schema and "equal" in c.schema["properties"]]
    assert judged, "the judge was asked about information gain"

    records = [json.loads(x) for x in (tmp_path / "evol" / "dataset.jsonl").read_text().splitlines()]
    assert len(records) == 2
    first, second = sorted(records, key=lambda r: r["metadata"]["round"])
    assert second["metadata"]["parent_id"] == first["metadata"]["item_id"]
    assert first["metadata"]["parent_id"] == first["metadata"]["root_id"]
    assert second["instruction"].endswith("Give one more example. Give one more example.")
    assert len(second["metadata"]["evolution_path"]) == 2
    assert set(second["metadata"]["evolution_path"]) <= set(EVOL_OPERATIONS)
    assert second["metadata"]["source"] == {"file": "instructions.txt", "line": 1}
    assert second["output"].startswith("A full answer")
    header, card = split_header((tmp_path / "evol" / "card.md").read_text())
    assert card.startswith("# Dataset card: evol-instruct run") and header["configs"]
    assert (tmp_path / "evol" / "README.md").read_text() == (tmp_path / "evol" / "card.md").read_text()
    assert "## Records by round and operation" in card and "| evol_r2 | 6 | 1 |" in card
    assert "copies_template_words" in card

    # A rerun sends nothing new and keeps the same dataset.
    sent = len(llm.requests)
    evol_flow(cfg, "alpaca")
    assert len(llm.requests) == sent


def test_evol_flow_without_judge_and_with_inputs(prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.evol_flow import evol_flow

    route_llm(monkeypatch, ScriptedLLM(scripted))
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": "Compare gluons and photons.",
                                  "response": "Both are gauge bosons."}) + "\n")
    cfg = EvolConfig(input_path=str(source), output_dir=str(tmp_path / "evol"), rounds=1,
                     judge_info_gain=False, include_inputs=True, operations=("breadth",))
    evol_flow(cfg)
    records = [json.loads(x) for x in (tmp_path / "evol" / "dataset.jsonl").read_text().splitlines()]
    assert sorted(r["metadata"]["operation"] for r in records) == ["breadth", "input"]


@pytest.mark.real_model
def test_evol_flow_with_the_real_embedded_model(prefect_harness, tmp_path):
    from sftmill.flows.evol_flow import evol_flow

    source = tmp_path / "in.txt"
    source.write_text("Explain what colour charge is.\nList the six quark flavours.\n")
    cfg = EvolConfig(input_path=str(source), output_dir=str(tmp_path / "evol"), rounds=1,
                     generator=LLMEndpoint(max_tokens=120), judge=LLMEndpoint(temperature=0.0, max_tokens=16))
    results = evol_flow(cfg)
    store = Store.open(cfg.db_path)
    models = {r[0] for r in store.execute("SELECT DISTINCT model FROM llm_calls")}
    assert models == {"llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"}
    stages = {r[0] for r in store.execute("SELECT DISTINCT stage FROM llm_calls")}
    assert any(s.startswith("evol_r1_") for s in stages)
    # every lineage either evolved in round 1 or has a recorded reason
    evolved = store.scalar("SELECT count(*) FROM evol_items WHERE round = 1")
    rejected = store.scalar("SELECT count(*) FROM rejects WHERE stage = 'evol_r1'")
    assert evolved + rejected >= 2
    lines = (tmp_path / "evol" / "dataset.jsonl").read_text().splitlines()
    assert len(lines) == evolved == results[-1].n_out


def test_evol_run_that_loses_its_llm_resumes_without_paying_twice(prefect_harness, tmp_path,
                                                                  monkeypatch):
    from sftmill.flows.evol_flow import evol_flow
    from sftmill.llm.errors import LLMUnavailableError

    budget = {"left": 14}

    def flaky(request):
        if budget["left"] <= 0:
            raise LLMUnavailableError("server went away")
        budget["left"] -= 1
        return scripted(request)

    llm = route_llm(monkeypatch, ScriptedLLM(flaky))
    cfg = EvolConfig(input_path=str(ROOT / "data" / "evol" / "instructions.txt"),
                     output_dir=str(tmp_path / "evol"), rounds=2)
    state = evol_flow(cfg, return_state=True)
    assert state.is_failed()
    store = Store.open(cfg.db_path)
    paid = {k for (k,) in store.execute("SELECT key FROM llm_calls WHERE status = 'ok'")}
    assert store.scalar("SELECT count(*) FROM evol_items WHERE round = 1") == 1  # round 1 kept

    budget["left"] = 10_000
    first_requests = len(llm.requests)
    evol_flow(cfg)
    resent = [r for r in llm.requests[first_requests:] if r.key(llm.model) in paid]
    assert resent == []
    assert len((tmp_path / "evol" / "dataset.jsonl").read_text().splitlines()) == 2


def test_a_new_input_file_in_the_same_folder_leaves_old_lineages_out(prefect_harness, tmp_path,
                                                                     monkeypatch):
    from sftmill.flows.evol_flow import evol_flow

    route_llm(monkeypatch, ScriptedLLM(scripted))
    source = tmp_path / "in.txt"
    source.write_text("Explain what colour charge is.\n")
    cfg = EvolConfig(input_path=str(source), output_dir=str(tmp_path / "evol"), rounds=1,
                     judge_info_gain=False)
    evol_flow(cfg)
    source.write_text("Explain what colour charge is in QCD.\n")
    evol_flow(cfg)
    records = [json.loads(x) for x in (tmp_path / "evol" / "dataset.jsonl").read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in records] == [
        "Explain what colour charge is in QCD. Give one more example."]


def test_evolutions_that_repeat_another_lineage_are_near_duplicates(prefect_harness, tmp_path,
                                                                    monkeypatch):
    from sftmill.flows.evol_flow import evol_flow

    def converge(request):
        if "knowledgeable, careful assistant" in request.messages[0][1]:
            return "Gluons carry colour charge between quarks."
        return "Explain in detail how gluons bind quarks together, with one worked example."

    route_llm(monkeypatch, ScriptedLLM(converge))
    source = tmp_path / "in.txt"
    source.write_text("Explain gluons.\nDescribe the strong force.\n")
    cfg = EvolConfig(input_path=str(source), output_dir=str(tmp_path / "evol"), rounds=2,
                     judge_info_gain=False)
    evol_flow(cfg)
    store = Store.open(cfg.db_path)
    assert store.execute("SELECT stage, reason FROM rejects ORDER BY stage, reason") == [
        ("evol_r1", "near_duplicate"),          # the second lineage repeats the first
        ("evol_r2", "near_duplicate"),          # and again in round 2
        ("evol_r2", "no_information_gain")]     # the first lineage's rewrite is unchanged
    assert store.scalar("SELECT count(*) FROM evol_items WHERE round > 0") == 1
