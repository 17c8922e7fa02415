"""A reasoning model behind the pipeline: its trace, returned apart
(`reasoning_content`) or written as `<think>…</think>` before the answer, is
kept apart from the answer, never seen by the answer checks, and exported
as a field, inline or not at all.  Personas and difficulty against the same
server."""

import json
import subprocess
import sys

import pytest
from examples import example_recipe, params
from fake_openai import FakeOpenAI

from sftmill.core.store import Store


def run_against(server: FakeOpenAI, tmp_path, reasoning: bool = True, **overrides):
    from sftmill.flows.pipeline import pipeline

    endpoint = {"backend": "openai", "base_url": server.url, "model": "fake",
                "reasoning": reasoning, "max_tokens": 1024}
    recipe = example_recipe(tmp_path, llm={"generator": endpoint, "judge": endpoint},
                            search={"backend": "none"}, **overrides)
    pipeline(params(recipe))
    return tmp_path / "run"


def db(run_dir) -> Store:
    return Store.open(run_dir / "sftmill.duckdb")


def exported(run_dir, name="dataset.jsonl"):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


# Personas, difficulty and conversations ride along: the same server, their calls thinking too.
CONDITIONS = {"personas": {"generate": 2},
              "difficulty": {"levels": {"recall": 0.5, "explain": 0.5}, "evolve_share": 0.3},
              "conversations": {"share": 0.5, "turns": [2, 3]}}


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    """The same recipe against the server answering with `reasoning_content`
    and with `<think>` blocks (personas drafted and difficulty judged by it too)."""
    out = {}
    for mode in ("field", "think"):
        server = FakeOpenAI(delay_s=0.0)
        server.reasoning = mode
        try:
            out[mode] = run_against(server, tmp_path_factory.mktemp(mode), **CONDITIONS)
        finally:
            server.close()
    return out


def test_both_forms_export_the_same_answers_with_the_trace_beside_them(runs):
    field, think = (exported(runs[m]) for m in ("field", "think"))
    assert field and len(field) == len(think)
    for a, b in zip(field, think):
        assert a["messages"] == b["messages"]
        assistant = a["messages"][1]
        assert "<think>" not in assistant["content"] and "</think>" not in assistant["content"]
        assert assistant["reasoning_content"].startswith("The user asks:")
        assert "\n\n" in assistant["reasoning_content"]  # the whole trace, not cut at a stop


def test_the_answer_checks_see_the_answer_alone(runs):
    store = db(runs["think"])
    rows = store.query_dicts("SELECT a.text, a.reasoning, k.n_chars, k.reasoning_chars "
                             "FROM answers a JOIN answer_checks k USING (answer_id)")
    assert rows
    for r in rows:
        assert "think>" not in r["text"] and r["n_chars"] == len(r["text"])
        assert r["reasoning"] and r["reasoning_chars"] == len(r["reasoning"])
    calls = store.query_dicts("SELECT response_text, reasoning, tokens_out FROM llm_calls "
                              "WHERE stage = 'answer' AND status = 'ok'")
    assert all(c["reasoning"] and "think>" not in c["response_text"] for c in calls)
    assert all(c["tokens_out"] > 5 for c in calls)  # the trace's tokens are counted


def test_export_places_the_trace_as_asked(runs):
    run_dir = runs["field"]
    n = len(exported(run_dir))
    Store.close_all()  # the command opens the run database: this process lets go of it
    for how in ("inline", "drop"):
        done = subprocess.run([sys.executable, "-m", "sftmill.cli", "export", str(run_dir), "-f",
                               "sharegpt", "--reasoning", how, "-o", str(run_dir / f"{how}.jsonl")],
                              check=False, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    inline, dropped = exported(run_dir, "inline.jsonl"), exported(run_dir, "drop.jsonl")
    assert len(inline) == len(dropped) == n
    for a, b in zip(inline, dropped):
        assert a["conversations"][1]["value"].startswith("<think>\nThe user asks:")
        assert a["conversations"][1]["value"].endswith(b["conversations"][1]["value"])
        assert set(b["conversations"][1]) == {"from", "value"}
    bad = subprocess.run([sys.executable, "-m", "sftmill.cli", "export", str(run_dir),
                          "--reasoning", "xml"], check=False, capture_output=True, text=True)
    assert bad.returncode != 0 and "--reasoning: 'xml' is not one of field, inline, drop" in bad.stderr


def test_stop_sequences_sent_to_a_thinking_server_cut_its_trace(prefect_harness, tmp_path):
    """Without `reasoning: true` the stages' stop sequences go to the server,
    which cuts the trace at its first blank line: no answer is left, and the
    drop says what to set."""
    server = FakeOpenAI(delay_s=0.0)
    server.reasoning = "think"
    try:
        store = db(run_against(server, tmp_path, reasoning=False))
    finally:
        server.close()
    drops = store.query_dicts("SELECT reason, detail FROM rejects WHERE stage = 'generate'")
    assert drops and {d["reason"] for d in drops} == {"llm_invalid_output"}
    assert all("give the endpoint reasoning: true" in d["detail"] for d in drops)
    assert store.count("dataset") == 0


def test_a_required_trace_drops_answers_without_one(prefect_harness, tmp_path):
    server = FakeOpenAI(delay_s=0.0)  # answers without reasoning
    try:
        store = db(run_against(server, tmp_path, answers={"reasoning": {"required": True}}))
    finally:
        server.close()
    assert store.count("answers") > 0 and store.count("dataset") == 0
    assert store.execute("SELECT DISTINCT reason FROM rejects WHERE stage = 'answer_checks'") == [
        ("missing_reasoning",)]


def test_personas_and_difficulty_from_a_server_reach_the_records(runs):
    store = db(runs["field"])
    personas = {p for (p,) in store.execute("SELECT persona FROM personas")}
    assert len(personas) == 2
    assert store.count("prompt_difficulty") > 0
    for record in exported(runs["field"]):
        meta = record["metadata"]["record"]
        assert meta["persona"] in personas and meta["difficulty"] in ("recall", "explain", "multi_step")
    evolved = [r for r in exported(runs["field"]) if r["metadata"]["record"]["origin"] == "evolved"]
    assert evolved and all("free quarks" in r["messages"][0]["content"] for r in evolved)


def test_conversations_from_a_server_keep_a_trace_per_assistant_turn(runs):
    records = exported(runs["field"])
    multi = [r for r in records if len(r["messages"]) > 2]
    assert multi
    for record in multi:
        assistants = [m for m in record["messages"] if m["role"] == "assistant"]
        assert len(assistants) == record["metadata"]["conversation"]["turns"]
        assert all(m["reasoning_content"].startswith("The user asks:") for m in assistants)
        assert all("think>" not in m["content"] for m in record["messages"])
