import pytest

from sftmill.core.recipe import parse_recipe
from sftmill.tasks.stages.generate import select_profiles
from sftmill.tasks.stages.sizing import allocate, target_shares


def recipe(tmp_path, subdomains, target=60, per_profile=3, rephrase=1):
    (tmp_path / "a.txt").write_text("x")
    return parse_recipe({"name": "t", "output_dir": "o", "inputs": [{"path": "a.txt"}],
                         "search": {"backend": "none"},
                         "domain": {"name": "Physics", "subdomains": subdomains},
                         "sizes": {"target_prompts": target, "prompts_per_profile": per_profile,
                                   "rephrasings_per_prompt": rephrase}}, tmp_path)


def test_shares_without_a_value_split_the_rest(tmp_path):
    r = recipe(tmp_path, [{"name": "A", "share": 0.5}, {"name": "B"}, {"name": "C"}])
    assert target_shares(r) == pytest.approx({"A": 0.5, "B": 0.25, "C": 0.25})


def test_allocate_follows_shares_when_profiles_suffice():
    assert allocate(10, {"A": 0.5, "B": 0.3, "C": 0.2}, {"A": 9, "B": 9, "C": 9}) == {"A": 5, "B": 3, "C": 2}


def test_allocate_moves_the_shortfall_to_subdomains_with_spare_profiles():
    assert allocate(10, {"A": 0.5, "B": 0.5}, {"A": 2, "B": 20}) == {"A": 2, "B": 8}


def test_allocate_never_exceeds_what_exists():
    assert allocate(100, {"A": 0.5, "B": 0.5}, {"A": 3, "B": 4}) == {"A": 3, "B": 4}


def test_select_profiles_is_deterministic_and_meets_shares(tmp_path):
    r = recipe(tmp_path, [{"name": "A", "share": 0.8}, {"name": "B", "share": 0.2}], target=60)
    profiles = [{"profile_id": f"p{i:02d}", "subdomain": "A" if i % 2 else "B"} for i in range(40)]
    chosen = select_profiles(profiles, r)
    assert len(chosen) == 15  # 60 prompts / (3 generated + 1 broadened per profile)
    assert sum(p["subdomain"] == "A" for p in chosen) == 12
    assert chosen == select_profiles(list(reversed(profiles)), r)


def test_opening_prompt_keeps_the_question_and_refuses_other_openings():
    from sftmill.tasks.stages.generate import opening_prompt

    assert opening_prompt('Q: "Why do quarks bind? Because of gluons."', "Why do") == "Why do quarks bind?"
    assert opening_prompt("explain  confinement\nin QCD.", "Explain") == "explain confinement in QCD."
    assert opening_prompt("How does a proton get its mass?", "Who") == "How does a proton get its mass?"
    assert opening_prompt('The student asks, "Why do quarks bind?"', "Why do") == "Why do quarks bind?"
    assert opening_prompt("The student asked: Describe a jet. More.", "Describe") == "Describe a jet. More."
    assert opening_prompt("The sentence in question is: gluons bind.", "Explain") is None
    assert opening_prompt("Who? Me.", "Who") is None  # too short to be a request
    assert opening_prompt("Who: The three quarks of a proton make one percent of it.", "Who") is None
    assert opening_prompt("What a groundbreaking application of physics!", "What is") is None
    assert opening_prompt("I'll suggest an answer to your question.", "Explain") is None
    assert opening_prompt("", "What is") is None


def test_openings_rotate_evenly_and_imply_task_types():
    from sftmill.tasks.stages.generate import opening_requests, opening_task_type

    profiles = [{"profile_id": f"p{i}"} for i in range(4)]
    items = opening_requests(profiles, ["What is", "Why do", "Explain", "Compare"], 2)
    assert [(p["profile_id"], j) for p, j, _ in items][:3] == [("p0", 0), ("p0", 1), ("p1", 0)]
    used = [o for _, _, o in items]
    assert {o: used.count(o) for o in set(used)} == {"What is": 2, "Why do": 2, "Explain": 2, "Compare": 2}
    assert [o for p, _, o in items if p["profile_id"] == "p1"] == ["Explain", "Compare"]
    assert [opening_task_type(o) for o in ("Explain it", "Compare", "How do I", "How does", "Solve")] == [
        "explanation", "comparison", "how_to", "question", "problem_solving"]


def test_generation_with_openings_drops_replies_that_begin_otherwise(tmp_path, monkeypatch):
    from fakes import ScriptedLLM, route_llm, user_text

    from sftmill.core.store import Store
    from sftmill.tasks.stages.generate import generate_prompts

    def respond(request):
        opening = user_text(request).split('beginning with "', 1)[1].split('"', 1)[0]
        return "I'll suggest something." if opening == "Explain" else f"{opening} gluons glue? Yes."

    llm = route_llm(monkeypatch, ScriptedLLM(respond))
    r = recipe(tmp_path, [], per_profile=2)
    r = r.model_copy(update={"generation": r.generation.model_copy(update={"openings": ["What is", "Explain"]})})
    store = Store.open(tmp_path / "run.duckdb")
    profiles = [{"profile_id": f"p{i}", "chunk_text": f"Text {i} about gluons.", "heading": "Gluons",
                 "topic": "gluons", "use_case": ""} for i in range(3)]
    assert generate_prompts(store, r, profiles) == 3  # one per profile, the same text stored once
    assert len(llm.requests) == 6 and all(req.schema is None and req.stop == ("\n",) for req in llm.requests)
    assert store.query_dicts("SELECT text, task_type FROM candidate_prompts") == [
        {"text": "What is gluons glue?", "task_type": "question"}]
    drops = store.execute("SELECT item_id, reason, detail FROM rejects WHERE stage = 'generate' ORDER BY 1")
    assert [d[:2] for d in drops] == [("p0:1", "llm_invalid_output"), ("p1:1", "llm_invalid_output"),
                                     ("p2:1", "llm_invalid_output")]
    assert drops[0][2] == "no question in the reply: I'll suggest something."


def test_a_list_cut_off_by_the_token_budget_keeps_its_finished_prompts_and_records_the_cut_one(
        tmp_path, monkeypatch):
    from fakes import ScriptedLLM, route_llm

    from sftmill.core.store import Store
    from sftmill.llm.request import RawCompletion
    from sftmill.tasks.stages.generate import generate_prompts

    class Rambling(ScriptedLLM):  # every answer uses the whole budget
        async def _raw_complete(self, request):
            raw = await super()._raw_complete(request)
            return RawCompletion(raw.text, tokens_in=10, tokens_out=request.max_tokens)

    items = {"p0": [{"task_type": "question", "prompt": "What binds quarks?"},
                    {"task_type": "question", "prompt": "Why are gluons massless while the"}],
             "p1": [{"task_type": "question", "prompt": "How do quarks combine into the"}]}
    route_llm(monkeypatch, Rambling(lambda req: {"prompts": items["p1" if "Text 1" in str(req.messages)
                                                                   else "p0"]}))
    r = recipe(tmp_path, [], per_profile=2)
    r = r.model_copy(update={"generation": r.generation.model_copy(update={"openings": []})})
    store = Store.open(tmp_path / "run.duckdb")
    profiles = [{"profile_id": f"p{i}", "chunk_text": f"Text {i} about gluons.", "heading": "Gluons",
                 "topic": "gluons", "use_case": ""} for i in range(2)]
    made = generate_prompts(store, r, profiles)
    assert made == 1, store.execute("SELECT * FROM rejects")
    assert store.execute("SELECT text FROM candidate_prompts") == [("What binds quarks?",)]
    drops = store.execute("SELECT item_id, reason, detail FROM rejects WHERE stage = 'generate' ORDER BY 1")
    assert [d[:2] for d in drops] == [("p0:cut", "truncated"), ("p1:cut", "truncated")]
    assert drops[0][2].endswith("cut off: Why are gluons massless while the")


@pytest.mark.real_model
@pytest.mark.parametrize("openings", [[], ["What is", "Why do"]])
def test_both_generation_modes_with_the_real_embedded_model(tmp_path, openings):
    """The list mode (one JSON list per profile) and the openings mode (one
    plain-text question per call), each on SmolLM2 for two real passages."""
    from examples import EXAMPLE

    from sftmill.core.store import Store
    from sftmill.tasks.stages.generate import generate_prompts

    r = recipe(tmp_path, [], per_profile=2)
    r = r.model_copy(update={"generation": r.generation.model_copy(update={"openings": openings}),
                             "llm": r.llm.model_copy(update={"generator": r.llm.generator.model_copy(
                                 update={"max_tokens": 200})})})
    text = (EXAMPLE / "corpus" / "quarks.md").read_text()
    paragraphs = [p for p in text.split("\n\n") if len(p.split()) > 40][:2]
    profiles = [{"profile_id": f"p{i}", "chunk_text": p, "heading": "Quarks", "topic": "quarks",
                 "use_case": "exam revision"} for i, p in enumerate(paragraphs)]
    store = Store.open(tmp_path / "run.duckdb")
    generate_prompts(store, r, profiles)
    rows = store.query_dicts("SELECT text, task_type, model FROM candidate_prompts")
    drops = store.execute("SELECT reason FROM rejects WHERE stage = 'generate'")
    assert len(rows) + len(drops) >= 2  # every call ended as prompts or a recorded drop
    assert rows, "the real model wrote no usable prompt"
    assert all(row["model"].startswith("llama.cpp:") and len(row["text"].split()) >= 3 for row in rows)
    assert {reason for (reason,) in drops} <= {"llm_invalid_output", "truncated"}
