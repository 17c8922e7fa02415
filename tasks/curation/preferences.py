"""Negative examples, marked: preference pairs for DPO-style
training, exported apart from the SFT file (`preferences.jsonl`).

A pair is a kept record's response (`chosen`) and a response to the same
instruction that failed a check (`rejected`), with the reason it failed
from the reject vocabulary.  Two sources:

* `ungrounded_pairs` (the pipeline, `export.preference_pairs: true`): each
  grounded record's prompt is answered again *without* its passages, and
  the groundedness judge reads that answer against the passages; one below
  `answers.min_groundedness` is a negative (`not_grounded`), with the
  judge's reason.  One generator and one judge call per record.
* `curation_pairs` (every flow with pairs on, and `sftmill mix`): a record
  curation dropped for its quality (`low_adherence`, `unsafe`, `offensive`,
  `low_fluency`) whose instruction is also the instruction of a kept record.

Written to the `preference_pairs` table; the SFT export never reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftmill.core.files import write_atomic
from sftmill.core.ids import content_id
from sftmill.core.recipe import Recipe
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store
from sftmill.llm.backends import make_llm
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.map import llm_map, normalise_score
from sftmill.prompts import load_template
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.answer import ANSWER_STAGE, PARAGRAPH_END, passages_by_prompt

STAGE = "preferences"
QUALITY_REASONS = ("low_adherence", "unsafe", "offensive", "low_fluency")
SCHEMA = {
    "preference_pairs": """
        pair_id VARCHAR PRIMARY KEY,
        record_id VARCHAR,            -- the kept record whose response is chosen
        prompt VARCHAR,
        chosen VARCHAR,
        rejected VARCHAR,
        reason VARCHAR,               -- why the rejected response failed (reject vocabulary)
        detail VARCHAR,
        score DOUBLE,
        origin VARCHAR                -- ungrounded_answer | curation
    """,
}


def _pair(record_id: str, prompt: str, chosen: str, rejected: str, reason: str, detail: str,
          score: float | None, origin: str) -> dict:
    return {"pair_id": content_id(record_id, rejected), "record_id": record_id, "prompt": prompt,
            "chosen": chosen, "rejected": rejected, "reason": reason, "detail": detail,
            "score": score, "origin": origin}


def ungrounded_pairs(store: Store, recipe: Recipe) -> list[dict]:
    """Answer each grounded kept record's prompt without its passages; keep
    the answers the judge finds unsupported by those passages."""
    kept = store.query_dicts(f"SELECT record_id, prompt_id, prompt, answer FROM {KEPT_DATASET} "
                             "WHERE grounded ORDER BY record_id")
    if not kept:
        return []
    passages = passages_by_prompt(store)
    generator, judge = recipe.llm.generator, recipe.llm.judge
    answers = llm_map(make_llm(generator, store), generator, load_template(ANSWER_STAGE), kept,
                      lambda r: {"domain": recipe.domain.name, "prompt": r["prompt"], "passages": []},
                      stage="negative_answer", seed=recipe.seed,
                      temperature=recipe.answers.temperature, stop=PARAGRAPH_END)
    unsupported = [(r, a.text.strip()) for r, a in answers
                   if not isinstance(a, LLMOutputError) and a.text.strip()]
    verdicts = llm_map(make_llm(judge, store), judge, load_template("groundedness"), unsupported,
                       lambda ra: {"passages": [p["text"] for p in passages.get(ra[0]["prompt_id"], [])],
                                   "prompt": ra[0]["prompt"], "answer": ra[1]},
                       stage="negative_check", seed=recipe.seed)
    pairs = []
    for (record, text), verdict in verdicts:
        if isinstance(verdict, LLMOutputError):
            continue
        score = normalise_score(verdict.data["score"])
        if score < max(recipe.answers.min_groundedness, 1e-9):
            pairs.append(_pair(record["record_id"], record["prompt"], record["answer"], text,
                               "not_grounded", "answered without its passages; "
                               + verdict.data["reason"], score, "ungrounded_answer"))
    return pairs


def curation_pairs(store: Store) -> list[dict]:
    """Records curation dropped for their quality, paired with a kept record
    of the same instruction."""
    rows = store.query_dicts(
        f"SELECT k.record_id, k.prompt, k.answer AS chosen, d.answer AS rejected, r.reason, "
        f"r.detail, r.score FROM rejects r JOIN dataset d ON d.record_id = r.item_id "
        f"JOIN {KEPT_DATASET} k ON k.prompt = d.prompt "
        f"WHERE r.stage = 'curate' AND r.reason IN (SELECT unnest(?::VARCHAR[])) "
        f"ORDER BY k.record_id, d.record_id", [list(QUALITY_REASONS)])
    return [_pair(r["record_id"], r["prompt"], r["chosen"], r["rejected"], r["reason"],
                  r["detail"] or "", r["score"], "curation") for r in rows]


def write_pairs(store: Store, pairs: list[dict]) -> int:
    store.ensure_tables(SCHEMA)
    return store.replace_rows("preference_pairs", pairs)


def export_pairs(store: Store, out: Path) -> int:
    """`preferences.jsonl`: one {prompt, chosen, rejected, metadata} per pair
    (TRL's standard preference format), the reason in the metadata."""
    store.ensure_tables(SCHEMA)
    rows = store.query_dicts("SELECT * FROM preference_pairs ORDER BY pair_id")
    write_atomic(out, (json.dumps({
        "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
        "metadata": {"record_id": r["record_id"], "rejected_because": r["reason"],
                     "detail": r["detail"], "score": r["score"], "origin": r["origin"]}},
        ensure_ascii=False).encode() + b"\n" for r in rows))
    return len(rows)


@stage_task("preferences", recipe=("domain", "llm", "answers", "curation", "export", "seed"),
            templates=("answer", "groundedness"), reads=("dataset",), writes=("preference_pairs",))
def preference_pairs(recipe: Recipe, curated: StageResult) -> StageResult:
    """The pipeline's pairs: ungrounded answers the judge rejects, and curation's quality drops."""
    store = Store.open(curated.out.db_path)
    timer = StageTimer(store, STAGE)
    made = ungrounded_pairs(store, recipe)
    from_curation = curation_pairs(store)
    n = write_pairs(store, made + from_curation)
    return timer.done(store.ref("preference_pairs", "pair_id"), curated.n_out, n,
                      f"{len(made)} ungrounded answers, {len(from_curation)} from curation")
