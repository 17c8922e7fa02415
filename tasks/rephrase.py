"""Stage 8 — rephrase: `rephrasings_per_prompt` lexical variants of every
generated and broadened prompt, so that a few openings ("Could you please
explain…") do not dominate.  The most common openings are named in the
prompt so the model steers away from them.  The stage reports the share of
the most common first three words before and after.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from sftmill.batch import answered, llm_map
from sftmill.config import Recipe
from sftmill.llm import make_llm
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.stages import StageResult, StageTimer, stage_task
from sftmill.store import Store
from tasks.generate import prompt_row

STAGE = "rephrase"
TEMPLATE = "rephrase"
_WORD = re.compile(r"[\w']+")


def opening(text: str, n_words: int = 3) -> str:
    return " ".join(_WORD.findall(text.lower())[:n_words])


def top_opening(texts: list[str]) -> tuple[str, float]:
    """The most common first three words and their share of `texts`."""
    if not texts:
        return "", 0.0
    (words, count), = Counter(opening(t) for t in texts).most_common(1)
    return words, count / len(texts)


def rephrase_prompts(store: Store, recipe: Recipe) -> tuple[int, int]:
    n = recipe.sizes.rephrasings_per_prompt
    originals = store.query_dicts(
        "SELECT * FROM candidate_prompts WHERE origin IN ('generated', 'broadened') "
        "ORDER BY prompt_id")
    if n == 0 or not originals:
        return len(originals), 0
    common = [w for w, c in Counter(opening(p["text"]) for p in originals).most_common(3) if c > 1]
    base = load_template(TEMPLATE)
    template = with_schema(base, exact_items(base.schema, "variants", n))
    endpoint = recipe.llm.generator
    llm = make_llm(endpoint, store)
    results = llm_map(llm, endpoint, template, originals,
                      lambda p: {"prompt": p["text"], "n": n, "avoid_openings": common},
                      stage=STAGE, seed=recipe.seed)
    rows = []
    for parent, result in answered(store, STAGE, results, lambda p: p["prompt_id"]):
        rows += [prompt_row(v, "rephrased", parent["prompt_id"], parent["profile_id"],
                            parent["task_type"], llm.model, template.version, result.key)
                 for v in result.data["variants"]]
    store.insert("candidate_prompts", rows)
    return len(originals), len(rows)


@stage_task("rephrase", sections=("llm", "sizes", "seed"), templates=(TEMPLATE,))
def rephrase(recipe: Recipe, broadened: StageResult) -> StageResult:
    store = Store.open(broadened.out.db_path)
    timer = StageTimer(store, STAGE)
    before = [r[0] for r in store.execute(
        "SELECT text FROM candidate_prompts WHERE origin IN ('generated', 'broadened')")]
    n_in, made = rephrase_prompts(store, recipe)
    after = [r[0] for r in store.execute("SELECT text FROM candidate_prompts")]
    (w0, s0), (w1, s1) = top_opening(before), top_opening(after)
    store.set_meta("opening_share", json.dumps({"before": [w0, round(s0, 3)],
                                                "after": [w1, round(s1, 3)]}))
    return timer.done(store.ref("candidate_prompts", "prompt_id"), n_in, made,
                      f'top opening "{w0}" {s0:.0%} before, "{w1}" {s1:.0%} after')
