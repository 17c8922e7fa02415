"""Stage 9 — filter prompts: the judge scores every candidate prompt (1–5 →
0–1) with a reason; `thresholds.prompt_quality` decides.  Rejects:
`low_prompt_quality` (irrelevant, meaningless or wrong, with the judge's
reason and score), `llm_invalid_output`.
"""

from __future__ import annotations

from sftmill.batch import judge_into, record_low_scores
from sftmill.config import Recipe
from sftmill.stages import StageResult, StageTimer, stage_task
from sftmill.store import Store

STAGE = "prompt_filter"
TEMPLATE = "prompt_filter"


def score_prompts(store: Store, recipe: Recipe) -> int:
    todo = store.execute(
        "SELECT prompt_id, text FROM candidate_prompts WHERE prompt_id NOT IN "
        "(SELECT prompt_id FROM prompt_scores) ORDER BY prompt_id")
    subdomains = [s.name for s in recipe.domain.subdomains]
    items = [(prompt_id, {"domain": recipe.domain.name, "subdomains": subdomains, "prompt": text})
             for prompt_id, text in todo]
    return judge_into(store, recipe, TEMPLATE, items, stage=STAGE, table="prompt_scores",
                      id_column="prompt_id")


def decide(store: Store, threshold: float) -> int:
    record_low_scores(store, STAGE, "prompt_scores", "prompt_id", threshold, "low_prompt_quality")
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
