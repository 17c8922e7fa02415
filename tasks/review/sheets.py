"""CSV review sheets: a sample of a finished run's records for experts (`sftmill review sample`),
read back with their decisions (`sftmill review apply`, and the gates' `tool: csv`).  A row that
cannot be used is skipped with its line and reason."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from sftmill.core.errors import RecipeError
from sftmill.core.files import write_atomic
from sftmill.core.store import Store
from sftmill.tasks.review.annotations import (
    DECISIONS,
    SCALES,
    SCHEMA,
    apply_record_reviews,
    record_annotations,
)

COLUMNS = ("record_id", "decision", "prompt", "answer", "edited_prompt", "edited_answer", "note")


SHEET_REVIEWER = "csv"  # a sheet without a reviewer column: one reviewer, later sheets override


def write_sheet(store: Store, out: Path, n: int, seed: int = 0) -> int:
    """A review sheet of `n` records drawn at random (all when fewer)."""
    store.ensure_tables(SCHEMA)
    ids = [r for (r,) in store.execute("SELECT record_id FROM dataset ORDER BY record_id")]
    picked = sorted(random.Random(seed).sample(ids, min(n, len(ids))))
    rows = store.query_dicts("SELECT record_id, prompt, answer FROM dataset "
                             "WHERE record_id IN (SELECT unnest(?)) ORDER BY record_id", [picked])
    write_csv(out, COLUMNS, rows)
    return len(rows)


def write_csv(out: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    """`rows` as a CSV sheet with `columns` (missing values blank), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c) or "" for c in columns})
    write_atomic(out, [buffer.getvalue().encode("utf-8")])


@dataclass
class ApplyReport:
    applied: dict[str, int] = field(default_factory=dict)  # decision → count
    blank: int = 0                                          # rows left undecided
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (sheet line, reason)


def read_sheet(path: Path, known: set[str], gate: str = "answers") -> tuple[list[dict], ApplyReport]:
    """The usable annotations of a filled sheet (as `review_annotations`
    rows), and what was skipped and why.  The item is in `item_id` (or
    `record_id`); optional columns: reviewer, edited_prompt, edited_answer,
    note and the scales (1-5)."""
    report = ApplyReport()
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            names = set(reader.fieldnames or ())
            missing = {"decision"} - names
            if not names & {"item_id", "record_id"}:
                missing.add("record_id")
            if missing:
                raise RecipeError(f"{path}: not a review sheet (no {', '.join(sorted(missing))} column)")
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RecipeError(f"{path}: cannot read the sheet ({err})") from None

    # A sheet's verdicts are as late as the file was saved (row order within it).
    saved = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).replace(tzinfo=None)
    out: dict[tuple[str, str], dict] = {}
    for line, row in rows:
        cell = {k: (v or "").strip() for k, v in row.items() if k}
        item_id = cell.get("item_id") or cell.get("record_id", "")
        decision = cell.get("decision", "").lower()
        if not decision:
            report.blank += 1
            continue
        scales, bad_scale = {}, None
        for name in SCALES:
            if cell.get(name):
                try:
                    scales[name] = int(cell[name])
                except ValueError:
                    scales[name] = -1
                if not 1 <= scales[name] <= 5:
                    bad_scale = name
        if item_id not in known:
            report.skipped.append((line, f"unknown item {item_id!r}"))
        elif decision not in DECISIONS:
            report.skipped.append((line, f"decision {decision!r} is not one of {', '.join(DECISIONS)}"))
        elif decision == "edit" and not (cell.get("edited_prompt") or cell.get("edited_answer")):
            report.skipped.append((line, "decision edit without edited_prompt or edited_answer"))
        elif bad_scale:
            report.skipped.append((line, f"{bad_scale} {cell[bad_scale]!r} is not 1-5"))
        else:
            reviewer = cell.get("reviewer") or SHEET_REVIEWER
            out[(item_id, reviewer)] = {
                "gate": gate, "item_id": item_id, "reviewer": reviewer, "decision": decision,
                "edited_prompt": cell.get("edited_prompt") or None,
                "edited_answer": cell.get("edited_answer") or None,
                "scales": json.dumps(scales) if scales else None,
                "note": cell.get("note") or None, "source": path.name,
                "annotated_at": saved + dt.timedelta(microseconds=line)}
    for a in out.values():
        report.applied[a["decision"]] = report.applied.get(a["decision"], 0) + 1
    return list(out.values()), report


def apply_sheet(store: Store, path: Path) -> ApplyReport:
    """A filled sheet of records into `review_annotations`, then `reviews`."""
    store.ensure_tables(SCHEMA)
    known = {r for (r,) in store.execute("SELECT record_id FROM dataset")}
    annotations, report = read_sheet(path, known)
    record_annotations(store, annotations)
    apply_record_reviews(store)
    return report


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
