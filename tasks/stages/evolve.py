"""Stage 8b — evolve: rewrite a share of the prompts harder with Evol-Instruct's
in-depth operations (Xu et al., 2023, WizardLM), between rephrase and the filter.

`difficulty.evolve_share` of the prompts that go on to the filter are chosen,
the easiest asked level first (then by a hash of the seed and the prompt's ID).
Each gets one operation of `difficulty.evolve_operations`, drawn the same way
(`prompts/evol_<operation>.jinja2`: add_constraints, deepen, concretize,
increase_reasoning, complicate_input).  A rewrite that passes the
eliminator's checks replaces its original (recorded as dropped: `evolved`,
with the operation and the rewrite), keeps its persona and asks for the next
level up; the filter, the difficulty judge and dedup then treat it like any
prompt.  A rewrite that fails leaves its original as it was and is dropped
with its reason (item `content_id(prompt, "evolve")`):
    empty_evolution         nothing came back
    truncated_evolution     the rewrite used the whole token budget
    copies_template_words   it repeats words of the evolution prompt: a run of
                            four of its words, "given prompt", "this method" …
    no_information_gain     the same text as its original
    not_a_request           its original was a question or a request and the
                            rewrite is neither (the model answered it)
    llm_invalid_output      the call failed
The Evol-Instruct generator (`tasks/generators/evol.py`) shares these checks.
"""

from __future__ import annotations

import json
import random
import re

from sftmill.core.ids import content_id
from sftmill.core.recipe import Recipe
from sftmill.core.sections import DEPTH_OPERATIONS, DIFFICULTY_LEVELS
from sftmill.core.store import Store
from sftmill.core.text_rules import copied_share
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map, truncated
from sftmill.prompts import PromptTemplate, load_template
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.generate import IMPERATIVES, INTERROGATIVES, first_word, prompt_row
from sftmill.tasks.stages.rephrase import REPLACED

STAGE = "evolve"
TEMPLATE_WORDS_RE = re.compile(
    r"(given|rewritten|created|original|new) (prompt|instruction)\b|#\s*(the )?(given|rewritten|"
    r"created) prompt\s*#|\brewrite (the|this) (prompt|instruction)\b|\bthis method\b|"
    r"\bno more than 10\b", re.IGNORECASE)
# Words a request may begin with besides a question (which then holds a question mark).
REQUEST_VERBS = IMPERATIVES + ("calculate", "estimate", "derive", "list", "give", "outline", "discuss",
                               "show", "name", "identify", "suppose", "consider", "imagine", "assume",
                               "write")
TEMPLATE_RUN = 4  # words: a run this long of the evolution prompt's own text is copied from it


def is_request(text: str) -> bool:
    """A question (a question mark) or a sentence that opens with a request verb."""
    return "?" in text or first_word(text) in INTERROGATIVES + REQUEST_VERBS


def pick_operation(seed: int, operations: tuple[str, ...], item_id: str, round_no: int = 1) -> str:
    """The operation for one item in one round: drawn by a hash of the three."""
    return random.Random(content_id(seed, item_id, round_no)).choice(operations)


def _normal(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .?!")


def fixed_text(template: PromptTemplate) -> str:
    """The evolution prompt's own words (its instruction left out)."""
    return "\n".join(m["content"] for m in template.skeleton())


def evolution_problem(parent: str, text: str, was_truncated: bool, template_text: str = "",
                      ) -> str | None:
    """The eliminator's textual checks (the judge's, in the generator, is
    separate); `template_text`: the evolution prompt's own words."""
    if not text.strip():
        return "empty_evolution"
    if was_truncated:
        return "truncated_evolution"
    if TEMPLATE_WORDS_RE.search(text) or copied_share(text, [template_text], TEMPLATE_RUN) > 0:
        return "copies_template_words"
    if _normal(text) == _normal(parent):
        return "no_information_gain"
    if is_request(parent) and not is_request(text):
        return "not_a_request"  # "The charge of an up quark is 2/3.": the model answered
    return None


def raised(level: str | None) -> str | None:
    """The next difficulty level up (the hardest stays)."""
    if level not in DIFFICULTY_LEVELS:
        return level
    return DIFFICULTY_LEVELS[min(DIFFICULTY_LEVELS.index(level) + 1, len(DIFFICULTY_LEVELS) - 1)]


def to_evolve(prompts: list[dict], share: float, seed: int) -> list[dict]:
    """`share` of `prompts`: the easiest asked level first (a prompt with no
    level counts as the easiest), then by a hash of the seed and its ID."""
    rank = {level: i for i, level in enumerate(DIFFICULTY_LEVELS)}
    order = sorted(prompts, key=lambda p: (rank.get(p.get("difficulty"), 0),
                                           content_id(seed, p["prompt_id"])))
    return order[:round(share * len(prompts))]


def evolution_id(prompt_id: str) -> str:
    return content_id(prompt_id, STAGE)


def evolve_prompts(store: Store, recipe: Recipe) -> tuple[int, int]:
    """Rewrite the chosen prompts; returns (prompts sent, rewrites kept)."""
    store.execute("DELETE FROM rejects WHERE stage = ?", [STAGE])  # a rerun starts over
    store.execute("DELETE FROM candidate_prompts WHERE origin = 'evolved'")
    spec = recipe.difficulty
    prompts = store.query_dicts(
        f"SELECT * FROM candidate_prompts WHERE prompt_id NOT IN ({REPLACED}) ORDER BY prompt_id")
    todo = to_evolve(prompts, spec.evolve_share, recipe.seed)
    if not todo:
        return 0, 0
    endpoint = recipe.llm.generator
    llm = make_llm(endpoint, store)
    by_op: dict[str, list[dict]] = {}
    for p in todo:
        by_op.setdefault(pick_operation(recipe.seed, spec.evolve_operations, p["prompt_id"]),
                         []).append(p)
    rows, replaced = [], []
    with store.drops(STAGE) as drops:
        for op, group in sorted(by_op.items()):
            template = load_template(f"evol_{op}")
            own_words = fixed_text(template)
            results = llm_map(llm, endpoint, template, group,
                              lambda p: {"instruction": p["text"]},
                              stage=f"{STAGE}_{op}", seed=recipe.seed)
            for parent, result in answered(store, STAGE, results,
                                           lambda p: evolution_id(p["prompt_id"])):
                text = " ".join(result.text.split())
                problem = evolution_problem(parent["text"], text,
                                            truncated(result, endpoint.max_tokens), own_words)
                if problem:
                    drops.add(evolution_id(parent["prompt_id"]), problem, json.dumps(
                        {"operation": op, "prompt_id": parent["prompt_id"], "text": text[:300]},
                        ensure_ascii=False))
                    continue
                row = prompt_row(text, "evolved", parent["prompt_id"], parent["profile_id"],
                                 parent["task_type"], llm.model, template.version, result.key,
                                 parent.get("persona"), raised(parent.get("difficulty")))
                rows.append(row)
                replaced.append((parent["prompt_id"], "evolved", f"{op}: {text[:300]}", None))
    store.insert("candidate_prompts", rows)
    store.reject_many(STAGE, replaced)
    return len(todo), len(rows)


@stage_task("evolve", recipe=("llm", "difficulty", "seed"),
            templates=tuple(f"evol_{op}" for op in DEPTH_OPERATIONS),
            reads=("candidate_prompts",), writes=("candidate_prompts",))
def evolve(recipe: Recipe, rephrased: StageResult) -> StageResult:
    store = Store.open(rephrased.out.db_path)
    timer = StageTimer(store, STAGE)
    n_in, made = evolve_prompts(store, recipe)
    note = (f"{made} of {n_in} prompts rewritten harder" if n_in
            else "off (difficulty.evolve_share: 0)")
    return timer.done(store.ref("candidate_prompts", "prompt_id"), n_in, made, note)
