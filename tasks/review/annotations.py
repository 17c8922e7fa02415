"""Human review (recipe prompt step 11, answer step 3): experts accept,
reject or edit items, and the run honours it.  Two places ask for it:

    gates    inside a run (`review:` in the recipe, `tasks/review/gate.py`):
             the prompts after near-duplicate removal, before any answer is
             paid for; the records after curation, before export
    sheets   `sftmill review sample` / `apply` on a finished run's records (`sheets.py`)

Every reviewer's verdict on an item is one row of `review_annotations`
(a reviewer's later verdict on the same item replaces the earlier one);
`resolve` turns them into one decision per item — **the majority decision;
on a tie, the decision of the latest annotation among those tied**; an
edit's text comes from the latest annotation that chose edit — and reports
agreement.  Resolved prompt decisions go to `prompt_reviews` (the answer
stages read `answerable_prompts`: rejected prompts left out, edited ones
as edited); resolved record decisions go to `reviews`.

The `dataset` table itself is never changed: the export drops rejected
records (recorded in `rejects`, stage `human_review`), uses the edited texts,
and puts the decision (and the original text of an edit) in each reviewed
record's metadata.  Record and prompt IDs are content hashes, so reviews
survive reruns of the run that produced them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from sftmill.core.hub import split_header, write_card_files
from sftmill.core.markdown import markdown_table
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store

SCHEMA = {
    "reviews": """
        record_id VARCHAR PRIMARY KEY,
        decision VARCHAR,           -- accept | reject | edit
        edited_prompt VARCHAR,
        edited_answer VARCHAR,
        note VARCHAR,
        sheet VARCHAR,              -- where the decision came from (sheet or project)
        reviewed_at TIMESTAMP DEFAULT current_timestamp
    """,
    "review_annotations": """
        gate VARCHAR,               -- prompts | answers
        item_id VARCHAR,            -- prompt_id | record_id
        reviewer VARCHAR,
        decision VARCHAR,           -- accept | reject | edit
        edited_prompt VARCHAR,
        edited_answer VARCHAR,
        scales VARCHAR,             -- JSON {style, domain_fit, context_relevance: 1-5}
        note VARCHAR,
        source VARCHAR,             -- sheet file, or label_studio:<project>/<annotation>
        annotated_at TIMESTAMP,
        PRIMARY KEY (gate, item_id, reviewer)
    """,
}
DECISIONS = ("accept", "reject", "edit")
SCALES = ("style", "domain_fit", "context_relevance")  # answers, 1-5 (recipe answer step 3)
def record_annotations(store: Store, annotations: list[dict]) -> int:
    """Store reviewers' verdicts (a reviewer's new verdict on an item replaces
    the old one); one without a time is stamped now, in order."""
    store.ensure_tables(SCHEMA)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [{**a, "annotated_at": a.get("annotated_at") or now + dt.timedelta(microseconds=i)}
            for i, a in enumerate(annotations)]
    return store.insert("review_annotations", rows, replace=True)


@dataclass
class Resolved:
    decisions: dict[str, dict]        # item_id → the resolved annotation (+ n_reviewers, unanimous)
    multi_reviewed: int = 0           # items with two reviewers or more
    unanimous: int = 0                # of those, items where every reviewer chose the same
    pairwise: float | None = None     # share of reviewer pairs (same item) who agree


def resolve(annotations: list[dict]) -> Resolved:
    """One decision per item: the majority; on a tie, the latest annotation
    among the tied decisions.  Edited texts come from the latest annotation
    that chose the winning decision; the notes of all who chose it are kept."""
    by_item: dict[str, list[dict]] = {}
    for a in annotations:
        by_item.setdefault(a["item_id"], []).append(a)
    out, multi, unanimous, agree, pairs = {}, 0, 0, 0, 0
    for item_id, items in by_item.items():
        items = sorted(items, key=lambda a: (str(a["annotated_at"]), a["reviewer"]))
        counts = Counter(a["decision"] for a in items)
        top = max(counts.values())
        tied = {d for d, n in counts.items() if n == top}
        winner = next(a for a in reversed(items) if a["decision"] in tied)
        notes = [a["note"] for a in items if a["decision"] == winner["decision"] and a["note"]]
        out[item_id] = {**winner, "note": "; ".join(dict.fromkeys(notes)) or None,
                        "n_reviewers": len(items), "unanimous": len(counts) == 1}
        if len(items) > 1:
            multi += 1
            unanimous += len(counts) == 1
            for x, y in combinations(items, 2):
                pairs += 1
                agree += x["decision"] == y["decision"]
    return Resolved(out, multi, unanimous, agree / pairs if pairs else None)


def gate_annotations(store: Store, gate: str) -> list[dict]:
    store.ensure_tables(SCHEMA)
    return store.query_dicts("SELECT * FROM review_annotations WHERE gate = ? ORDER BY item_id", [gate])


def apply_record_reviews(store: Store) -> Resolved:
    """`reviews` and the `human_review` rejects from the records' annotations."""
    resolved = resolve(gate_annotations(store, "answers"))
    store.replace_rows("reviews", [
        {"record_id": d["item_id"], "decision": d["decision"], "edited_prompt": d["edited_prompt"],
         "edited_answer": d["edited_answer"], "note": d["note"], "sheet": d["source"]}
        for d in resolved.decisions.values()])
    store.execute("DELETE FROM rejects WHERE stage = 'human_review'")
    store.reject_many("human_review", [
        (r, "rejected_by_reviewer", note or "", None) for r, note in store.execute(
            "SELECT record_id, note FROM reviews WHERE decision = 'reject' "
            "AND record_id IN (SELECT record_id FROM dataset)")])
    return resolved


def apply_prompt_reviews(store: Store) -> Resolved:
    """`prompt_reviews` (read through `answerable_prompts`) and the
    `prompt_review` rejects from the prompts' annotations."""
    resolved = resolve(gate_annotations(store, "prompts"))
    store.replace_rows("prompt_reviews", [
        {"prompt_id": d["item_id"], "decision": d["decision"],
         "edited_prompt": d["edited_prompt"] if d["decision"] == "edit" else None,
         "note": d["note"], "n_reviewers": d["n_reviewers"], "source": d["source"]}
        for d in resolved.decisions.values()])
    store.execute("DELETE FROM rejects WHERE stage = 'prompt_review'")
    store.reject_many("prompt_review", [
        (p, "rejected_by_reviewer", note or "", None) for p, note in store.execute(
            "SELECT prompt_id, note FROM prompt_reviews WHERE decision = 'reject'")])
    return resolved


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


JUDGE_SCORE = {  # the automated score each gate's items passed, beside reviewers' decisions
    "prompts": ("prompt judge (quality)", "SELECT prompt_id AS item_id, quality AS score FROM prompts"),
    "answers": ("groundedness judge", "SELECT d.record_id AS item_id, k.groundedness AS score "
                "FROM dataset d JOIN answer_checks k USING (answer_id)"),
}
BANDS = ((0.0, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.01))


def review_section(store: Store) -> list[str]:
    """The card's review section: per gate, decisions by subdomain and task
    type, the scales' distributions, reviewer agreement, and the judge's
    scores beside reviewers' decisions (where to set its threshold)."""
    store.ensure_tables(SCHEMA)
    parts: list[str] = []
    where = {"prompts": "SELECT prompt_id AS item_id, subdomain, task_type FROM prompts",
             "answers": "SELECT d.record_id AS item_id, p.subdomain, p.task_type FROM dataset d "
                        "LEFT JOIN prompts p USING (prompt_id)"}
    for gate in ("prompts", "answers"):
        annotations = gate_annotations(store, gate)
        if not annotations:
            continue
        resolved = resolve(annotations)
        groups = {i: (s or "-", t or "-") for i, s, t in store.execute(where[gate])}
        table: dict[tuple[str, str], Counter] = {}
        for item_id, d in resolved.decisions.items():
            table.setdefault(groups.get(item_id, ("-", "-")), Counter())[d["decision"]] += 1
        reviewers = {a["reviewer"] for a in annotations}
        noun = "prompts" if gate == "prompts" else "records"
        parts += [f"## Human review: {noun}",
                  f"{len(resolved.decisions)} {noun} reviewed by {len(reviewers)} reviewer(s) "
                  f"({len(annotations)} annotations). Several reviewers of one item are resolved "
                  "by majority, a tie by the latest annotation.",
                  markdown_table(["subdomain", "task type", "reviewed", "accepted", "edited", "rejected"],
                         [[s, t, sum(c.values()), *(f"{c[d] / sum(c.values()):.0%}"
                                                    for d in ("accept", "edit", "reject"))]
                          for (s, t), c in sorted(table.items())])]
        if resolved.multi_reviewed:
            parts.append(f"Agreement: {resolved.multi_reviewed} {noun} had two reviewers or more; "
                         f"{resolved.unanimous / resolved.multi_reviewed:.0%} unanimous, "
                         f"{resolved.pairwise:.0%} of reviewer pairs agree.")
        else:
            parts.append("Agreement: no item had two reviewers.")
        scales: dict[str, Counter] = {}
        for a in annotations:
            for name, value in json.loads(a["scales"] or "{}").items():
                scales.setdefault(name, Counter())[value] += 1
        if scales:
            parts.append(markdown_table(["scale", "annotations", "mean", *map(str, range(1, 6))],
                                [[name, sum(c.values()),
                                  f"{sum(k * n for k, n in c.items()) / sum(c.values()):.2f}",
                                  *(c[k] for k in range(1, 6))]
                                 for name, c in sorted(scales.items(), key=lambda kv: SCALES.index(kv[0])
                                                       if kv[0] in SCALES else 99)]))
        label, sql = JUDGE_SCORE[gate]
        scores = dict(store.execute(sql))
        rows = []
        for low, high in BANDS:
            inside = [d for i, d in resolved.decisions.items()
                      if scores.get(i) is not None and low <= scores[i] < high]
            if inside:
                rejected = sum(d["decision"] == "reject" for d in inside)
                rows.append([f"{low:.1f}–{min(high, 1.0):.1f}", len(inside), rejected,
                             f"{rejected / len(inside):.0%}"])
        if rows:
            rejected_all = sum(d["decision"] == "reject" for d in resolved.decisions.values())
            parts += [f"Reviewers against the {label}: every reviewed item had passed it, so "
                      f"it kept {rejected_all} that reviewers rejected. By the judge's score:",
                      markdown_table(["judge score", "reviewed", "rejected by reviewers", "share"], rows)]
    return parts


def refresh_card(card: Path, store: Store) -> bool:
    """Put the current review section into an existing card.md (after
    `sftmill review apply`): the old review section out, the new one in
    before the lengths (or at the end).  False when there is no card."""
    if not card.is_file():
        return False

    kept, skipping = [], False
    for block in split_header(card.read_text(encoding="utf-8"))[1].split("\n\n"):
        if block.startswith("## "):
            skipping = block.startswith("## Human review")
        if not skipping:
            kept.append(block.rstrip("\n"))
    at = next((i for i, b in enumerate(kept) if b.startswith("## Lengths")), len(kept))
    kept[at:at] = review_section(store)
    write_card_files(card.parent, "\n\n".join(kept) + "\n")
    return True
