"""Paraphrasing and back-translation: scripted for the checks, real model
for the wiring."""

import json

import pytest
from fakes import ScriptedLLM, route_llm, user_text

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.store import Store
from sftmill.tasks.generators.augment import AugmentConfig, translation_budget

INPUTS = [
    {"prompt": "Explain how gluons bind quarks inside a proton.",
     "response": "Gluons carry colour charge and are exchanged between quarks."},
    {"prompt": "Describe the discovery of the top quark at Fermilab.",
     "response": "CDF and D0 announced the top quark in 1995."},
    {"instruction": "List the quark flavours."},  # no response: the generator answers it
]


def write_inputs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in INPUTS))
    return path


def scripted(request):
    text = user_text(request)
    if request.schema and "paraphrases" in request.schema["properties"]:
        original = text.split('"""')[1].strip()
        if "top quark" in original:
            return {"paraphrases": ["How do I bake sourdough bread at home?",
                                    "Please describe how the top quark was discovered at Fermilab.",
                                    original]}
        return {"paraphrases": [f"Could you explain this: {original}"] * 2 + [original.upper()]}
    if "Translate this text into" in text:
        language, body = text.split("Translate this text into ", 1)[1].split(":\n\n", 1)
        if language == "English":
            return body[5:] if body.startswith("[de] ") else "Please: " + body[5:]
        return f"[{ {'French': 'fr', 'German': 'de'}[language]}] {body}"
    return "The six flavours are up, down, strange, charm, bottom and top."


def records_of(tmp_path):
    lines = (tmp_path / "aug" / "dataset.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_paraphrase_flow_with_scripted_llm(prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.augment_flow import augment_flow

    route_llm(monkeypatch, ScriptedLLM(scripted))
    cfg = AugmentConfig(input_path=str(write_inputs(tmp_path)), output_dir=str(tmp_path / "aug"), n=3)
    augment_flow(cfg)
    store = Store.open(cfg.db_path)
    reasons = dict(store.execute(
        "SELECT reason, count(*) FROM rejects WHERE stage = 'augment' GROUP BY reason"))
    assert reasons == {"duplicate_variant": 2, "unchanged": 3, "meaning_drift": 1}
    drift = store.scalar("SELECT score FROM rejects WHERE reason = 'meaning_drift'")
    assert drift < cfg.min_similarity
    records = records_of(tmp_path)
    methods = sorted(r["metadata"]["method"] for r in records)
    assert methods == ["original"] * 3 + ["paraphrase"] * 3
    generated = [r for r in records if r["metadata"]["response_origin"] == "generated"]
    assert {r["messages"][1]["content"] for r in generated} == {
        "The six flavours are up, down, strange, charm, bottom and top."}
    variant = next(r for r in records if r["metadata"]["method"] == "paraphrase"
                   and "top quark" in r["metadata"]["original"])
    assert variant["messages"][0]["content"].startswith("Please describe how the top quark")
    assert variant["messages"][1]["content"] == INPUTS[1]["response"]
    assert variant["metadata"]["similarity"] >= cfg.min_similarity
    assert variant["metadata"]["source"]["line"] == 2
    card = (tmp_path / "aug" / "card.md").read_text()
    assert "| original | None | 3 |" in card and "| paraphrase | instruction | 3 |" in card


def test_back_translation_flow_with_scripted_llm(prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.augment_flow import augment_flow

    llm = route_llm(monkeypatch, ScriptedLLM(scripted))
    cfg = AugmentConfig(input_path=str(write_inputs(tmp_path)), output_dir=str(tmp_path / "aug"),
                        method="back_translate", fields=("instruction", "response"),
                        pivots=("French", "German"), include_originals=False, min_similarity=0.5)
    augment_flow(cfg, "sharegpt")
    store = Store.open(cfg.db_path)
    reasons = dict(store.execute(
        "SELECT reason, count(*) FROM rejects WHERE stage = 'augment' GROUP BY reason"))
    assert reasons == {"unchanged": 6}  # the German round trip gave every text back unchanged
    pivots = {r[0] for r in store.execute("SELECT DISTINCT pivot_text FROM aug_variants")}
    assert all(p.startswith("[fr] ") for p in pivots)
    records = records_of(tmp_path)
    assert len(records) == 6
    assert {(r["metadata"]["field"], r["metadata"]["pivot"]) for r in records} == {
        ("instruction", "French"), ("response", "French")}
    by_field = {r["metadata"]["field"]: r for r in records
                if r["metadata"]["pair_id"] == records[0]["metadata"]["pair_id"]}
    assert by_field["instruction"]["conversations"][0]["value"].startswith("Please: ")
    assert by_field["response"]["conversations"][1]["value"].startswith("Please: ")
    # each translation may take about three times its text's length, not the endpoint's 400
    budgets = {r.max_tokens for r in llm.requests if "Translate this text" in user_text(r)}
    assert budgets == {translation_budget(cfg, x) for x in
                       [i.get("prompt") or i.get("instruction") for i in INPUTS]
                       + [i["response"] for i in INPUTS if "response" in i]
                       + ["The six flavours are up, down, strange, charm, bottom and top."]}
    assert max(budgets) < cfg.generator.max_tokens


@pytest.mark.real_model
def test_paraphrase_flow_with_the_real_embedded_model(prefect_harness, tmp_path):
    from sftmill.flows.augment_flow import augment_flow

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(INPUTS[0]) + "\n")
    cfg = AugmentConfig(input_path=str(path), output_dir=str(tmp_path / "aug"), n=1,
                        generator=LLMEndpoint(max_tokens=120))
    results = augment_flow(cfg)
    store = Store.open(cfg.db_path)
    models = {r[0] for r in store.execute("SELECT DISTINCT model FROM llm_calls")}
    assert models == {"llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"}
    kept = store.count("aug_variants")
    rejected = store.scalar("SELECT count(*) FROM rejects WHERE stage = 'augment'")
    assert kept + rejected >= 1  # the variant was kept or its reason recorded
    assert len(records_of(tmp_path)) == 1 + kept == results[-1].n_out


@pytest.mark.real_model
def test_back_translation_flow_with_the_real_embedded_model(prefect_harness, tmp_path):
    from sftmill.flows.augment_flow import augment_flow

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(INPUTS[0]) + "\n")
    cfg = AugmentConfig(input_path=str(path), output_dir=str(tmp_path / "aug"),
                        method="back_translate", pivots=("French",),
                        generator=LLMEndpoint(max_tokens=80))
    results = augment_flow(cfg)
    store = Store.open(cfg.db_path)
    stages = {r[0] for r in store.execute("SELECT DISTINCT stage FROM llm_calls")}
    assert "translate_instruction_to_French" in stages
    kept = store.count("aug_variants")
    if kept:
        assert store.scalar("SELECT pivot_text FROM aug_variants") != INPUTS[0]["prompt"]
    else:  # the round trip failed a check: its reason is recorded
        assert store.scalar("SELECT count(*) FROM rejects WHERE stage = 'augment'") >= 1
    assert len(records_of(tmp_path)) == 1 + kept == results[-1].n_out
