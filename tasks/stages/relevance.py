"""Stage 3 — relevance filter: the judge LLM scores every chunk against the
recipe's domain (1–5, mapped to 0–1) and gives a reason.

Score first, decide second: scores are stored in `relevance`; the recipe's
`thresholds.relevance` decides which chunks are kept, so changing the
threshold never re-asks the LLM.  Rejects: `not_relevant` (score below the
threshold, with its score and reason) and `llm_invalid_output`.

Work sized by the target: chunks are judged in waves, only as many as the
target needs (`needed_profiles` × `sizes.profile_margin` relevant chunks, at
the keep rate seen so far), drawn round-robin across documents in a seeded
order; the flow asks for another wave while relevant chunks are missing.
A chunk never judged has no `relevance` row and no reject: the stage's note
and `sftmill stats` count it as not judged.
"""

from __future__ import annotations

from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.llm.map import judge_into, record_low_scores
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.sizing import (
    MAX_WAVES,
    MIN_WAVE,
    PRIOR_KEEP_RATE,
    interleave,
    wanted_relevant,
    wave_size,
)

STAGE = "relevance"
TEMPLATE = "relevance"


def chunk_variables(recipe: Recipe, heading: str, text: str) -> dict:
    domain = recipe.domain
    return {"domain": domain.name, "description": domain.description,
            "relevant": domain.relevant, "subdomains": [s.name for s in domain.subdomains],
            "heading": heading or "", "text": text}


UNJUDGED = "FROM chunks WHERE chunk_id NOT IN (SELECT chunk_id FROM relevance)"


def next_wave_size(store: Store, recipe: Recipe) -> int:
    """How many chunks the next wave judges: 0 when enough relevant chunks
    are kept (or none is left to judge)."""
    judged = store.count("relevance")
    kept = len(kept_chunk_ids(store, recipe.thresholds.relevance))
    room = not_judged(store)
    if recipe.sizes.max_chunks is not None:
        room = min(room, max(0, recipe.sizes.max_chunks - judged))
    rate = kept / judged if judged >= MIN_WAVE // 2 else PRIOR_KEEP_RATE
    return wave_size(wanted_relevant(recipe) - kept, rate, room)


def next_wave(store: Store, recipe: Recipe) -> list[str]:
    """The chunks to judge next, spread over the documents."""
    n = next_wave_size(store, recipe)
    if n == 0:
        return []
    return interleave(store.execute(f"SELECT chunk_id, doc_id {UNJUDGED}"), recipe.seed)[:n]


def score_chunks(store: Store, recipe: Recipe) -> int:
    """Ask the judge about the next wave of chunks; return how many were asked."""
    wave = next_wave(store, recipe)
    todo = store.execute("SELECT chunk_id, heading, text FROM chunks "
                         "WHERE chunk_id IN (SELECT unnest(?)) ORDER BY chunk_id", [wave])
    items = [(chunk_id, chunk_variables(recipe, heading, text)) for chunk_id, heading, text in todo]
    return judge_into(store, recipe, TEMPLATE, items, stage=STAGE, table="relevance",
                      id_column="chunk_id")


def not_judged(store: Store) -> int:
    """Chunks never sent to the judge (the target did not need them)."""
    return int(store.scalar(f"SELECT count(*) {UNJUDGED}"))


def more_wanted(relevant: StageResult, recipe: Recipe, wave: int) -> bool:
    """Another wave: relevant chunks still missing and chunks left to judge."""
    return wave < MAX_WAVES and next_wave_size(Store.open(relevant.out.db_path), recipe) > 0


def decide(store: Store, threshold: float) -> int:
    """Record `not_relevant` rejects for scored chunks under the threshold
    (and clear them for chunks now above it); return the number kept."""
    record_low_scores(store, STAGE, "relevance", "chunk_id", threshold, "not_relevant")
    return len(kept_chunk_ids(store, threshold))


def kept_chunk_ids(store: Store, threshold: float) -> list[str]:
    return [r[0] for r in store.execute(
        "SELECT r.chunk_id FROM relevance r JOIN chunks c USING (chunk_id) "
        "WHERE r.score >= ? ORDER BY r.chunk_id", [threshold])]


@stage_task("relevance", recipe=("domain", "llm", "sizes", "thresholds", "seed"),
            templates=(TEMPLATE,), reads=("chunks",), writes=("relevance",))
def relevance(recipe: Recipe, chunks: StageResult, wave: int = 1) -> StageResult:
    store = Store.open(chunks.out.db_path)
    timer = StageTimer(store, STAGE)
    asked = score_chunks(store, recipe)
    kept = decide(store, recipe.thresholds.relevance)
    out = store.ref("relevance", "chunk_id")
    total, unjudged = store.count("chunks"), not_judged(store)
    note = f"{asked} chunks sent to the judge"
    if unjudged:
        note += f"; {unjudged} of {total} not judged (the target needs no more)"
    return timer.done(out, total, kept, note)
