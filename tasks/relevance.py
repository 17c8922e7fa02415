"""Stage 3 — relevance filter: the judge LLM scores every chunk against the
recipe's domain (1–5, mapped to 0–1) and gives a reason.

Score first, decide second: scores are stored in `relevance`; the recipe's
`thresholds.relevance` decides which chunks are kept, so changing the
threshold never re-asks the LLM.  Rejects: `not_relevant` (score below the
threshold, with its score and reason) and `llm_invalid_output`.
"""

from __future__ import annotations

from sftmill.batch import judge_into, record_low_scores
from sftmill.config import Recipe
from sftmill.stages import StageResult, StageTimer, stage_task
from sftmill.store import Store

STAGE = "relevance"
TEMPLATE = "relevance"


def chunk_variables(recipe: Recipe, heading: str, text: str) -> dict:
    domain = recipe.domain
    return {"domain": domain.name, "description": domain.description,
            "relevant": domain.relevant, "subdomains": [s.name for s in domain.subdomains],
            "heading": heading or "", "text": text}


def score_chunks(store: Store, recipe: Recipe) -> int:
    """Ask the judge about every chunk without a score yet; return how many were asked."""
    todo = store.execute(
        "SELECT chunk_id, heading, text FROM chunks WHERE chunk_id NOT IN "
        "(SELECT chunk_id FROM relevance) ORDER BY chunk_id"
    )
    if recipe.sizes.max_chunks is not None:
        todo = todo[: max(0, recipe.sizes.max_chunks - store.count("relevance"))]
    items = [(chunk_id, chunk_variables(recipe, heading, text)) for chunk_id, heading, text in todo]
    return judge_into(store, recipe, TEMPLATE, items, stage=STAGE, table="relevance",
                      id_column="chunk_id")


def decide(store: Store, threshold: float) -> int:
    """Record `not_relevant` rejects for scored chunks under the threshold
    (and clear them for chunks now above it); return the number kept."""
    record_low_scores(store, STAGE, "relevance", "chunk_id", threshold, "not_relevant")
    return len(kept_chunk_ids(store, threshold))


def kept_chunk_ids(store: Store, threshold: float) -> list[str]:
    return [r[0] for r in store.execute(
        "SELECT r.chunk_id FROM relevance r JOIN chunks c USING (chunk_id) "
        "WHERE r.score >= ? ORDER BY r.chunk_id", [threshold])]


@stage_task("relevance", sections=("domain", "llm", "sizes", "thresholds", "seed"),
            templates=(TEMPLATE,))
def relevance(recipe: Recipe, chunks: StageResult) -> StageResult:
    store = Store.open(chunks.out.db_path)
    timer = StageTimer(store, STAGE)
    asked = score_chunks(store, recipe)
    kept = decide(store, recipe.thresholds.relevance)
    out = store.ref("relevance", "chunk_id")
    return timer.done(out, store.count("chunks"), kept, f"{asked} chunks sent to the judge")
