"""Stage 9 — filter prompts.  A prompt with no content word ("What is
this?", "How would you answer the question?") is dropped as `vague_prompt`,
one longer than `thresholds.max_prompt_chars` as `too_long`, without asking
anyone; the judge scores every other candidate (1–5 → 0–1)
with a reason, and `thresholds.prompt_quality` decides.  A threshold of 0
turns the judge off (every prompt would pass: its calls would buy nothing).
Rejects: `vague_prompt`, `too_long`, `low_prompt_quality` (irrelevant, meaningless or
wrong, with the judge's reason and score), `llm_invalid_output`.
"""

from __future__ import annotations

from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.core.text import STOPWORDS, tokens
from sftmill.llm.map import judge_into, record_low_scores
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.dedup import search_ahead
from sftmill.tasks.stages.rephrase import REPLACED

STAGE = "prompt_filter"
TEMPLATE = "prompt_filter"


# Words that carry no subject: a prompt made only of these and stop words is vague.
VAGUE_WORDS = STOPWORDS | frozenset(
    "question questions answer answers explain describe tell task passage text topic thing "
    "things something anything like mean means please know understand give write help".split())


def is_vague(text: str) -> bool:
    """No content word: nothing says what the prompt is about."""
    return all(t in VAGUE_WORDS for t in tokens(text))


JUDGE_OFF = "judge off (thresholds.prompt_quality: 0)"


def cheap_reject(text: str, max_chars: int) -> str | None:
    """Drops that need no judge: `too_long` (rambling) and `vague_prompt`."""
    if len(text) > max_chars:
        return "too_long"
    return "vague_prompt" if is_vague(text) else None


def score_prompts(store: Store, recipe: Recipe) -> int:
    if recipe.thresholds.prompt_quality > 0:  # the judge is back on: ask it about everything
        store.execute("DELETE FROM prompt_scores WHERE reason = ?", [JUDGE_OFF])
    candidates = store.query_dicts(
        "SELECT prompt_id, text, prompt_id IN (SELECT prompt_id FROM prompt_scores) AS scored "
        f"FROM candidate_prompts WHERE prompt_id NOT IN ({REPLACED}) ORDER BY prompt_id")
    cheap = {r["prompt_id"]: reason for r in candidates
             if (reason := cheap_reject(r["text"], recipe.thresholds.max_prompt_chars))}
    store.execute("DELETE FROM rejects WHERE stage = ? AND reason IN ('vague_prompt', 'too_long')",
                  [STAGE])
    store.reject_many(STAGE, [(r["prompt_id"], cheap[r["prompt_id"]], r["text"][:300], None)
                              for r in candidates if r["prompt_id"] in cheap])
    todo = [(r["prompt_id"], r["text"]) for r in candidates
            if not r["scored"] and r["prompt_id"] not in cheap]
    if recipe.thresholds.prompt_quality == 0:
        store.insert("prompt_scores", [{"prompt_id": pid, "score": 1.0,
                                        "reason": JUDGE_OFF}
                                       for pid, _text in todo])
        return 0
    subdomains = [s.name for s in recipe.domain.subdomains]
    items = [(prompt_id, {"domain": recipe.domain.name, "subdomains": subdomains, "prompt": text})
             for prompt_id, text in todo]
    # Dedup embeds the prompts that pass and searches their pairs: those the
    # judge may pass are embedded and searched while it is asked (a few it
    # drops for nothing).
    ahead = [r for r in candidates if r["prompt_id"] not in cheap]
    return judge_into(store, recipe, TEMPLATE, items, stage=STAGE, table="prompt_scores",
                      id_column="prompt_id", meanwhile=lambda: search_ahead(
                          store, recipe, [r["prompt_id"] for r in ahead], [r["text"] for r in ahead]))


def decide(store: Store, threshold: float) -> int:
    record_low_scores(store, STAGE, "prompt_scores", "prompt_id", threshold, "low_prompt_quality")
    return int(store.scalar(
        "SELECT count(*) FROM prompt_scores WHERE score >= ? AND prompt_id NOT IN "
        f"({REPLACED}) AND prompt_id NOT IN (SELECT item_id FROM rejects WHERE stage = '{STAGE}' "
        "AND reason IN ('vague_prompt', 'too_long'))", [threshold]))


@stage_task("prompt_filter",
            recipe=("domain", "llm", "thresholds", "embedding", "dedup_embedding", "seed"),
            templates=(TEMPLATE,), reads=("candidate_prompts",), writes=("prompt_scores",))
def prompt_filter(recipe: Recipe, candidates: StageResult) -> StageResult:
    store = Store.open(candidates.out.db_path)
    timer = StageTimer(store, STAGE)
    asked = score_prompts(store, recipe)
    kept = decide(store, recipe.thresholds.prompt_quality)
    n_in = store.scalar(f"SELECT count(*) FROM candidate_prompts WHERE prompt_id NOT IN ({REPLACED})")
    return timer.done(store.ref("prompt_scores", "prompt_id"), int(n_in),
                      kept, f"{asked} prompts sent to the judge")
