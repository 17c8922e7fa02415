"""Human review of a finished run (recipe step 11, answers step 3): experts
accept, reject or edit records in a spreadsheet, and the export honours it.

    sample   a CSV sheet of records drawn at random (seeded) from `dataset`,
             with empty columns decision (accept | reject | edit),
             edited_prompt, edited_answer and note
    apply    reads a filled sheet into the `reviews` table (a later sheet
             overrides an earlier decision on the same record); rows it cannot
             use (unknown record, unknown decision, an edit without text) are
             skipped and reported, the rest is applied

The `dataset` table itself is never changed: the export drops rejected
records (recorded in `rejects`, stage `human_review`), uses the edited texts,
and puts the decision (and the original text of an edit) in each reviewed
record's metadata.  Record IDs are content hashes, so reviews survive reruns
of the run that produced the records.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from sftmill.config import RecipeError
from sftmill.store import KEPT_DATASET, Store

SCHEMA = {
    "reviews": """
        record_id VARCHAR PRIMARY KEY,
        decision VARCHAR,           -- accept | reject | edit
        edited_prompt VARCHAR,
        edited_answer VARCHAR,
        note VARCHAR,
        sheet VARCHAR,              -- the file the decision came from
        reviewed_at TIMESTAMP DEFAULT current_timestamp
    """,
}
COLUMNS = ("record_id", "decision", "prompt", "answer", "edited_prompt", "edited_answer", "note")
DECISIONS = ("accept", "reject", "edit")


def write_sheet(store: Store, out: Path, n: int, seed: int = 0) -> int:
    """A review sheet of `n` records drawn at random (all when fewer)."""
    from sftmill.tasks.export import write_atomic

    store.ensure_tables(SCHEMA)
    ids = [r for (r,) in store.execute("SELECT record_id FROM dataset ORDER BY record_id")]
    picked = sorted(random.Random(seed).sample(ids, min(n, len(ids))))
    rows = store.query_dicts("SELECT record_id, prompt, answer FROM dataset "
                             "WHERE record_id IN (SELECT unnest(?)) ORDER BY record_id", [picked])

    def lines():
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "decision": "", "edited_prompt": "", "edited_answer": "", "note": ""})
        yield buffer.getvalue().encode("utf-8")

    write_atomic(out, lines())
    return len(rows)


@dataclass
class ApplyReport:
    applied: dict[str, int] = field(default_factory=dict)  # decision → count
    blank: int = 0                                          # rows left undecided
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (sheet line, reason)


def read_sheet(path: Path, known: set[str]) -> tuple[list[dict], ApplyReport]:
    """The usable decisions of a filled sheet, and what was skipped and why."""
    report = ApplyReport()
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"record_id", "decision"} - set(reader.fieldnames or ())
            if missing:
                raise RecipeError(f"{path}: not a review sheet (no {', '.join(sorted(missing))} column)")
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RecipeError(f"{path}: cannot read the sheet ({err})") from None
    decisions: dict[str, dict] = {}
    for line, row in rows:
        record_id = (row.get("record_id") or "").strip()
        decision = (row.get("decision") or "").strip().lower()
        edited_prompt = (row.get("edited_prompt") or "").strip()
        edited_answer = (row.get("edited_answer") or "").strip()
        if not decision:
            report.blank += 1
            continue
        if record_id not in known:
            report.skipped.append((line, f"unknown record_id {record_id!r}"))
        elif decision not in DECISIONS:
            report.skipped.append((line, f"decision {decision!r} is not one of {', '.join(DECISIONS)}"))
        elif decision == "edit" and not (edited_prompt or edited_answer):
            report.skipped.append((line, "decision edit without edited_prompt or edited_answer"))
        else:
            decisions[record_id] = {"record_id": record_id, "decision": decision,
                                    "edited_prompt": edited_prompt or None,
                                    "edited_answer": edited_answer or None,
                                    "note": (row.get("note") or "").strip() or None,
                                    "sheet": path.name}
    for d in decisions.values():
        report.applied[d["decision"]] = report.applied.get(d["decision"], 0) + 1
    return list(decisions.values()), report


def apply_sheet(store: Store, path: Path) -> ApplyReport:
    store.ensure_tables(SCHEMA)
    known = {r for (r,) in store.execute("SELECT record_id FROM dataset")}
    decisions, report = read_sheet(path, known)
    store.insert("reviews", decisions, replace=True)
    store.execute("DELETE FROM rejects WHERE stage = 'human_review'")
    store.reject_many("human_review", [
        (r, "rejected_by_reviewer", note or "", None) for r, note in store.execute(
            "SELECT record_id, note FROM reviews WHERE decision = 'reject' "
            "AND record_id IN (SELECT record_id FROM dataset)")])
    return report


def reviewed_rows(store: Store) -> list[dict]:
    """The `dataset` rows as the export sees them: those curation dropped and
    those reviewers rejected left out, edits applied, the review in the metadata."""
    
    store.ensure_tables(SCHEMA)
    rows = store.query_dicts(
        "SELECT d.*, r.decision, r.edited_prompt, r.edited_answer, r.note, r.sheet "
        f"FROM {KEPT_DATASET} d LEFT JOIN reviews r USING (record_id) ORDER BY d.record_id")
    out = []
    for row in rows:
        decision = row.pop("decision")
        edited_prompt, edited_answer = row.pop("edited_prompt"), row.pop("edited_answer")
        note, sheet = row.pop("note"), row.pop("sheet")
        if decision == "reject":
            continue
        if decision:
            meta = json.loads(row["metadata"])
            review = {"decision": decision, "note": note, "sheet": sheet}
            if decision == "edit":
                if edited_prompt:
                    review["original_prompt"], row["prompt"] = row["prompt"], edited_prompt
                if edited_answer:
                    review["original_answer"], row["answer"] = row["answer"], edited_answer
            meta["review"] = review
            row["metadata"] = json.dumps(meta, ensure_ascii=False)
        out.append(row)
    return out


def detect_format(path: Path) -> str:
    """The format of an existing export (openai when there is none)."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = json.loads(handle.readline() or "{}")
    except (OSError, ValueError):
        return "openai"
    if "conversations" in first:
        return "sharegpt"
    if "instruction" in first:
        return "alpaca"
    return "openai"
