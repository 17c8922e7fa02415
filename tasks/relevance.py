"""Stage 3 — relevance filter: the judge LLM scores every chunk against the
recipe's domain (1–5, mapped to 0–1) and gives a reason.

Score first, decide second: scores are stored in `relevance`; the recipe's
`thresholds.relevance` decides which chunks are kept, so changing the
threshold never re-asks the LLM.  Rejects: `not_relevant` (score below the
threshold, with its score and reason) and `llm_invalid_output`.
"""

from __future__ import annotations

from sftmill.batch import llm_map
from sftmill.config import Recipe
from sftmill.llm import LLMOutputError, make_llm
from sftmill.prompts import load_template
from sftmill.stages import StageResult, StageTimer, stage_task
from sftmill.store import Store

STAGE = "relevance"
TEMPLATE = "relevance"


def normalise_score(score: int) -> float:
    """1..5 → 0..1."""
    return (score - 1) / 4


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
    template = load_template(TEMPLATE)
    endpoint = recipe.llm.judge
    llm = make_llm(endpoint, store)
    results = llm_map(llm, endpoint, template, todo,
                      lambda row: chunk_variables(recipe, row[1], row[2]),
                      stage=STAGE, seed=recipe.seed)
    rows = []
    for (chunk_id, _heading, _text), result in results:
        if isinstance(result, LLMOutputError):
            store.reject(STAGE, chunk_id, "llm_invalid_output", str(result))
            continue
        rows.append({"chunk_id": chunk_id, "score": normalise_score(result.data["score"]),
                     "reason": result.data["reason"], "model": llm.model,
                     "template_version": template.version, "call_key": result.key})
    store.insert("relevance", rows)
    return len(todo)


def decide(store: Store, threshold: float) -> int:
    """Record `not_relevant` rejects for scored chunks under the threshold
    (and clear them for chunks now above it); return the number kept."""
    store.execute("DELETE FROM rejects WHERE stage = ? AND reason = 'not_relevant'", [STAGE])
    low = store.execute("SELECT chunk_id, score, reason FROM relevance WHERE score < ?", [threshold])
    for chunk_id, score, reason in low:
        store.reject(STAGE, chunk_id, "not_relevant", reason, score)
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
