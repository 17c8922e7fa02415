import json

import pytest

from sftmill.core.errors import RecipeError
from sftmill.tasks.sources.pairs import read_items


def test_every_input_form_is_read_and_bad_lines_are_skipped_with_reasons(tmp_path):
    lines = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"prompt": "Name a lepton.", "response": "The electron."},
        {"messages": [{"role": "user", "content": "Why is the sky blue?"},
                      {"role": "assistant", "content": "Rayleigh scattering."}],
         "metadata": {"record_id": "abc"}},
        {"conversations": [{"from": "human", "value": "Define spin."}]},
        {"text": "no instruction here"},
        {"prompt": "   "},
        {"prompt": "Name a lepton.", "response": "The electron."},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    items, skipped = read_items(path)
    assert [(i.instruction, i.response) for i in items] == [
        ("Add the numbers.\n\n2 and 3", "5"), ("Name a lepton.", "The electron."),
        ("Why is the sky blue?", "Rayleigh scattering."), ("Define spin.", "")]
    assert items[2].source == {"file": "in.jsonl", "line": 3, "earlier": {"record_id": "abc"}}
    assert [n for n, _ in skipped] == [5, 6, 7, 8]
    assert "no instruction" in skipped[0][1] and skipped[1][1] == "empty instruction"
    assert skipped[2][1] == "duplicate of an earlier line"


def test_plain_text_input_and_unusable_files(tmp_path):
    txt = tmp_path / "in.txt"
    txt.write_text("Explain gluons.\n\nExplain quarks.\n")
    items, skipped = read_items(txt)
    assert [i.instruction for i in items] == ["Explain gluons.", "Explain quarks."] and not skipped
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    with pytest.raises(RecipeError, match=r"bad.jsonl: no usable instruction .*line 1"):
        read_items(bad)
    with pytest.raises(RecipeError, match="not found"):
        read_items(tmp_path / "missing.jsonl")
