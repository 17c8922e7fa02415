"""The evolve stage: a share of the prompts rewritten harder by Evol-Instruct's
in-depth operations, the rewrite replacing its original; scripted for the
logic, and with the real embedded model."""

from examples import example_recipe
from fakes import ScriptedLLM, route_llm, user_text

from sftmill.core.recipe import load_recipe
from sftmill.core.store import Store
from sftmill.prompts import load_template
from sftmill.tasks.stages.evolve import (
    evolution_id,
    evolution_problem,
    evolve_prompts,
    fixed_text,
    pick_operation,
    raised,
    to_evolve,
)
from sftmill.tasks.stages.rephrase import forward_texts


def test_evolution_checks():
    assert evolution_problem("Explain spin.", "", False) == "empty_evolution"
    assert evolution_problem("Explain spin.", "Explain spin in two ways.", True) == "truncated_evolution"
    assert evolution_problem("Explain spin.", "#Rewritten Prompt#: Explain spin.", False) \
        == "copies_template_words"
    assert evolution_problem("Explain spin.", "The given prompt asks to explain spin.", False) \
        == "copies_template_words"
    assert evolution_problem("Explain spin.", "explain  spin", False) == "no_information_gain"
    assert evolution_problem("Explain spin.", "Explain spin with one worked example.", False) is None
    # what the embedded model writes back: the method's own words, or an answer to the question
    own = fixed_text(load_template("evol_add_constraints"))
    assert "Instruction:" in own and "{{" not in own
    echo = "Why do gluons carry colour? This adds the requirement to add one more constraint or requirement."
    assert evolution_problem("Why do gluons carry colour?", echo, False, own) == "copies_template_words"
    assert evolution_problem("What is the charge of an up quark?", "The charge of an up quark is 2/3.",
                             False) == "not_a_request"
    assert evolution_problem("Describe a hadron jet.", "A hadron jet is a spray of particles.",
                             False) == "not_a_request"
    # an instruction of another form (a generator's input) is not held to it
    assert evolution_problem("Translate 'hello' into French.", "'Hello', formally, into French.",
                             False) is None
    harder = "Why do gluons carry colour, and what would change in a proton if they did not?"
    assert evolution_problem("Why do gluons carry colour?", harder, False, own) is None


def test_the_easiest_prompts_are_chosen_first_and_their_level_goes_up():
    prompts = ([{"prompt_id": f"m{i}", "difficulty": "multi_step"} for i in range(4)]
               + [{"prompt_id": f"e{i}", "difficulty": "explain"} for i in range(4)]
               + [{"prompt_id": f"r{i}", "difficulty": "recall"} for i in range(2)])
    chosen = [p["prompt_id"] for p in to_evolve(prompts, 0.4, seed=7)]
    assert len(chosen) == 4 and set(chosen[:2]) == {"r0", "r1"} and all(c[0] == "e" for c in chosen[2:])
    assert to_evolve(prompts, 0.4, seed=7) == to_evolve(list(reversed(prompts)), 0.4, seed=7)
    assert to_evolve(prompts, 0.0, seed=7) == []
    assert [raised(level) for level in ("recall", "explain", "multi_step", None)] == \
        ["explain", "multi_step", "multi_step", None]
    ops = ("deepen", "concretize")
    drawn = {pick_operation(7, ops, f"p{i}") for i in range(20)}
    assert drawn == set(ops) and pick_operation(7, ops, "p1") == pick_operation(7, ops, "p1")


def _candidates(store, texts, difficulty=None):
    store.insert("candidate_prompts", [
        {"prompt_id": f"p{i}", "text": t, "origin": "generated", "parent_id": "x", "profile_id": "x",
         "task_type": "question", "persona": "a student", "difficulty": difficulty}
        for i, t in enumerate(texts)])


def test_a_passing_rewrite_replaces_its_original_and_a_failing_one_leaves_it(tmp_path, monkeypatch):
    def respond(request):
        instruction = user_text(request).rsplit("Instruction:\n", 1)[1].strip()
        if "gluon" in instruction:
            return "The rewritten prompt: " + instruction  # the eliminator drops it
        return instruction.rstrip("?") + " for a proton at rest, in two steps?"

    llm = route_llm(monkeypatch, ScriptedLLM(respond))
    recipe = load_recipe(example_recipe(tmp_path, difficulty={"evolve_share": 0.5}))
    store = Store.open(recipe.db_path)
    texts = ["Why are quarks confined?", "What carries the strong force between gluons?",
             "What is colour charge?", "How heavy is the top quark?"]
    _candidates(store, texts, difficulty="recall")
    # a prompt a rephrasing already replaced is not evolved
    store.reject("rephrase", "p3", "rephrased", "replaced by: …")

    asked, made = evolve_prompts(store, recipe)
    chosen = to_evolve([{"prompt_id": f"p{i}", "difficulty": "recall"} for i in range(3)], 0.5,
                       recipe.seed)
    assert asked == len(chosen) == 2 == len(llm.requests)
    assert {r.stage.split("_")[0] for r in llm.requests} == {"evolve"}
    failed = [p["prompt_id"] for p in chosen if "gluon" in texts[int(p["prompt_id"][1:])]]
    rows = store.query_dicts("SELECT * FROM candidate_prompts WHERE origin = 'evolved'")
    assert made == len(rows) == 2 - len(failed)
    for row in rows:
        assert row["text"].endswith("for a proton at rest, in two steps?")
        assert row["difficulty"] == "explain" and row["persona"] == "a student"
    replaced = dict(store.execute(
        "SELECT item_id, detail FROM rejects WHERE stage = 'evolve' AND reason = 'evolved'"))
    assert set(replaced) == {r["parent_id"] for r in rows}
    drops = store.execute("SELECT item_id, reason, detail FROM rejects "
                          "WHERE stage = 'evolve' AND reason <> 'evolved'")
    assert [(i, r) for i, r, _ in drops] == [(evolution_id(p), "copies_template_words") for p in failed]
    forward = forward_texts(store)
    assert len(forward) == 3 and all(texts[int(p[1:])] in forward for p in failed)

    # a rerun with the switch off starts over: the originals go on unchanged
    off = load_recipe(example_recipe(tmp_path / "off", difficulty={"evolve_share": 0.0}))
    assert evolve_prompts(store, off) == (0, 0)
    assert sorted(forward_texts(store)) == sorted(texts[:3])


def test_evolve_with_the_real_embedded_model(tmp_path):
    """SmolLM2-135M rewrites three prompts: each rewrite replaces its original
    or is dropped with a reason of the vocabulary, never a crash."""
    recipe = load_recipe(example_recipe(tmp_path, difficulty={"evolve_share": 1.0}))
    store = Store.open(recipe.db_path)
    texts = ["Why are quarks confined inside hadrons?", "What is the charge of an up quark?",
             "How do gluons differ from photons?"]
    _candidates(store, texts)
    asked, made = evolve_prompts(store, recipe)
    assert asked == 3
    outcomes = {r[0]: r[1] for r in store.execute("SELECT item_id, reason FROM rejects WHERE stage = 'evolve'")}
    for i in range(3):
        reason = outcomes.get(f"p{i}") or outcomes.get(evolution_id(f"p{i}"))
        assert reason in {"evolved", "empty_evolution", "truncated_evolution", "copies_template_words",
                          "no_information_gain", "not_a_request", "llm_invalid_output"}
    rows = store.query_dicts("SELECT * FROM candidate_prompts WHERE origin = 'evolved'")
    assert made == len(rows) == sum(r == "evolved" for r in outcomes.values())
    for row in rows:
        assert row["text"] not in texts and row["template_version"] and row["call_key"]
