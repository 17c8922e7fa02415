"""Both review gates with CSV sheets through `sftmill run`: the run stops at
each gate with the sheet's path (exit code 3), the same command rerun goes
on once the sheet is filled, and the export and card honour the reviews."""

import csv
import json

from examples import example_recipe
from fakes import ScriptedLLM, route_llm, schema_answers


def cli(*args):
    from typer.testing import CliRunner

    from sftmill.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def fill(sheet, decide):
    rows = list(csv.DictReader(sheet.open(encoding="utf-8")))
    for i, row in enumerate(rows):
        row.update(decide(i, row))
    with sheet.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_both_gates_stop_the_run_until_the_sheets_are_filled(prefect_harness, tmp_path, monkeypatch):
    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    recipe = example_recipe(tmp_path, review={"gates": ["prompts", "answers"], "sample": 4})
    run_dir = tmp_path / "run"

    first = cli("run", recipe)
    out = " ".join(first.output.split())
    assert first.exit_code == 3, first.output
    assert f"Stopped at review gate 'prompts': 0 of 4 prompts reviewed (0 annotations) — sheet {run_dir / 'review' / 'prompts.csv'}" in out
    assert "rerun `sftmill run" in out and "--review use" in out
    assert not (run_dir / "dataset.jsonl").exists()

    again = cli("run", recipe)  # nothing filled yet: stops at the same place
    assert again.exit_code == 3 and "0 of 4 prompts reviewed" in " ".join(again.output.split())

    prompts = fill(run_dir / "review" / "prompts.csv", lambda i, row: {
        "decision": ["reject", "edit", "accept", "accept"][i],
        "edited_prompt": "How do gluons bind quarks into protons?" if i == 1 else ""})
    second = cli("run", recipe)
    out = " ".join(second.output.split())
    assert second.exit_code == 3, second.output
    assert "Stopped at review gate 'answers'" in out and "records reviewed" in out
    asked = [content for r in llm.requests for _role, content in r.messages]
    assert any("How do gluons bind quarks into protons?" in text for text in asked)

    records = fill(run_dir / "review" / "answers.csv", lambda i, row: {
        "decision": "edit" if i == 0 else "accept", "style": str(2 + i % 4), "domain_fit": "5",
        "context_relevance": "4", "edited_answer": "A reviewer's better answer." if i == 0 else ""})
    third = cli("run", recipe)
    assert third.exit_code == 0, third.output
    exported = [json.loads(x) for x in (run_dir / "dataset.jsonl").read_text().splitlines()]
    by_id = {r["metadata"]["record"]["prompt_id"]: r for r in exported}
    assert prompts[0]["item_id"] not in by_id  # rejected at the prompt gate: never answered
    edited = [r for r in exported if r["metadata"].get("review", {}).get("decision") == "edit"]
    assert len(edited) == 1 and edited[0]["messages"][1]["content"] == "A reviewer's better answer."
    if prompts[1]["item_id"] in by_id:
        record = by_id[prompts[1]["item_id"]]
        assert record["messages"][0]["content"] == "How do gluons bind quarks into protons?"
        assert record["metadata"]["prompt_review"]["original_prompt"] == prompts[1]["prompt"]
    card = (run_dir / "card.md").read_text()
    assert "## Human review: prompts" in card and "## Human review: records" in card
    assert f"{len(records)} records reviewed by 1 reviewer(s)" in card
    assert "| domain_fit |" in card
