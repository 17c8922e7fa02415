"""The whole pipeline through the answer flow: export formats, citations
that resolve to retrieved passages, the card; and the answer flow with the
real embedded model."""

import json
import subprocess
import sys

import pytest
from examples import example_recipe, params
from fakes import ScriptedLLM, route_llm, schema_answers

from sftmill.core.store import Store

ROLES = {"openai": ("messages", "role", "content", ["user", "assistant"]),
         "sharegpt": ("conversations", "from", "value", ["human", "gpt"])}


def check_record(fmt: str, record: dict) -> tuple[str, str]:
    """Validate one exported record; return (prompt, answer)."""
    assert isinstance(record["metadata"], dict)
    if fmt == "alpaca":
        assert set(record) == {"instruction", "input", "output", "metadata"}
        assert record["input"] == ""
        prompt, answer = record["instruction"], record["output"]
    else:
        key, role, content, roles = ROLES[fmt]
        assert set(record) == {key, "metadata"}
        assert [turn[role] for turn in record[key]] == roles
        assert all(set(turn) == {role, content} for turn in record[key])
        prompt, answer = (turn[content] for turn in record[key])
    assert isinstance(prompt, str) and prompt.strip()
    assert isinstance(answer, str) and answer.strip()
    return prompt, answer


def judging_ungrounded_answers_poorly(request):
    """The scripted LLM, whose judge finds answers written without sources unsupported."""
    text = next(c for r, c in reversed(request.messages) if r == "user")
    if "Answer to check" in text and "Without sources" in text:
        return {"score": 1, "reason": "the sources do not say this"}
    return schema_answers(request)


@pytest.fixture(scope="module")
def finished_run(prefect_harness, tmp_path_factory):
    from _pytest.monkeypatch import MonkeyPatch

    from sftmill.flows.pipeline import pipeline

    tmp = tmp_path_factory.mktemp("pipeline")
    patch = MonkeyPatch()
    try:
        route_llm(patch, ScriptedLLM(judging_ungrounded_answers_poorly))
        recipe = example_recipe(tmp, export={"preference_pairs": True})
        results = pipeline(params(recipe))
    finally:
        patch.undo()
    return tmp / "run", results


def test_pipeline_ends_with_export_and_card(finished_run):
    run_dir, results = finished_run
    assert [r.stage for r in results][-8:] == ["answer_search", "retrieve", "answer",
                                               "answer_checks", "curate", "preferences", "export",
                                               "card"]
    assert (run_dir / "dataset.jsonl").is_file() and (run_dir / "dataset.parquet").is_file()
    card = (run_dir / "card.md").read_text()
    for heading in ("## Stages", "## Dropped, by reason", "## Subdomains: target vs actual",
                    "## Lengths", "## LLM usage", "![subdomains.png](plots/subdomains.png)",
                    "## Curation", "offensive.max_probability"):
        assert heading in card
    assert (run_dir / "plots" / "lengths.png").stat().st_size > 1000


def test_preference_pairs_are_exported_apart_with_their_reason(finished_run):
    run_dir, _results = finished_run
    exported = dict(check_record("openai", json.loads(line))
                    for line in (run_dir / "dataset.jsonl").read_text().splitlines())
    pairs = [json.loads(line) for line in (run_dir / "preferences.jsonl").read_text().splitlines()]
    assert pairs and len(pairs) <= len(exported)
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected", "metadata"}
        assert pair["chosen"] == exported[pair["prompt"]]  # the kept answer
        assert pair["rejected"].startswith("Without sources")  # answered without passages
        assert pair["metadata"]["rejected_because"] == "not_grounded"
        assert pair["metadata"]["origin"] == "ungrounded_answer"
    assert not any(answer.startswith("Without sources") for answer in exported.values())


def test_run_publishes_table_and_card_artifacts(finished_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["sftmill-stages", "sftmill-dataset-card"])))
    kinds = {a.key: a.type for a in found}
    assert kinds == {"sftmill-stages": "table", "sftmill-dataset-card": "markdown"}
    card = next(a for a in found if a.key == "sftmill-dataset-card")
    assert "# Dataset card" in card.data


@pytest.mark.parametrize("fmt", ["openai", "sharegpt", "alpaca"])
def test_every_record_fits_its_format_and_every_citation_was_retrieved(finished_run, fmt, tmp_path):
    run_dir, _ = finished_run
    out = tmp_path / f"out.{fmt}.jsonl"
    proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "export", str(run_dir),
                           "--format", fmt, "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    store = Store.open(run_dir / "sftmill.duckdb")
    assert len(records) == store.count("dataset") > 0
    retrieved = {(p, c) for p, c in store.execute("SELECT prompt_id, chunk_id FROM retrievals")}
    for record in records:
        prompt, _answer = check_record(fmt, record)
        meta = record["metadata"]
        assert meta["source"]["uri"] and meta["source"]["chunk_id"]
        assert meta["profile"]["subdomain"]
        assert meta["models"]["answer"] and meta["templates"]["answer"].startswith("answer@")
        if meta["record"]["grounded"]:
            assert meta["citations"]
        for citation in meta["citations"]:
            assert (meta["record"]["prompt_id"], citation["chunk_id"]) in retrieved
            assert citation["uri"] in meta["cited_urls"]
        assert prompt == store.scalar("SELECT text FROM prompts WHERE prompt_id = ?",
                                      [meta["record"]["prompt_id"]])


def test_export_rejects_an_unknown_format(finished_run):
    run_dir, _ = finished_run
    proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "export", str(run_dir),
                           "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--format: 'csv'" in proc.stderr


@pytest.mark.real_model
def test_answer_flow_with_the_real_embedded_model(prefect_harness, tmp_path, monkeypatch):
    """Prompts from a scripted prompt flow (fast), then every LLM stage of the
    answer flow with the real SmolLM2 on three of them."""
    from sftmill.flows.answer_flow import answer_flow
    from sftmill.flows.prompt_flow import prompt_flow

    recipe = example_recipe(tmp_path, answers={"queries_per_prompt": 1, "top_k": 2,
                                               "search_below": 1})  # every prompt searched
    with monkeypatch.context() as patch:
        route_llm(patch, ScriptedLLM(schema_answers))
        prompt_flow(params(recipe))
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    store.execute("DELETE FROM prompts WHERE prompt_id NOT IN "
                  "(SELECT prompt_id FROM prompts ORDER BY prompt_id LIMIT 3)")
    results = answer_flow(params(recipe))
    assert results[-1].stage == "card"
    # The tiny model may ramble past a schema's length cap; such an answer is
    # recorded as an error and its record skipped, so count calls of any status.
    asked = {r[0] for r in store.execute(
        "SELECT DISTINCT stage FROM llm_calls WHERE model LIKE 'llama.cpp:%'")}
    assert {"answer_queries", "answer"} <= asked
    answers = store.query_dicts("SELECT * FROM answers")
    assert len(answers) == 3 - store.scalar(
        "SELECT count(*) FROM rejects WHERE stage = 'answer'")
    invalid = {r[0] for r in store.execute(
        "SELECT item_id FROM rejects WHERE stage = 'answer_checks' AND reason = 'invalid_citation'")}
    for a in answers:  # plain-text answers: a marker beyond the passages is caught by the checks
        assert all(1 <= n <= 2 for n in a["cited_numbers"]) or a["answer_id"] in invalid
    lines = (tmp_path / "run" / "dataset.jsonl").read_text().splitlines()
    assert len(lines) == store.count("dataset")


def test_pipeline_with_embeddings_from_a_server(prefect_harness, tmp_path, monkeypatch):
    """`embedding.backend: openai`: dedup, retrieval and the answer checks use
    the server's vectors, and no local model is loaded."""
    from fake_openai import FakeOpenAI

    from sftmill.flows.pipeline import pipeline

    server = FakeOpenAI(delay_s=0.02)
    try:
        monkeypatch.setattr("sftmill.embed.models._load",
                            lambda *a: pytest.fail("a served model must not load a local one"))
        route_llm(monkeypatch, ScriptedLLM(schema_answers))
        recipe = example_recipe(tmp_path, embedding={"backend": "openai", "base_url": server.url,
                                                     "model": "fake", "batch_size": 16},
                                answers={"min_similarity": 0.1, "min_prompt_similarity": 0.0})
        pipeline(params(recipe))
    finally:
        server.close()
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    assert store.execute("SELECT DISTINCT model FROM embeddings") == [("openai:fake",)]
    embedded = {t for batch in server.embedded for t in batch}
    prompts = [t for (t,) in store.execute("SELECT text FROM prompts")]
    assert prompts and set(prompts) <= embedded
    assert store.count("retrievals") > 0 and store.count("dataset") > 0
    assert sum(len(b) for b in server.embedded) == len(embedded)  # each text sent once
