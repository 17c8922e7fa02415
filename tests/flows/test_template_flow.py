"""Template generation: spec checks, slot filling, and the flow (scripted
and with the real model)."""

import json
import random
from pathlib import Path

import pytest
from fakes import ScriptedLLM, route_llm, user_text

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.errors import RecipeError
from sftmill.core.store import Store
from sftmill.tasks.generators.templates import TemplatesConfig, fill, fillings, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "data" / "templates" / "particle_physics.yaml"


def test_shipped_spec_loads():
    spec = load_spec(SPEC)
    assert len(spec.templates) == 3 and spec.slots["PROCESS"].n == 4


@pytest.mark.parametrize("text, message", [
    ("templates: []\n", r"templates: .*at least 1"),
    ("templates: ['Explain [X].']\n", r"templates.0: \[X\] names no slot"),
    ("templates: ['Explain gluons.']\nslots: {}\n", r"templates.0: no \[SLOT\] placeholder"),
    ("templates: ['Explain [X].']\nslots: {X: []}\n", r"slots.X: no values"),
    ("templates: ['Explain [X].']\nslots: {X: {llm: colours, n: 0}}\n", r"slots.X.*n.*greater"),
    ("templates: [unclosed\n", r"not valid YAML"),
    ("templates: ['Explain [X].']\nslots: {X: [a]}\ncolour: red\n", r"colour: Extra inputs"),
])
def test_bad_specs_stop_with_one_line(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message) as err:
        load_spec(path)
    assert "\n" not in str(err.value) and "spec.yaml" in str(err.value)


def test_numbered_placeholders_take_distinct_values_and_the_limit_holds():
    template = "Compare [P:1] and [P:2] in [F]."
    values = {"P": ["quarks", "gluons", "photons"], "F": ["QCD", "QED"]}
    every = fillings(template, values, 100, random.Random(0))
    assert len(every) == 3 * 2 * 2  # ordered pairs of distinct particles × fields
    assert all(b["[P:1]"] != b["[P:2]"] for b in every)
    four = fillings(template, values, 4, random.Random(0))
    assert len(four) == 4 and four == fillings(template, values, 4, random.Random(0))
    assert fill(template, every[0]).count("[") == 0
    assert fillings(template, {"P": ["quarks"], "F": ["QCD"]}, 10, random.Random(0)) == []
    big = {"P": [f"p{i}" for i in range(500)], "F": [f"f{i}" for i in range(500)]}
    sampled = fillings(template, big, 50, random.Random(1))  # 125M combinations: drawn, not listed
    assert len({json.dumps(b, sort_keys=True) for b in sampled}) == 50


def scripted(request):
    if request.schema and "values" in request.schema["properties"]:
        return {"values": ["beta decay", "pair production", "beta decay ", "jet formation"]}
    text = user_text(request)
    if "jet formation" in text:
        return "Sorry, I cannot."
    return f"An answer to: {text}"


def test_template_flow_with_scripted_llm(prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.template_flow import template_flow

    llm = route_llm(monkeypatch, ScriptedLLM(scripted))
    cfg = TemplatesConfig(spec_path=str(SPEC), output_dir=str(tmp_path / "tpl"))
    results = template_flow(cfg)
    store = Store.open(cfg.db_path)
    llm_values = sorted(v for (v,) in store.execute("SELECT value FROM tpl_values WHERE origin = 'llm'"))
    assert llm_values == ["beta decay", "jet formation", "pair production"]  # stripped, deduplicated
    records = [json.loads(x) for x in (tmp_path / "tpl" / "dataset.jsonl").read_text().splitlines()]
    refused = dict(store.execute("SELECT reason, count(*) FROM rejects GROUP BY reason"))
    # 4 + 4 fillings, and the third template has only the 3 PROCESS values
    assert len(records) + refused["response_refusal"] + refused.get("near_duplicate", 0) == 11
    # here the near duplicates are the same comparison with the particles swapped
    for (detail,) in store.execute("SELECT detail FROM rejects WHERE reason = 'near_duplicate'"):
        dropped, twin = detail.split(" — cosine ")[0], detail.split(" to: ")[1]
        assert dropped != twin and sorted(dropped.split()) == sorted(twin.split())
    assert all("[" not in r["messages"][0]["content"] for r in records)
    for r in records:
        meta = r["metadata"]
        assert meta["generator"] == "template" and meta["spec"] == "particle_physics.yaml"
        assert r["messages"][1]["content"] == "An answer to: " + r["messages"][0]["content"]
        for placeholder, slot in meta["slots"].items():
            assert slot["value"] in r["messages"][0]["content"]
            assert slot["origin"] == ("llm" if placeholder == "[PROCESS]" else "list")
    assert results[-1].n_out == len(records)
    sent = len(llm.requests)
    template_flow(cfg)  # unchanged spec: everything from cache
    assert len(llm.requests) == sent


@pytest.mark.real_model
def test_template_flow_with_the_real_embedded_model(prefect_harness, tmp_path):
    from sftmill.flows.template_flow import template_flow

    spec = tmp_path / "spec.yaml"
    spec.write_text("domain: physics\nmax_per_template: 2\ntemplates: ['Explain [TOPIC] briefly.']\n"
                    "slots:\n  TOPIC: {llm: a topic of particle physics, n: 2}\n")
    cfg = TemplatesConfig(spec_path=str(spec), output_dir=str(tmp_path / "tpl"),
                          generator=LLMEndpoint(max_tokens=120))
    results = template_flow(cfg)
    store = Store.open(cfg.db_path)
    assert {r[0] for r in store.execute("SELECT DISTINCT model FROM llm_calls")} == {
        "llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"}
    asked = store.scalar("SELECT count(*) FROM llm_calls WHERE stage = 'templates'")
    rejected = store.scalar("SELECT count(*) FROM rejects WHERE stage = 'templates'")
    lines = (tmp_path / "tpl" / "dataset.jsonl").read_text().splitlines()
    assert len(lines) == results[-1].n_out == asked - rejected
