"""Stage 9 — filter prompts.  Without asking anyone, a prompt is dropped
as `too_long` (longer than `thresholds.max_prompt_chars`), `vague_prompt` (no
content word: "What is this?", "How would you answer the question?"),
`not_self_contained` (it presupposes a text the user will not have: "the
passage", "the author"), `malformed_prompt` (a doubled word, unbalanced quotes,
cut off) or `degenerate` (`sftmill.core.text_rules`); the judge scores every other candidate (1–5 → 0–1)
with a reason, and `thresholds.prompt_quality` decides.  A threshold of 0
turns the judge off (every prompt would pass: its calls would buy nothing).
Rejects: those five, `low_prompt_quality` (irrelevant, meaningless or
wrong, with the judge's reason and score), `llm_invalid_output`.  With
`difficulty` in the recipe, the judge then says each passing prompt's level
(`prompt_difficulty`; it decides nothing here).
"""

from __future__ import annotations

from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.core.text import STOPWORDS, tokens
from sftmill.core.text_rules import degenerate, malformed_prompt, presupposes_source
from sftmill.llm.map import judge_into, record_low_scores
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.conditions import DIFFICULTY_STAGE, judge_difficulty
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


CHEAP_REASONS = ("too_long", "vague_prompt", "not_self_contained", "malformed_prompt", "degenerate")


def cheap_reject(text: str, max_chars: int) -> tuple[str, str] | None:
    """(reason, what was found) for a drop that needs no judge, or None."""
    if len(text) > max_chars:
        return "too_long", f"{len(text)} characters > thresholds.max_prompt_chars {max_chars}"
    if is_vague(text):
        return "vague_prompt", "no content word"
    for reason, finding in (("not_self_contained", presupposes_source(text, "prompt")),
                            ("malformed_prompt", malformed_prompt(text)),
                            ("degenerate", degenerate(text))):
        if finding:
            return reason, finding
    return None


def score_prompts(store: Store, recipe: Recipe) -> int:
    if recipe.thresholds.prompt_quality > 0:  # the judge is back on: ask it about everything
        store.execute("DELETE FROM prompt_scores WHERE reason = ?", [JUDGE_OFF])
    candidates = store.query_dicts(
        "SELECT prompt_id, text, prompt_id IN (SELECT prompt_id FROM prompt_scores) AS scored "
        f"FROM candidate_prompts WHERE prompt_id NOT IN ({REPLACED}) ORDER BY prompt_id")
    cheap = {r["prompt_id"]: reason for r in candidates
             if (reason := cheap_reject(r["text"], recipe.thresholds.max_prompt_chars))}
    store.execute("DELETE FROM rejects WHERE stage = ? AND reason IN (SELECT unnest(?))",
                  [STAGE, list(CHEAP_REASONS)])
    store.execute("DELETE FROM prompt_scores WHERE prompt_id IN (SELECT unnest(?))", [list(cheap)])
    store.reject_many(STAGE, [(r["prompt_id"], cheap[r["prompt_id"]][0],
                               f"{cheap[r['prompt_id']][1]}: {r['text'][:300]}", None)
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


def decide(store: Store, threshold: float) -> list[tuple[str, str]]:
    """Record the low scores as drops; (prompt_id, text) of those that pass."""
    record_low_scores(store, STAGE, "prompt_scores", "prompt_id", threshold, "low_prompt_quality")
    return passed(store, threshold)


def passed(store: Store, threshold: float) -> list[tuple[str, str]]:
    """(prompt_id, text) of the candidates that pass the filter."""
    return [tuple(r) for r in store.execute(
        "SELECT c.prompt_id, c.text FROM candidate_prompts c JOIN prompt_scores s USING (prompt_id) "
        f"WHERE s.score >= ? AND c.prompt_id NOT IN ({REPLACED}) AND c.prompt_id NOT IN "
        f"(SELECT item_id FROM rejects WHERE stage = '{STAGE}' AND reason IN (SELECT unnest(?))) "
        "ORDER BY c.prompt_id", [threshold, list(CHEAP_REASONS)])]


@stage_task("prompt_filter",
            recipe=("domain", "llm", "thresholds", "embedding", "dedup_embedding", "difficulty",
                    "seed"),
            templates=(TEMPLATE, DIFFICULTY_STAGE), reads=("candidate_prompts",),
            writes=("prompt_scores", "prompt_difficulty"))
def prompt_filter(recipe: Recipe, candidates: StageResult) -> StageResult:
    store = Store.open(candidates.out.db_path)
    timer = StageTimer(store, STAGE)
    asked = score_prompts(store, recipe)
    kept = decide(store, recipe.thresholds.prompt_quality)
    leveled = 0
    if recipe.difficulty.enabled and recipe.difficulty.judge:  # the level of what passed
        leveled = judge_difficulty(store, recipe, kept)
    n_in = store.scalar(f"SELECT count(*) FROM candidate_prompts WHERE prompt_id NOT IN ({REPLACED})")
    return timer.done(store.ref("prompt_scores", "prompt_id"), int(n_in),
                      len(kept), f"{asked} prompts sent to the judge"
                      + (f", {leveled} judged for difficulty" if leveled else ""))
