import random

import pytest

from sftmill.core.text import tokens
from sftmill.tasks.generators.self_instruct_filters import (
    BruteForceNovelty,
    NoveltyIndex,
    instance_rejects,
    instruction_reject,
    lcs_length,
    rouge_l,
)


@pytest.mark.parametrize("instruction, reason", [
    ("Summarize this.", "too_short"),
    ("Explain " + "very " * 150 + "clearly.", "too_long"),
    ("Describe the image of a proton.", "blocklisted_keyword"),
    ("Plot the cross section against energy.", "blocklisted_keyword"),
    ("Go to the CERN website and report the news.", "blocklisted_keyword"),
    ("\"Quote\" the definition of a gluon please.", "starts_with_punctuation"),
    ("Ñame three quark flavours in Spanish.", "starts_with_non_ascii"),
    ("Write a program that lists the quark flavours.", "write_a_program"),
])
def test_each_instruction_filter_drops_its_case(instruction, reason):
    assert instruction_reject(instruction) == reason


@pytest.mark.parametrize("instruction", [
    "Name three quark flavours.",                       # exactly three words: kept
    "Explain " + "very " * 140 + "clearly.",            # 142 words: kept
    "Describe the imaginary part of the amplitude.",    # 'imaginary' is not 'image'
    "Write a poem about the proton.",                   # only 'Write a program' is dropped
    "Compare mesons and baryons.",
])
def test_each_instruction_filter_keeps_the_near_miss(instruction):
    assert instruction_reject(instruction) is None


def test_instance_filters():
    instances = [
        {"input": "", "output": ""},                       # empty_output
        {"input": "proton", "output": "proton"},           # output_equals_input
        {"input": "x", "output": "up"},                    # conflicting with the next
        {"input": "x", "output": "down"},
        {"input": "list", "output": "The flavours are:"},  # trailing_colon
        {"input": "neutron", "output": "udd"},             # kept
        {"input": "", "output": "Six flavours."},          # kept
    ]
    assert instance_rejects(instances) == ["empty_output", "output_equals_input",
                                           "conflicting_outputs", "conflicting_outputs",
                                           "trailing_colon", None, None]


def dp_lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_bit_parallel_lcs_matches_dynamic_programming():
    rng = random.Random(1)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == dp_lcs(a, b)


def test_rouge_l_values():
    assert rouge_l(tokens("Explain the strong force"), tokens("explain the strong force!")) == 1.0
    assert rouge_l(tokens("a b c d"), tokens("a x c y")) == 0.5
    assert rouge_l([], tokens("a")) == 0.0


def synthetic_instructions(n: int, seed: int = 0) -> list[str]:
    """Instructions from templates, with many near-duplicates among them."""
    rng = random.Random(seed)
    verbs = ["Explain", "Describe", "Summarize", "Compare", "List", "Outline", "Define", "Discuss"]
    topics = ["quark confinement", "gluon self-interaction", "asymptotic freedom", "the proton mass",
              "lattice QCD", "deep inelastic scattering", "three-jet events", "colour charge",
              "the top quark", "pentaquarks", "the quark-gluon plasma", "hadron spectroscopy"]
    extras = ["for a student", "in simple terms", "with an example", "in two sentences",
              "for an exam", "step by step", "and give its history", "with equations"]
    words = "alpha beta gamma delta kappa sigma omega zeta theta lambda".split()
    out = []
    for _ in range(n):
        text = f"{rng.choice(verbs)} {rng.choice(topics)} {rng.choice(extras)}"
        if rng.random() < 0.5:
            text += " " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        out.append(text)
    return out


def test_fast_novelty_takes_the_same_decisions_as_brute_force():
    fast, slow = NoveltyIndex(), BruteForceNovelty()
    decisions_fast, decisions_slow = [], []
    for text in synthetic_instructions(3000):
        keep_fast, keep_slow = fast.is_novel(text), slow.is_novel(text)
        decisions_fast.append(keep_fast)
        decisions_slow.append(keep_slow)
        if keep_slow:  # the pool grows by the kept instructions, as in the bootstrapping loop
            fast.add(text)
            slow.add(text)
    assert decisions_fast == decisions_slow
    kept = sum(decisions_slow)
    assert 100 < kept < 2900  # both keeping and dropping were exercised
    brute_force_scores = sum(range(kept))  # each candidate against the whole pool, roughly
    assert fast.scored < brute_force_scores / 10
