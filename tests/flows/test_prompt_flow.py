"""The prompt flow end to end: with a scripted LLM for the logic, and with
the real embedded model on the bundled example."""

from pathlib import Path

import pytest
import yaml
from examples import example_recipe, params
from fakes import ScriptedLLM, route_llm, schema_answers

from sftmill.core.store import Store
from sftmill.llm.errors import LLMUnavailableError


@pytest.fixture
def scripted(monkeypatch):
    return route_llm(monkeypatch, ScriptedLLM(schema_answers))


def test_flow_runs_every_stage_with_lineage(prefect_harness, tmp_path, scripted):
    from sftmill.flows.prompt_flow import prompt_flow

    # A target above what the corpus gives forces one web round (local backend).
    results = prompt_flow(params(example_recipe(tmp_path, sizes={"target_prompts": 200,
                                                              "broaden_per_profile": 1})))
    stages = [r.stage for r in results]
    assert stages == ["collect", "chunk", "relevance", "profile", "web_queries", "search_fetch",
                      "chunk#2", "relevance#2", "profile#2", "generate", "broaden", "rephrase",
                      "evolve", "prompt_filter", "dedup"]
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    web_docs = store.query_dicts("SELECT * FROM documents WHERE source_kind = 'web'")
    assert {Path(d["uri"]).name for d in web_docs} >= {"top-quark.html", "lattice-qcd.html"}
    assert all(d["query_id"] and d["round"] == 1 for d in web_docs)
    # Off-topic material is judged out, with a reason, at the relevance stage.
    assert ("relevance", "not_relevant") in {(s, r) for s, r, _ in store.reject_counts()}
    # Every kept prompt leads back to its document (and web prompts to query and URL).
    prompts = store.count("prompts")
    assert prompts > 20
    traced = store.scalar(
        "SELECT count(*) FROM prompts p JOIN profiles pr USING (profile_id) "
        "JOIN chunks c ON c.chunk_id = pr.chunk_id JOIN documents d ON d.doc_id = c.doc_id")
    assert traced == prompts
    via_web = store.scalar(
        "SELECT count(*) FROM prompts p JOIN documents d USING (doc_id) "
        "JOIN queries q ON q.query_id = d.query_id JOIN search_results s "
        "ON s.query_id = q.query_id AND s.url = d.uri")
    assert via_web > 0
    origins = {r[0] for r in store.execute("SELECT DISTINCT origin FROM prompts")}
    assert origins == {"generated", "broadened", "rephrased"}


def test_rerun_sends_no_llm_call_again(prefect_harness, tmp_path, scripted):
    from sftmill.flows.prompt_flow import prompt_flow

    recipe = example_recipe(tmp_path, sizes={"target_prompts": 128})  # no web round
    prompt_flow(params(recipe))
    sent = len(scripted.requests)
    prompt_flow(params(recipe))  # stages come back from Prefect's cache
    assert len(scripted.requests) == sent
    # A changed threshold reruns the deciding stages, but every LLM call is
    # answered from the run's call table.
    data = yaml.safe_load(recipe.read_text())
    data["thresholds"]["relevance"] = 0.9
    recipe.write_text(yaml.safe_dump(data))
    prompt_flow(params(recipe))
    assert len(scripted.requests) == sent


def test_refresh_recomputes_only_the_chosen_stage(prefect_harness, tmp_path, scripted):
    from sftmill.flows.prompt_flow import prompt_flow

    recipe = example_recipe(tmp_path, sizes={"target_prompts": 128})  # no web round
    prompt_flow(params(recipe))
    sent = len(scripted.requests)
    state = prompt_flow(params(recipe, refresh=["relevance"]), return_state=True)
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    recomputed = {r[0] for r in store.execute("SELECT stage FROM stage_stats WHERE run_id = ?",
                                              [str(state.state_details.flow_run_id)])}
    assert recomputed == {"relevance"}  # its output did not change, so nothing after it reran
    assert len(scripted.requests) == sent  # and its LLM calls came from the call table


def test_failed_stage_resumes_without_paying_twice(prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.prompt_flow import prompt_flow

    calls = {"n": 0, "down": True}

    def answers(request):
        calls["n"] += 1
        if calls["down"] and calls["n"] > 4:
            raise LLMUnavailableError("endpoint down")
        return schema_answers(request)

    llm = route_llm(monkeypatch, ScriptedLLM(answers))
    llm.max_concurrency = 1
    recipe = str(example_recipe(tmp_path))
    state = prompt_flow(params(recipe), return_state=True)
    assert state.is_failed()
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    ok_keys = {r[0] for r in store.execute("SELECT key FROM llm_calls WHERE status = 'ok'")}
    assert len(ok_keys) == 4

    calls["down"] = False
    sent_before = len(llm.requests)
    assert prompt_flow(params(recipe), return_state=True).is_completed()
    resent = [r.key(llm.model) for r in llm.requests[sent_before:]]
    assert not ok_keys & set(resent)


@pytest.mark.real_model
def test_flow_with_the_real_embedded_model(prefect_harness, tmp_path):
    """Every LLM stage of the flow, driven by the real SmolLM2 (kept small)."""
    from sftmill.flows.prompt_flow import prompt_flow

    recipe = example_recipe(tmp_path, sizes={
        "max_chunks": 2, "target_prompts": 40, "prompts_per_profile": 2,
        "broaden_per_profile": 1, "rephrasings_per_prompt": 1, "queries_per_profile": 1,
        "keep_rephrased_originals": True, "max_rounds": 1},
        thresholds={"prompt_quality": 0.5})  # the example turns the prompt judge off
    results = prompt_flow(params(recipe))
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    llm_stages = {r[0] for r in store.execute("SELECT DISTINCT stage FROM llm_calls WHERE status = 'ok'")}
    assert llm_stages >= {"relevance", "profile", "generate", "rephrase", "prompt_filter"}
    assert results[-1].stage == "dedup"
    assert results[-1].n_out == store.count("prompts")
    for row in store.query_dicts("SELECT * FROM profiles"):
        assert row["subdomain"] in {"Quarks and hadrons", "Gluons and QCD", "Experiments"}
    models = {r[0] for r in store.execute("SELECT DISTINCT model FROM candidate_prompts")}
    assert models <= {"llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_a_deleted_run_folder_is_rebuilt_not_taken_from_the_cache(prefect_harness, tmp_path, scripted):
    """collect reads files, not tables: its cache key carries the run
    database's ID, so deleting the run folder makes it collect again."""
    import shutil

    from sftmill.flows.prompt_flow import prompt_flow

    recipe = example_recipe(tmp_path)
    prompt_flow(params(recipe))
    Store.close_all()
    shutil.rmtree(tmp_path / "run")
    results = prompt_flow(params(recipe))
    assert results[0].stage == "collect" and results[0].n_out > 0
    assert Store.open(tmp_path / "run" / "sftmill.duckdb").count("prompts") > 0


def big_notes(path: Path, megabytes: float = 14.0) -> Path:
    """One large text file: physics paragraphs, every fourth one off-topic."""
    topics = ["quark confinement", "gluon self-interaction", "the proton's spin", "hadron masses",
              "asymptotic freedom", "colour charge", "deep inelastic scattering", "jets at the LHC"]
    paragraphs, size, i = [], 0, 0
    while size < megabytes * 1_000_000:
        if i % 4 == 3:
            text = (f"Note {i}. Sourdough bread needs a long proof; the starter is fed flour and "
                    "water the night before, and the dough rests until it has doubled. ") * 4
        else:
            topic = topics[i % len(topics)]
            text = (f"Note {i} on {topic}. Quarks carry colour charge and are bound by gluons; "
                    f"{topic} follows from quantum chromodynamics, measured in experiment {i}. ") * 4
        paragraphs.append(text.strip())
        size += len(text) + 2
        i += 1
    path.write_text("\n\n".join(paragraphs))
    return path


def test_a_small_target_over_a_large_file_judges_only_what_it_needs(prefect_harness, tmp_path,
                                                                    scripted):
    """`target_prompts: 20` over one 14 MB file sends a few dozen
    judge and profile calls, not one per chunk, and still meets its target;
    the chunks never judged are counted as such, not as rejects."""
    from sftmill.flows.prompt_flow import prompt_flow
    from sftmill.tasks.report.summary import summarize

    notes = big_notes(tmp_path / "notes.txt")
    recipe = example_recipe(tmp_path, sizes={"target_prompts": 20, "max_rounds": 0},
                            search={"backend": "none"})
    data = yaml.safe_load(recipe.read_text())
    data["inputs"] = [{"path": notes.name}]
    recipe.write_text(yaml.safe_dump(data))
    prompt_flow(params(recipe))

    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    chunks = store.count("chunks")
    assert chunks > 5_000
    sent = dict(store.execute("SELECT stage, count(*) FROM llm_calls WHERE status = 'ok' "
                              "GROUP BY stage"))
    assert sent["relevance"] <= 300 and sent["profile"] <= 300, sent
    # only the profiles the target needs are made: a near duplicate among the
    # look-alike notes' prompts is not made up for
    assert store.count("prompts") >= 16
    judged = store.count("relevance")
    assert summarize(store).tables["chunks not judged"] == chunks - judged
    rejected = store.scalar("SELECT count(*) FROM rejects WHERE stage = 'relevance'")
    assert rejected < judged  # the off-topic quarter of what was judged, nothing more
    # A sample across the file, not its first chunks.
    idx = [i for (i,) in store.execute("SELECT c.idx FROM relevance JOIN chunks c USING (chunk_id)")]
    assert max(idx) > chunks * 0.8 and min(idx) < chunks * 0.2
