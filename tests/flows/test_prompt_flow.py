"""The prompt flow end to end: with a scripted LLM for the logic, and with
the real embedded model on the bundled example."""

import shutil
from pathlib import Path

import pytest
import yaml

from fakes import ScriptedLLM, user_text
from sftmill.llm import LLMUnavailableError
from sftmill.store import Store

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "data" / "example"


def example_recipe(tmp_path: Path, **overrides) -> Path:
    shutil.copytree(EXAMPLE / "corpus", tmp_path / "corpus")
    data = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    data["output_dir"] = "run"
    data.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def scripted_answers(request):
    text = user_text(request)
    if "Score it from 1 to 5" in text:
        off_topic = "sourdough" in text
        return {"score": 1 if off_topic else 5, "reason": "judged by the script"}
    return {"domain": "Physics", "subdomain": "Gluons and QCD", "topic": "QCD",
            "use_case": "exam revision", "summary": "A passage about the strong interaction."}


@pytest.fixture
def scripted(monkeypatch):
    """Route both LLM roles of the flow to one ScriptedLLM per store."""
    made = {}

    def make(endpoint, store=None):
        made.setdefault("llm", ScriptedLLM(scripted_answers, store))
        made["llm"].store = store
        return made["llm"]

    monkeypatch.setattr("tasks.relevance.make_llm", make)
    monkeypatch.setattr("tasks.profile.make_llm", make)
    return made


def test_flow_fills_every_table_with_lineage(prefect_harness, tmp_path, scripted):
    from flows.prompt_flow import prompt_flow

    results = prompt_flow(str(example_recipe(tmp_path)))
    assert [r.stage for r in results] == ["collect", "chunk", "relevance", "profile"]
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    assert store.count("documents") == 4
    n_chunks = store.count("chunks")
    bread = store.execute("SELECT count(*) FROM chunks JOIN documents USING (doc_id) "
                          "WHERE documents.uri LIKE '%bread.txt'")[0][0]
    assert store.count("profiles") == n_chunks - bread
    assert store.reject_counts("relevance") == [("relevance", "not_relevant", bread)]
    # lineage: every profile leads back to a document
    orphans = store.scalar("SELECT count(*) FROM profiles p LEFT JOIN chunks c USING (chunk_id) "
                           "LEFT JOIN documents d USING (doc_id) WHERE d.doc_id IS NULL")
    assert orphans == 0


def test_rerun_sends_no_llm_call_again(prefect_harness, tmp_path, scripted):
    from flows.prompt_flow import prompt_flow

    recipe = str(example_recipe(tmp_path))
    prompt_flow(recipe)
    sent = len(scripted["llm"].requests)
    prompt_flow(recipe)  # stages come back from Prefect's cache
    assert len(scripted["llm"].requests) == sent
    # A changed threshold reruns the deciding stages, but every LLM call is
    # answered from the run's call table.
    data = yaml.safe_load(Path(recipe).read_text())
    data["thresholds"]["relevance"] = 0.9
    Path(recipe).write_text(yaml.safe_dump(data))
    prompt_flow(recipe)
    assert len(scripted["llm"].requests) == sent


def test_failed_stage_resumes_without_paying_twice(prefect_harness, tmp_path, monkeypatch):
    from flows.prompt_flow import prompt_flow

    calls = {"n": 0, "down": True}

    def answers(request):
        calls["n"] += 1
        if calls["down"] and calls["n"] > 4:
            raise LLMUnavailableError("endpoint down")
        return scripted_answers(request)

    llm = ScriptedLLM(answers)
    llm.max_concurrency = 1

    def make(endpoint, store=None):
        llm.store = store
        return llm

    monkeypatch.setattr("tasks.relevance.make_llm", make)
    monkeypatch.setattr("tasks.profile.make_llm", make)
    recipe = str(example_recipe(tmp_path))
    state = prompt_flow(recipe, return_state=True)
    assert state.is_failed()
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    ok_keys = {r[0] for r in store.execute("SELECT key FROM llm_calls WHERE status = 'ok'")}
    assert len(ok_keys) == 4

    calls["down"] = False
    sent_before = len(llm.requests)
    assert prompt_flow(recipe, return_state=True).is_completed()
    resent = [r.key(llm.model) for r in llm.requests[sent_before:]]
    assert not ok_keys & set(resent)


@pytest.mark.real_model
def test_flow_with_the_real_embedded_model(prefect_harness, tmp_path):
    from flows.prompt_flow import prompt_flow

    recipe = example_recipe(tmp_path, sizes={"max_chunks": 3})
    results = prompt_flow(str(recipe))
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    assert store.count("relevance") + store.scalar(
        "SELECT count(*) FROM rejects WHERE stage = 'relevance' AND reason = 'llm_invalid_output'") == 3
    assert results[-1].n_out == store.count("profiles")
    statuses = {r[0] for r in store.execute("SELECT DISTINCT status FROM llm_calls")}
    assert "ok" in statuses
    for row in store.query_dicts("SELECT * FROM profiles"):
        assert row["subdomain"] in {"Quarks and hadrons", "Gluons and QCD", "Experiments"}
        assert row["model"] == "llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"
