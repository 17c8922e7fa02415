"""The rule-based text checks: each finds what it must find, and passes fluent
instruction data (the bundled Self-Instruct seeds)."""

import json
from pathlib import Path

import pytest

from sftmill.core.text_rules import copied_share, degenerate, malformed_prompt, presupposes_source, refusal

SEEDS = Path(__file__).parents[3] / "data" / "self_instruct" / "seed_tasks.jsonl"

# What the embedded 135M model wrote when asked for Self-Instruct tasks and answers.
DEGENERATE = [
    "2. Try a new exercise. 2. 2. 2. 2. 2",
    "1e6, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17",
    "5.51.20001.6.I.M.K.S.B.M.M.S.I.R.S.I.M.K.S.B.M.M.S.I.R.S",
    "The residual strong force is the fundamental force of nature that is responsible for the "
    "strong interaction. It is the fundamental force of nature that is responsible for the strong "
    "interaction. It is the fundamental force of nature that is responsible for the strong force.",
    "Quarks.\nGluons are here.\nGluons are here.\nGluons are here.\nGluons are here.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
]


def seed_pairs():
    for line in SEEDS.read_text().splitlines():
        task = json.loads(line)
        for instance in task["instances"]:
            prompt = task["instruction"] + (f"\n\n{instance['input']}" if instance["input"] else "")
            yield prompt, instance["output"]


@pytest.mark.parametrize("text", DEGENERATE)
def test_degenerate_text_is_found(text):
    assert degenerate(text)


def test_fluent_instruction_data_passes_every_rule():
    pairs = list(seed_pairs())
    assert len(pairs) >= 16
    for prompt, response in pairs:
        assert degenerate(prompt) is None and degenerate(response) is None, prompt
        assert refusal(prompt) is None and refusal(response) is None, prompt
        assert presupposes_source(prompt, "prompt") is None, prompt
        assert presupposes_source(response, "answer") is None, response
        assert malformed_prompt(prompt) is None, prompt
    # numbers and formulas answer questions: not degenerate
    assert degenerate("2, 3, 5, 7, 11, 13, 17, 19, 23, 29") is None
    assert degenerate("Let x = 1, y = 2, z = 3, a = 4, b = 5 and c = 6; then f(x) = x + y + z.") is None


@pytest.mark.parametrize("text, found", [
    ("As an AI language model, I cannot help with that request.", True),
    ("I'm sorry, but I can't provide that information.", True),
    ("Sorry, I cannot answer that.", True),
    ("Quarks are confined. I hope this helps!", True),
    ("I can't help but be drawn to her, like a moth to a flame.", False),
    ("I apologise for the delay: spin is intrinsic angular momentum.", False),
])
def test_refusal_and_boilerplate(text, found):
    assert bool(refusal(text)) is found
    assert refusal(text, ()) is None  # an empty list turns the check off


def test_copied_share_measures_verbatim_runs():
    passage = "At CERN the LHC accelerates protons to nearly the speed of light in a ring."
    assert copied_share("The LHC accelerates protons to nearly the speed of light [1].", [passage]) == 1.0
    own = "Protons in CERN's big ring are pushed until they move almost as fast as light [1]."
    assert copied_share(own, [passage]) == 0.0
    half = "The LHC accelerates protons to nearly the speed of light, and then smashes them together."
    assert 0.4 < copied_share(half, [passage]) < 0.8
    assert copied_share(own, []) == 0.0


@pytest.mark.parametrize("prompt, found", [
    ('How does the author use the word "colour" in the passage about colour charge?', "the author"),
    ("Why do the writer explain that QCD became part of the standard model?", "the writer"),
    ("What does the passage say about gluons?", "the passage"),
    ("According to the text, why are quarks confined?", "the text"),
    ("Who was the author of the Principia?", None),
    ("Summarise the following text: Gluons bind quarks into protons and neutrons inside nuclei.", None),
    ("Read the passage and name the particle.\n\nThe Omega-minus is made of three strange quarks.", None),
])
def test_prompts_that_presuppose_a_source(prompt, found):
    result = presupposes_source(prompt, "prompt")
    assert (result is None) if found is None else (found in result.lower())


@pytest.mark.parametrize("answer, found", [
    ("The sources and both support this statement [1].", True),
    ("According to the passage, quarks carry colour [2].", True),
    ("As passage [2] explains, gluons carry colour.", True),
    ("In this context, gluons carry colour charge [1].", False),
    ("A radioactive source emits particles; the sources of cosmic rays are many.", False),
])
def test_answers_that_talk_about_their_sources(answer, found):
    assert bool(presupposes_source(answer, "answer")) is found


@pytest.mark.parametrize("prompt, found", [
    ("What happens when when a particle accelerator accelerates protons?", "doubled word"),
    ('What is the correct answer to the question "What is the Omega-minus?', "unbalanced"),
    ("Why are (most) hadrons (colourless?", "unbalanced"),
    ("6. I am a car.", "starts with"),
    ("What is the role of gluons in the", "cut off"),
    ("Why are quarks never seen alone?", None),
    ("Pick one: 1) a quark; 2) a lepton. Which is the electron?", None),
    ("Who is Lang Lang?", None),
])
def test_malformed_prompts(prompt, found):
    result = malformed_prompt(prompt)
    assert (result is None) if found is None else (found in result)
