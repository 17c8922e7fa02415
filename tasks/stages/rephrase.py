"""Stage 8 — rephrase: replace monotone phrasing (the recipe's step 8).

The openings (first three words) of the generated and broadened prompts are
counted; an opening held by more than `thresholds.max_opening_share` of them
is over-represented, and the prompts beyond that share (the first ones by ID
keep their wording) are rephrased.  Each asks for `rephrasings_per_prompt`
variants with a suggested opening of its own and the over-represented ones
named as openings to avoid; the first variant that does not start with an
over-represented opening replaces its original, which is recorded as dropped
(`rephrased`, with the variant in the detail).  When no variant changes the
opening the original stays (`rephrase_failed`, the same opening kept).

`sizes.keep_rephrased_originals: true` restores the broad variant: every
prompt is rephrased and originals and all variants are kept side by side.
The stage reports the commonest opening's share before and after.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map, whole_items
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.generate import prompt_row

STAGE = "rephrase"
TEMPLATE = "rephrase"
_WORD = re.compile(r"[\w']+")
# Openings suggested to the model, one per rephrased prompt in turn: a small
# model follows "begin with X" far better than "be different".
STARTERS = ("Explain", "Describe", "Why", "In what way", "Help me understand",
            "I am studying this:", "Walk me through", "Summarize", "For an exam,",
            "Give a short account of", "Briefly,", "Clarify", "Tell me", "What makes")


def opening(text: str, n_words: int = 3) -> str:
    return " ".join(_WORD.findall(text.lower())[:n_words])


def top_opening(texts: list[str]) -> tuple[str, float]:
    """The most common first three words and their share of `texts`."""
    if not texts:
        return "", 0.0
    (words, count), = Counter(opening(t) for t in texts).most_common(1)
    return words, count / len(texts)


def over_represented(texts: list[str], max_share: float) -> set[str]:
    """Openings held by more than `max_share` of `texts` (and by at least two)."""
    counts = Counter(opening(t) for t in texts)
    return {w for w, c in counts.items() if c > max(1, max_share * len(texts))}


def to_rephrase(prompts: list[dict], max_share: float) -> list[dict]:
    """The prompts beyond the allowed share of each over-represented opening
    (prompts in ID order; the first ones keep their wording)."""
    texts = [p["text"] for p in prompts]
    common = over_represented(texts, max_share)
    allowed = int(max_share * len(texts))
    seen: Counter = Counter()
    out = []
    for p in prompts:
        words = opening(p["text"])
        seen[words] += 1
        if words in common and seen[words] > allowed:
            out.append(p)
    return out


def suggested_starter(index: int, avoid: set[str]) -> str:
    usable = [s for s in STARTERS if opening(s) not in avoid] or list(STARTERS)
    return usable[index % len(usable)]


def pick_variant(variants: list[str], original: str, avoid: set[str]) -> str | None:
    """The first variant that is new text and opens differently from `avoid`."""
    for v in variants:
        v = " ".join(v.split())
        if v and v.lower() != original.lower() and opening(v) not in avoid:
            return v
    return None


def rephrase_prompts(store: Store, recipe: Recipe) -> tuple[int, int]:
    n = recipe.sizes.rephrasings_per_prompt
    originals = store.query_dicts(
        "SELECT * FROM candidate_prompts WHERE origin IN ('generated', 'broadened') "
        "ORDER BY prompt_id")
    store.execute("DELETE FROM rejects WHERE stage = ?", [STAGE])
    if n == 0 or not originals:
        return 0, 0
    keep_both = recipe.sizes.keep_rephrased_originals
    texts = [p["text"] for p in originals]
    avoid = over_represented(texts, recipe.thresholds.max_opening_share)
    todo = originals if keep_both else to_rephrase(originals, recipe.thresholds.max_opening_share)
    if not todo:
        return 0, 0
    listed = sorted(avoid, key=lambda w: -sum(opening(t) == w for t in texts))[:5]
    base = load_template(TEMPLATE)
    template = with_schema(base, exact_items(base.schema, "variants", n, at_least=1))
    endpoint = recipe.llm.generator
    llm = make_llm(endpoint, store)
    starters = {p["prompt_id"]: suggested_starter(i, avoid) for i, p in enumerate(todo)}
    results = llm_map(llm, endpoint, template, todo,
                      lambda p: {"prompt": p["text"], "n": n, "avoid_openings": listed,
                                 "starter": starters[p["prompt_id"]]},
                      stage=STAGE, seed=recipe.seed)
    rows, replaced, failed = [], [], []
    for parent, result in answered(store, STAGE, results, lambda p: p["prompt_id"]):
        variants, _cut = whole_items(result, "variants", endpoint.max_tokens)  # the original stays
        if not keep_both:
            chosen = pick_variant(variants, parent["text"], avoid)
            if chosen is None:  # the original goes on unchanged
                failed.append(parent["prompt_id"])
                continue
            variants = [chosen]
        new = [prompt_row(v, "rephrased", parent["prompt_id"], parent["profile_id"],
                          parent["task_type"], llm.model, template.version, result.key,
                          parent.get("persona"), parent.get("difficulty"))
               for v in variants]
        rows += new
        if not keep_both:
            replaced.append((parent["prompt_id"], "rephrased", f"replaced by: {new[0]['text'][:300]}",
                             None))
    store.insert("candidate_prompts", rows)
    store.reject_many(STAGE, replaced)
    # Not drops (their originals go on): the prompts no variant could
    # re-open, kept in the run's meta table for whoever tunes the prompt.
    store.set_meta("rephrase_failed", json.dumps(failed))
    return len(todo), len(rows)


# The originals that a variant or a harder rewrite (`evolve`) replaced: later stages leave them out.
REPLACED = ("SELECT item_id FROM rejects WHERE (stage = 'rephrase' AND reason = 'rephrased') "
            "OR (stage = 'evolve' AND reason = 'evolved')")


def forward_texts(store: Store) -> list[str]:
    """The candidate prompts that go on to the filter: all but replaced originals."""
    return [r[0] for r in store.execute(
        f"SELECT text FROM candidate_prompts WHERE prompt_id NOT IN ({REPLACED})")]


@stage_task("rephrase", recipe=("llm", "sizes", "thresholds", "seed"), templates=(TEMPLATE,),
            reads=("candidate_prompts",), writes=("candidate_prompts",))
def rephrase(recipe: Recipe, broadened: StageResult) -> StageResult:
    store = Store.open(broadened.out.db_path)
    timer = StageTimer(store, STAGE)
    before = [r[0] for r in store.execute(
        "SELECT text FROM candidate_prompts WHERE origin IN ('generated', 'broadened')")]
    n_in, made = rephrase_prompts(store, recipe)
    (w0, s0), (w1, s1) = top_opening(before), top_opening(forward_texts(store))
    store.set_meta("opening_share", json.dumps({"before": [w0, round(s0, 3)],
                                                "after": [w1, round(s1, 3)]}))
    return timer.done(store.ref("candidate_prompts", "prompt_id"), n_in, made,
                      f'top opening "{w0}" {s0:.0%} before, "{w1}" {s1:.0%} after')
