"""The quality report: each figure measures what it says, and two datasets
compare side by side (`sftmill quality A B`)."""

import json
import subprocess
import sys

import numpy as np

from sftmill.tasks.report.quality import (
    QualityRecord,
    distinct_n,
    nearest_distances,
    quality_markdown,
    quality_report,
    vendi_score,
)

PASSAGE = "Gluons carry colour charge and bind quarks into protons, neutrons and other hadrons."


def figures(report):
    return {f["key"]: f for f in report["figures"]}


def test_distinct_n():
    assert distinct_n(["a b c", "a b d"], 1) == round(4 / 6, 3)
    assert distinct_n(["a b c", "a b d"], 2) == 0.75
    assert distinct_n(["same words"] * 4, 2) == 0.25


def test_vendi_score_and_nearest_distance():
    same = np.tile([[1.0, 0.0, 0.0]], (4, 1))
    assert round(vendi_score(same), 6) == 1.0
    assert round(vendi_score(np.eye(4)), 6) == 4.0
    assert nearest_distances(np.eye(3)) == [1.0, 1.0, 1.0]
    assert nearest_distances(same) == [0.0] * 4


def test_report_measures_copying_self_containedness_and_targets():
    copied = QualityRecord("What binds quarks?", PASSAGE, {"profile": {"subdomain": "QCD"}}, (PASSAGE,))
    own = QualityRecord("Why are protons stable bound states?",
                        "Because the force between quarks grows with distance, they stay together [1].",
                        {"profile": {"subdomain": "QCD"}, "scores": {"groundedness": 0.75}}, (PASSAGE,))
    presupposing = QualityRecord("What does the passage say about gluons?",
                                 "According to the passage, gluons glue.", {"profile": {"subdomain": "QCD"}})
    report = quality_report([copied, own, presupposing], {"QCD": 0.5, "Experiments": 0.5},
                            embed=lambda texts: np.eye(len(texts), 8))
    got = figures(report)
    assert got["records"]["value"] == 3
    assert got["copied_share"]["value"] == 0.5  # the median of 1.0 and 0.0
    assert got["copied_share"]["note"] == "1 of 2 at 0.8 or more"
    assert got["prompts_not_self_contained"]["value"] == round(1 / 3, 3)
    assert got["answers_about_sources"]["value"] == round(1 / 3, 3)
    assert got["vendi_prompts"]["value"] == 3.0
    assert got["groundedness"]["value"] == 0.75
    assert got["subdomain_gap"]["value"] == 0.5
    shares = {s["group"]: s for s in report["shares"]["subdomain"]}
    assert shares["Experiments"]["records"] == 0 and shares["Experiments"]["target"] == 0.5
    assert all(f["good"] for f in report["figures"])  # every figure says what good looks like


def test_two_reports_side_by_side():
    a = quality_report([QualityRecord("What is a quark?", "An elementary particle of matter.")])
    b = quality_report([QualityRecord("What is a gluon?", "The carrier of the strong force."),
                        QualityRecord("What is a gluon made of?", "Nothing: it is elementary.")])
    table = quality_markdown(a, b, ("first", "second"))[0]
    assert "| figure | first | second | good |" in table
    assert "| records | 1 | 2 |" in table


def test_quality_command_compares_two_datasets(tmp_path):
    for name, answer in (("a", PASSAGE), ("b", "Quarks stay bound because the pull grows with distance.")):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({
            "messages": [{"role": "user", "content": f"Question {i} about why quarks stay bound?"},
                         {"role": "assistant", "content": answer}],
            "metadata": {"scores": {"copied_share": 1.0 if name == "a" else 0.0}}}) + "\n"
            for i in range(3)))
    out = subprocess.run([sys.executable, "-m", "sftmill.cli", "quality", str(tmp_path / "a.jsonl"),
                          str(tmp_path / "b.jsonl")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| figure | a.jsonl | b.jsonl | good |" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("| extractiveness"))
    assert "| 1 (1–1) | 0 (0–0) |" in row
    missing = subprocess.run([sys.executable, "-m", "sftmill.cli", "quality", str(tmp_path / "no.jsonl")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr


def test_difficulty_is_the_loss_with_the_instruction_over_the_loss_without():
    """IFD from a server that echoes prompt logprobs (the test server gives
    −1 to words, −8 to tokens with digits, nothing to a text's first token):
    an answer of plain words has the same loss either way (IFD 1); one whose
    first word goes unscored alone has 3.8 with its instruction, 4.5 without."""
    from fake_openai import FakeOpenAI

    from sftmill.core.endpoints import LLMEndpoint
    from sftmill.tasks.report.quality import difficulty

    server = FakeOpenAI(delay_s=0.0)
    try:
        endpoint = LLMEndpoint(backend="openai", base_url=server.url, model="lm")
        scores = difficulty([QualityRecord("Why do quarks bind?", "Gluons bind them."),
                             QualityRecord("Why?", "Gluons x1 bind y2 them.")], endpoint)
    finally:
        server.close()
    assert sorted(scores) == [round(3.8 / 4.5, 4), 1.0]
    report = quality_report([QualityRecord("q a b", "x y z")], ifd=[0.6, 0.8, 1.2])
    assert figures(report)["ifd"]["value"] == 0.8 and figures(report)["ifd"]["note"] == "3 measured, 1 above 1"
