"""Review gates inside a run (`review:` in the recipe; `tasks/review/annotations.py`
holds the annotations and how they resolve).

    open    draws the gate's sample (seeded) once and hands it to the tool:
            a Label Studio project (labelling config, tasks) or a CSV sheet
            in RUN_DIR/review/<gate>.csv
    pull    reads the reviewers' verdicts so far into `review_annotations`
            (Label Studio's export; for CSV, every RUN_DIR/review/<gate>*.csv,
            the reviewer from its `reviewer` column, or the file's name)
    close   resolves them and applies them: `prompt_reviews` (the answer
            stages read `answerable_prompts`) or `reviews` (the export);
            a skipped gate applies nothing

A gate is opened once per run folder (`review_gates`), so a rerun finds
the same project or sheet; once closed, reruns pass it.  The flow decides
when to close (`flows/review.py`).

A Label Studio that does not answer (or answers 5xx) when the gate opens
or pulls leaves the gate waiting, with the reason in its status line; the
next run, or a served run's next pull, goes on where it stopped: the
sample is drawn and recorded before the project is made, the project's ID
as soon as it exists, and only the tasks it lacks are imported.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sftmill.core.recipe import Recipe
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store, TableRef
from sftmill.tasks.review.annotations import (
    SCALES,
    SCHEMA,
    apply_prompt_reviews,
    apply_record_reviews,
    record_annotations,
)
from sftmill.tasks.review.label_studio import (
    LabelStudioClient,
    LabelStudioError,
    answer_config,
    prompt_config,
    read_annotation,
)
from sftmill.tasks.review.sheets import SHEET_REVIEWER, read_sheet, write_csv
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task

GATE_SCHEMA = {
    **SCHEMA,
    "review_gates": """
        gate VARCHAR PRIMARY KEY,   -- prompts | answers
        tool VARCHAR,               -- csv | label_studio
        project_id INTEGER,         -- Label Studio's project
        location VARCHAR,           -- the project's link, or the sheet's path
        n_items INTEGER,
        opened_at TIMESTAMP DEFAULT current_timestamp,
        closed_at TIMESTAMP,
        outcome VARCHAR             -- reviewed | skipped | empty (NULL while open)
    """,
    "review_items": """
        gate VARCHAR,
        item_id VARCHAR,
        PRIMARY KEY (gate, item_id)
    """,
}
NOUN = {"prompts": "prompts", "answers": "records"}
UNREACHABLE = "review_gate_unreachable/"  # meta key prefix: why the tool did not answer
SHEET_COLUMNS = {
    "prompts": ("item_id", "decision", "prompt", "subdomain", "task_type", "edited_prompt",
                "note", "reviewer"),
    "answers": ("item_id", "decision", "prompt", "answer", "passages", *SCALES, "edited_prompt",
                "edited_answer", "note", "reviewer"),
}


@dataclass(frozen=True)
class GateStatus:
    gate: str
    tool: str
    location: str          # Label Studio project link, or the sheet's path
    n_items: int
    n_reviewed: int        # items with as many reviewers as wanted
    n_annotations: int
    outcome: str | None    # None while open
    unreachable: str | None = None  # why the tool did not answer at the last open or pull

    @property
    def complete(self) -> bool:
        return self.n_reviewed >= self.n_items

    def line(self) -> str:
        where = ("Label Studio project " if self.tool == "label_studio" else "sheet ") + (
            self.location or "(not made yet)")
        down = (f"; {self.unreachable} — nothing is lost, the gate goes on when it answers"
                if self.unreachable else "")
        return (f"review gate '{self.gate}': {self.n_reviewed} of {self.n_items} "
                f"{NOUN[self.gate]} reviewed ({self.n_annotations} annotations) — {where}{down}")


def sample_size(n: int, sample: int | float | str) -> int:
    if sample == "all":
        return n
    if isinstance(sample, float):
        return min(n, math.ceil(sample * n))
    return min(n, int(sample))


def gate_items(store: Store, gate: str) -> list[dict]:
    """Every item the gate could show, with what a reviewer needs to see."""
    if gate == "prompts":
        return store.query_dicts("SELECT prompt_id AS item_id, text AS prompt, subdomain, task_type "
                                 "FROM prompts ORDER BY prompt_id")
    rows = store.query_dicts(f"SELECT record_id AS item_id, prompt, answer, metadata FROM {KEPT_DATASET} d "
                             "ORDER BY record_id")
    chunks: dict[str, str] = {}
    wanted = {c["chunk_id"] for r in rows for c in json.loads(r["metadata"]).get("citations", [])}
    if wanted:
        chunks = dict(store.execute("SELECT chunk_id, text FROM chunks WHERE chunk_id IN "
                                    "(SELECT unnest(?))", [sorted(wanted)]))
    for row in rows:
        meta = json.loads(row.pop("metadata"))
        row["subdomain"] = (meta.get("profile") or {}).get("subdomain") or ""
        row["task_type"] = (meta.get("record") or {}).get("task_type") or ""
        row["passages"] = "\n\n".join(
            f"[{c['n']}] {c.get('uri') or c.get('doc_id')}\n{chunks.get(c['chunk_id'], '')}"
            for c in meta.get("citations", [])) or "(no passage cited)"
    return rows


def _gate_row(store: Store, gate: str) -> dict | None:
    store.ensure_tables(GATE_SCHEMA)
    rows = store.query_dicts("SELECT * FROM review_gates WHERE gate = ?", [gate])
    return rows[0] if rows else None


def _client(recipe: Recipe):
    return LabelStudioClient.from_env(recipe.review.label_studio)


def open_gate(store: Store, recipe: Recipe, gate: str) -> GateStatus:
    """Draw the sample and create the project or sheet (once per run folder)."""
    row = _gate_row(store, gate)
    if row is None:
        items = gate_items(store, gate)
        rng = random.Random(f"{recipe.review.seed}/{gate}")
        picked = sorted(rng.sample(items, sample_size(len(items), recipe.review.sample)),
                        key=lambda r: r["item_id"])
        location = ""
        if picked and recipe.review.tool == "csv":
            sheet = recipe.run_dir / "review" / f"{gate}.csv"
            write_csv(sheet, SHEET_COLUMNS[gate], picked)
            location = str(sheet)
        store.execute("DELETE FROM review_items WHERE gate = ?", [gate])  # a kill's leftovers
        store.insert("review_items", [{"gate": gate, "item_id": p["item_id"]} for p in picked])
        store.insert("review_gates", [{"gate": gate, "tool": recipe.review.tool, "project_id": None,
                                       "location": location, "n_items": len(picked)}])
        if not picked:
            store.execute("UPDATE review_gates SET closed_at = current_timestamp, outcome = 'empty' "
                          "WHERE gate = ?", [gate])
        row = _gate_row(store, gate)
    if row["tool"] == "label_studio" and not row["location"] and row["outcome"] is None:
        _make_project(store, recipe, gate, row["project_id"])
    return status(store, recipe, gate)


def _make_project(store: Store, recipe: Recipe, gate: str, project_id: int | None) -> None:
    """The gate's Label Studio project with a task per sampled item: made
    once (its ID recorded at once), then given the tasks it lacks."""
    items = {i["item_id"]: i for i in gate_items(store, gate)}
    picked = [items[i] for (i,) in store.execute(
        "SELECT item_id FROM review_items WHERE gate = ? ORDER BY item_id", [gate])]
    client = _client(recipe)
    try:
        if project_id is None:
            project_id = client.create_project(
                f"{recipe.name}: {gate}", prompt_config() if gate == "prompts" else answer_config(),
                description=f"sftmill review gate '{gate}' of run {recipe.run_dir}",
                reviewers_per_item=recipe.review.reviewers_per_item)
            store.execute("UPDATE review_gates SET project_id = ? WHERE gate = ?", [project_id, gate])
        present = {(t.get("data") or {}).get("item_id") for t in client.tasks(project_id)}
        missing = [{"data": item} for item in picked if item["item_id"] not in present]
        if missing:
            client.import_tasks(project_id, missing)
        store.execute("UPDATE review_gates SET location = ? WHERE gate = ?",
                      [client.project_link(project_id), gate])
    finally:
        client.close()


def status(store: Store, recipe: Recipe, gate: str) -> GateStatus:
    row = _gate_row(store, gate)
    unreachable = store.get_meta(UNREACHABLE + gate) if row["outcome"] is None else None
    wanted = recipe.review.reviewers_per_item
    n_reviewed, n_annotations = store.execute(
        "SELECT count(*) FILTER (WHERE n >= ?), coalesce(sum(n), 0) FROM (SELECT a.item_id, "
        "count(*) AS n FROM review_annotations a JOIN review_items i USING (gate, item_id) "
        "WHERE a.gate = ? GROUP BY a.item_id)", [wanted, gate])[0]
    return GateStatus(gate, row["tool"], row["location"] or "", row["n_items"], int(n_reviewed),
                      int(n_annotations), row["outcome"], unreachable or None)


def pull_gate(store: Store, recipe: Recipe, gate: str) -> GateStatus:
    """The reviewers' verdicts so far into `review_annotations`."""
    row = _gate_row(store, gate)
    known = {i for (i,) in store.execute("SELECT item_id FROM review_items WHERE gate = ?", [gate])}
    if row["outcome"] is None and known:
        if row["tool"] == "csv":
            sheet = Path(row["location"])
            for path in sorted(sheet.parent.glob(f"{gate}*.csv")):
                annotations, _report = read_sheet(path, known, gate)
                if path != sheet:  # a reviewer's own copy: its name is the reviewer
                    for a in annotations:
                        if a["reviewer"] == SHEET_REVIEWER:
                            a["reviewer"] = path.stem
                record_annotations(store, annotations)
        else:
            record_annotations(store, label_studio_annotations(recipe, gate, row["project_id"], known))
    return status(store, recipe, gate)


def label_studio_annotations(recipe: Recipe, gate: str, project_id: int, known: set[str]) -> list[dict]:
    client = _client(recipe)
    try:
        tasks = client.tasks(project_id)
    finally:
        client.close()
    out = []
    for task in tasks:
        item_id = (task.get("data") or {}).get("item_id")
        if item_id not in known:
            continue
        for annotation in task.get("annotations") or []:
            verdict = read_annotation(annotation)
            if verdict is None:
                continue
            who = annotation.get("completed_by")
            who = who.get("email") or who.get("id") if isinstance(who, dict) else who
            stamp = annotation.get("updated_at") or annotation.get("created_at")
            out.append({"gate": gate, "item_id": item_id, "reviewer": f"label_studio:{who}",
                        "decision": verdict["decision"], "edited_prompt": verdict["edited_prompt"],
                        "edited_answer": verdict["edited_answer"],
                        "scales": json.dumps(verdict["scales"]) if verdict["scales"] else None,
                        "note": verdict["note"],
                        "source": f"label_studio:{project_id}/{annotation.get('id')}",
                        "annotated_at": datetime.fromisoformat(stamp.replace("Z", "+00:00"))
                        .replace(tzinfo=None) if stamp else None})
    return out


def close_gate(store: Store, recipe: Recipe, gate: str, outcome: str) -> GateStatus:
    """Apply the reviews (`reviewed`) or nothing (`skipped`); later reruns pass the gate."""
    if outcome == "reviewed":
        (apply_prompt_reviews if gate == "prompts" else apply_record_reviews)(store)
    store.execute("UPDATE review_gates SET closed_at = current_timestamp, outcome = ? "
                  "WHERE gate = ?", [outcome, gate])
    return status(store, recipe, gate)


def advance(store: Store, recipe: Recipe, gate: str, choice: str) -> GateStatus:
    """Open the gate if needed, pull what reviewers did, and close it when
    `choice` says so: `use` (the reviews so far), `skip` (none), `wait`
    (only once every sampled item has its reviewers).  A Label Studio that
    does not answer leaves the gate waiting (`use` too, not to lose reviews
    it cannot read; `skip` needs no answer)."""
    try:
        state = open_gate(store, recipe, gate)
        if state.outcome:
            return state
        state = pull_gate(store, recipe, gate)
    except LabelStudioError as err:
        if not err.unreachable:
            raise
        store.set_meta(UNREACHABLE + gate, str(err))
        if choice == "skip":  # (the sample is recorded before Label Studio is asked)
            return close_gate(store, recipe, gate, "skipped")
        return status(store, recipe, gate)
    store.set_meta(UNREACHABLE + gate, "")
    if choice == "skip":
        return close_gate(store, recipe, gate, "skipped")
    if choice == "use" or state.complete:
        return close_gate(store, recipe, gate, "reviewed")
    return state


def pending_gate(store: Store, recipe: Recipe) -> GateStatus | None:
    """The gate a run stopped at (None: none is open)."""
    store.ensure_tables(GATE_SCHEMA)
    rows = store.execute("SELECT gate FROM review_gates WHERE outcome IS NULL ORDER BY opened_at")
    return status(store, recipe, rows[0][0]) if rows else None


@stage_task("review_gate", recipe=("review", "output_dir"), cached=False,
            reads=("prompts", "dataset"), writes=("prompt_reviews", "reviews"))
def review_gate(recipe: Recipe, gate: str, choice: str,
                upstream: StageResult | TableRef | None = None) -> StageResult:
    """A Prefect task around `advance` (retried like every stage; never
    cached: its result depends on what reviewers did since).  `upstream`
    orders it after the stage whose output it reviews."""
    store = Store.open(recipe.db_path)
    timer = StageTimer(store, f"review_{gate}")
    state = advance(store, recipe, gate, choice)
    ref = (store.ref("prompt_reviews", "prompt_id || decision || coalesce(edited_prompt, '')")
           if gate == "prompts" else
           store.ref("reviews", "record_id || decision || coalesce(edited_prompt, '') "
                     "|| coalesce(edited_answer, '')"))
    return timer.done(ref, state.n_items, state.n_reviewed, state.outcome or "waiting")
