import csv
import json

import pytest

from sftmill.core.errors import RecipeError
from sftmill.core.schema import SCHEMA
from sftmill.core.store import Store
from sftmill.tasks.report.export import export_jsonl
from sftmill.tasks.review.annotations import reviewed_rows
from sftmill.tasks.review.sheets import apply_sheet, detect_format, write_sheet


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    store.ensure_tables(SCHEMA)
    store.insert("dataset", [{"record_id": f"r{i}", "prompt_id": f"p{i}", "answer_id": f"a{i}",
                              "prompt": f"Question {i}?", "answer": f"Answer {i}.", "grounded": False,
                              "metadata": json.dumps({"generator": "test", "i": i})}
                             for i in range(10)])
    return store


def fill(path, decisions):
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update(decisions.get(row["record_id"], {}))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_sample_is_seeded_and_bounded(store, tmp_path):
    sheet = tmp_path / "sheet.csv"
    assert write_sheet(store, sheet, 4, seed=3) == 4
    first = sheet.read_text()
    write_sheet(store, sheet, 4, seed=3)
    assert sheet.read_text() == first
    assert write_sheet(store, tmp_path / "all.csv", 100) == 10
    header = first.splitlines()[0].split(",")
    assert header[:2] == ["record_id", "decision"] and "edited_answer" in header


def test_decisions_reach_the_export_and_bad_rows_are_skipped(store, tmp_path):
    sheet = tmp_path / "sheet.csv"
    write_sheet(store, sheet, 10)
    fill(sheet, {"r1": {"decision": "accept"},
                 "r2": {"decision": "Reject", "note": "wrong physics"},
                 "r3": {"decision": "edit", "edited_answer": "A better answer 3."},
                 "r4": {"decision": "edit"},           # edit without text: skipped
                 "r5": {"decision": "maybe"}})         # unknown decision: skipped
    with sheet.open("a", encoding="utf-8") as handle:
        handle.write("r99,accept,,,,,\n")               # unknown record: skipped
    report = apply_sheet(store, sheet)
    assert report.applied == {"accept": 1, "reject": 1, "edit": 1}
    assert [reason.split()[0] for _, reason in report.skipped] == ["decision", "decision", "unknown"]
    assert report.blank == 5
    assert store.execute("SELECT item_id, reason, detail FROM rejects WHERE stage = 'human_review'") \
        == [("r2", "rejected_by_reviewer", "wrong physics")]

    out = tmp_path / "out.jsonl"
    assert export_jsonl(store, "alpaca", out) == 9
    records = {r["metadata"].get("i"): r for r in map(json.loads, out.read_text().splitlines())}
    assert 2 not in records
    assert records[3]["output"] == "A better answer 3."
    assert records[3]["metadata"]["review"]["original_answer"] == "Answer 3."
    assert records[1]["metadata"]["review"]["decision"] == "accept"
    assert "review" not in records[0]["metadata"]
    assert store.count("dataset") == 10  # the dataset table itself is untouched
    assert detect_format(out) == "alpaca"

    # a later sheet overrides: r2 accepted after all
    second = tmp_path / "second.csv"
    write_sheet(store, second, 10)
    fill(second, {"r2": {"decision": "accept"}})
    apply_sheet(store, second)
    assert len(reviewed_rows(store)) == 10
    assert store.scalar("SELECT count(*) FROM rejects WHERE stage = 'human_review'") == 0


def test_a_file_that_is_not_a_sheet_is_one_line_error(store, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,verdict\nr1,accept\n")
    with pytest.raises(RecipeError, match=r"bad.csv: not a review sheet \(no decision, record_id column\)"):
        apply_sheet(store, bad)
