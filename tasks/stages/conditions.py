"""Who a prompt is written as and how hard it is: the recipe's personas and
difficulty levels, spread over the generation calls to their target shares.

Each generation call (a profile's list, or one prompt told its opening) is
given one persona and one level: `spread` lays the labels out so that every
prefix of the calls keeps close to the shares, and the two lists are
shuffled apart with the recipe's seed (so a persona is not tied to a level).
Personas are the recipe's list, or `generate: N` drafted by the generator
from the domain's and the profiles' use cases in one call (topped up from
the use cases themselves when it gives fewer).  The level a prompt was
asked for is its target; the judge then says which level it is
(`judge_difficulty`, in the prompt filter), and the record carries both.
"""

from __future__ import annotations

import random

from sftmill.core.recipe import Recipe
from sftmill.core.sections import DIFFICULTY_LEVELS
from sftmill.core.store import Store
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.tasks.stages.sizing import split_shares, target_shares

PERSONAS_STAGE = "personas"
DIFFICULTY_STAGE = "difficulty"

# What a level asks of a prompt, in the generation templates' words ("Make it a question …").
ASKS = {"recall": "about one fact the passage states (what, who, when, which)",
        "explain": "that asks why or how something works, so that the answer must explain it",
        "multi_step": "that needs several steps of reasoning: combining two of the passage's "
                      "facts, comparing, or working out a consequence"}


def spread(shares: dict[str, float], n: int) -> list[str]:
    """`n` labels whose every prefix keeps close to `shares` (smooth weighted
    round robin: each step credits every label its share and takes the one
    with the most credit)."""
    credit = dict.fromkeys(sorted(shares), 0.0)
    out = []
    for _ in range(n if credit else 0):
        for label in credit:
            credit[label] += shares[label]
        best = max(credit, key=lambda k: credit[k])
        credit[best] -= 1.0
        out.append(best)
    return out


def assign(recipe: Recipe, personas: dict[str, float], n: int) -> list[tuple[str | None, str | None]]:
    """(persona, difficulty level) for each of `n` generation calls; None where
    the recipe asks for neither."""
    rng = random.Random(recipe.seed)
    who = spread(personas, n) or [None] * n
    levels = spread(dict(recipe.difficulty.levels), n) or [None] * n
    rng.shuffle(who)
    rng.shuffle(levels)
    return list(zip(who, levels))


def use_cases(store: Store, recipe: Recipe) -> list[str]:
    """The recipe's use cases, then the profiles' commonest (at most 20 in all)."""
    found = [u for (u,) in store.execute(
        "SELECT use_case FROM profiles WHERE coalesce(use_case, '') <> '' "
        "GROUP BY use_case ORDER BY count(*) DESC, use_case LIMIT 20")]
    return list(dict.fromkeys([*recipe.domain.use_cases, *found]))[:20]


def from_use_case(use_case: str) -> str:
    """A persona made of a use case: "someone preparing for an exam"."""
    text = use_case.strip().rstrip(".")
    return "someone " + (text[0].lower() + text[1:] if text[:2] != text[:2].upper() else text)


def as_phrase(persona: str) -> str:
    """A drafted persona as it reads inside a sentence: "An undergraduate …" → "an undergraduate …"."""
    text = " ".join(persona.split()).rstrip(".")
    return text[0].lower() + text[1:] if text[:1].isupper() and text[1:2].islower() else text


def draft_personas(store: Store, recipe: Recipe, n: int) -> list[tuple[str, str]]:
    """(persona, source) × n: the generator's, topped up from the use cases."""
    cases = use_cases(store, recipe) or [f"learning about {recipe.domain.name}"]
    base = load_template(PERSONAS_STAGE)
    template = with_schema(base, exact_items(base.schema, "personas", n, at_least=1))
    endpoint = recipe.llm.generator
    results = llm_map(make_llm(endpoint, store), endpoint, template, [PERSONAS_STAGE],
                      lambda _item: {"domain": recipe.domain.name, "use_cases": cases, "n": n},
                      stage=PERSONAS_STAGE, seed=recipe.seed)
    drafted = [as_phrase(p) for _item, result in
               answered(store, PERSONAS_STAGE, results, lambda item: item)
               for p in result.data["personas"]]
    out = [(p, "generated") for p in dict.fromkeys(p for p in drafted if len(p.split()) >= 2)][:n]
    known = {p.lower() for p, _source in out}
    for case in cases:
        persona = from_use_case(case)
        if len(out) < n and persona.lower() not in known:
            out.append((persona, "use_case"))
            known.add(persona.lower())
    return out


def choose_personas(store: Store, recipe: Recipe) -> dict[str, float]:
    """Persona → target share (the recipe's, or drafted), kept in the
    `personas` table for the card; empty when the recipe has none."""
    cfg = recipe.personas
    if cfg.given:
        rows = [(p.name, "recipe") for p in cfg.given]
        shares = split_shares([(p.name, p.share) for p in cfg.given])
    elif cfg.generate:
        rows = draft_personas(store, recipe, cfg.generate)
        shares = split_shares([(name, None) for name, _source in rows])
    else:
        rows, shares = [], {}
    store.replace_rows("personas", [{"persona": name, "share": shares[name], "source": source}
                                     for name, source in rows])
    return shares


def condition_targets(store: Store, recipe: Recipe) -> dict[str, dict[str, float]]:
    """Target shares per way the records are spread: subdomain, persona, difficulty."""
    personas = {r["persona"]: r["share"] for r in store.query_dicts(
        "SELECT persona, share FROM personas")} if recipe.personas.enabled else {}
    return {name: shares for name, shares in (
        ("subdomain", target_shares(recipe)), ("persona", personas),
        ("difficulty", dict(recipe.difficulty.levels))) if shares}


def judge_difficulty(store: Store, recipe: Recipe, prompts: list[tuple[str, str]]) -> int:
    """The judge's level for each (prompt_id, text) not judged yet, into
    `prompt_difficulty`; returns how many were asked."""
    done = {r[0] for r in store.execute("SELECT prompt_id FROM prompt_difficulty")}
    todo = [(pid, text) for pid, text in prompts if pid not in done]
    if not todo:
        return 0
    template = load_template(DIFFICULTY_STAGE)
    endpoint = recipe.llm.judge
    llm = make_llm(endpoint, store)
    results = llm_map(llm, endpoint, template, todo,
                      lambda item: {"domain": recipe.domain.name, "prompt": item[1]},
                      stage=DIFFICULTY_STAGE, seed=recipe.seed)
    store.insert("prompt_difficulty", [
        {"prompt_id": pid, "level": result.data["level"], "reason": result.data["reason"],
         "model": llm.model, "template_version": template.version, "call_key": result.key}
        for (pid, _text), result in answered(store, DIFFICULTY_STAGE, results, lambda i: i[0])
        if result.data["level"] in DIFFICULTY_LEVELS])
    return len(todo)
