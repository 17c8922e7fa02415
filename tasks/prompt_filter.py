"""Stage 9 — filter prompts: the judge scores every candidate prompt (1–5 →
0–1) with a reason; `thresholds.prompt_quality` decides.  Rejects:
`low_prompt_quality` (irrelevant, meaningless or wrong, with the judge's
reason and score), `llm_invalid_output`.
"""

from __future__ import annotations

from sftmill.batch import llm_map
from sftmill.config import Recipe
from sftmill.llm import LLMOutputError, make_llm
from sftmill.prompts import load_template
from sftmill.stages import StageResult, StageTimer, stage_task
from sftmill.store import Store
from tasks.relevance import normalise_score

STAGE = "prompt_filter"
TEMPLATE = "prompt_filter"


def score_prompts(store: Store, recipe: Recipe) -> int:
    todo = store.execute(
        "SELECT prompt_id, text FROM candidate_prompts WHERE prompt_id NOT IN "
        "(SELECT prompt_id FROM prompt_scores) ORDER BY prompt_id")
    template = load_template(TEMPLATE)
    endpoint = recipe.llm.judge
    llm = make_llm(endpoint, store)
    subdomains = [s.name for s in recipe.domain.subdomains]
    results = llm_map(llm, endpoint, template, todo,
                      lambda row: {"domain": recipe.domain.name, "subdomains": subdomains,
                                   "prompt": row[1]},
                      stage=STAGE, seed=recipe.seed)
    rows = []
    for (prompt_id, _text), result in results:
        if isinstance(result, LLMOutputError):
            store.reject(STAGE, prompt_id, "llm_invalid_output", str(result))
            continue
        rows.append({"prompt_id": prompt_id, "score": normalise_score(result.data["score"]),
                     "reason": result.data["reason"], "model": llm.model,
                     "template_version": template.version, "call_key": result.key})
    store.insert("prompt_scores", rows)
    return len(todo)


def decide(store: Store, threshold: float) -> int:
    store.execute("DELETE FROM rejects WHERE stage = ? AND reason = 'low_prompt_quality'", [STAGE])
    for prompt_id, score, reason in store.execute(
            "SELECT prompt_id, score, reason FROM prompt_scores WHERE score < ?", [threshold]):
        store.reject(STAGE, prompt_id, "low_prompt_quality", reason, score)
    return int(store.scalar("SELECT count(*) FROM prompt_scores WHERE score >= ?", [threshold]))


@stage_task("prompt_filter", sections=("domain", "llm", "thresholds", "seed"),
            templates=(TEMPLATE,))
def prompt_filter(recipe: Recipe, candidates: StageResult) -> StageResult:
    store = Store.open(candidates.out.db_path)
    timer = StageTimer(store, STAGE)
    asked = score_prompts(store, recipe)
    kept = decide(store, recipe.thresholds.prompt_quality)
    return timer.done(store.ref("prompt_scores", "prompt_id"), store.count("candidate_prompts"),
                      kept, f"{asked} prompts sent to the judge")
