"""Stages 6–7 — generate prompts from profiles, then broaden.

Profiles are first selected to meet the recipe's subdomain shares
(`allocate`, `select_profiles`); the generator then writes
`prompts_per_profile` prompts of mixed task types from each selected
profile and its chunk — either as one list per profile, or, when the
recipe gives `generation.openings`, as one short call per prompt told how
to begin (`generate_from_openings`) — and `broaden_per_profile` prompts on neighbouring
topics and use cases of the same domain.  Every prompt lands in
`candidate_prompts` with its parent profile; identical texts are stored once.
"""

from __future__ import annotations

import random
from collections import defaultdict

from sftmill.core.ids import content_id
from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map, whole_items
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.conditions import ASKS, assign, choose_personas
from sftmill.tasks.stages.sizing import allocate, needed_profiles, target_shares

GENERATE_STAGE = "generate"
BROADEN_STAGE = "broaden"
TASK_TYPES = ["question", "explanation", "comparison", "how_to", "problem_solving"]
OTHER = "(other)"


def select_profiles(profiles: list[dict], recipe: Recipe) -> list[dict]:
    """A deterministic sample of profiles that meets the target shares."""
    shares = target_shares(recipe)
    by_sub: dict[str, list[dict]] = defaultdict(list)
    for p in sorted(profiles, key=lambda p: p["profile_id"]):
        by_sub[p["subdomain"] if p["subdomain"] in shares or not shares else OTHER].append(p)
    quota = allocate(needed_profiles(recipe), shares, {k: len(v) for k, v in by_sub.items()})
    rng = random.Random(recipe.seed)
    chosen = []
    for sub in sorted(quota):
        chosen += rng.sample(by_sub[sub], quota[sub])
    return sorted(chosen, key=lambda p: p["profile_id"])


def prompt_row(text: str, origin: str, parent_id: str, profile_id: str, task_type: str,
               model: str, template_version: str, call_key: str,
               persona: str | None = None, difficulty: str | None = None) -> dict:
    text = " ".join(text.split())
    return {"prompt_id": content_id(text.lower()), "text": text, "origin": origin,
            "parent_id": parent_id, "profile_id": profile_id, "task_type": task_type,
            "model": model, "template_version": template_version, "call_key": call_key,
            "persona": persona, "difficulty": difficulty}


TOKENS_PER_PROMPT = 48  # a request is one or two sentences; more is a model rambling on


def request_budget(n: int) -> int:
    """Token budget for a list of `n` requests in JSON: a rambling request is
    cut off early (and dropped) while the ones before it are kept."""
    return TOKENS_PER_PROMPT * n + 32


def topic_of(profile: dict) -> str:
    """What a profile's prompts are about: its chunk's section heading when it
    has one (an author's own label, which even a tiny model cannot get
    wrong), else the topic the profiler wrote."""
    return (profile.get("heading") or profile["topic"] or "").strip()


def selected_profiles(store: Store, recipe: Recipe) -> list[dict]:
    rows = store.query_dicts(
        "SELECT p.*, c.text AS chunk_text, c.heading FROM profiles p JOIN chunks c USING (chunk_id)")
    return select_profiles(rows, recipe)


def opening_task_type(opening: str) -> str:
    """The task type a prompt's opening implies ("Explain" → explanation …)."""
    first = opening.lower().split()
    for words, task_type in ((("explain",), "explanation"), (("describe",), "explanation"),
                             (("compare",), "comparison"), (("how", "to"), "how_to"),
                             (("how", "do", "i"), "how_to"), (("how", "can", "i"), "how_to"),
                             (("solve",), "problem_solving"), (("calculate",), "problem_solving")):
        if tuple(first[:len(words)]) == words:
            return task_type
    return "question"


# How a request may begin besides the recipe's openings: interrogatives
# (the request must then hold a question mark) and imperatives.
INTERROGATIVES = ("what", "why", "how", "who", "when", "where", "which", "is", "are", "does",
                  "do", "can")
IMPERATIVES = ("explain", "describe", "compare")


def first_word(text: str) -> str:
    return text.split(" ", 1)[0].lower().strip(",.;!?'\"")


def opening_prompt(text: str, opening: str, openings: list[str] = ()) -> str | None:
    """The prompt in a reply asked to begin with `opening`.  Quotes and a
    label ("Q:", "Question:", "Who:") come off; the reply is kept when it
    begins with a question word or one of `openings` (the model chose another
    opening), else from where `opening` follows a colon or quote ('The
    student asks: "Why …'); cut after its first question mark (what follows
    is the model answering itself).  None: the reply holds no request — no
    question mark after a question word, or fewer than three words."""
    text = " ".join(text.split()).lstrip("\"'“ ")
    first = text.split(" ", 1)[0]
    if first.endswith(":") and len(first) <= 10:  # a label: "Q:", "Question:", "Who:"
        text = text[len(first):].lstrip("\"'“ ")
    lowered = text.lower()
    starts = tuple(o.lower() for o in (opening, *openings))
    if not (first_word(text) in INTERROGATIVES + IMPERATIVES or lowered.startswith(starts)):
        found = [i for i in (lowered.find(f"{mark}{opening.lower()}") for mark in (': ', ':"', '"'))
                 if i >= 0]
        if not found:
            return None
        text = text[min(found):].lstrip(':"“ ')
    if "?" in text:
        text = text[: text.index("?") + 1]
    elif first_word(text) in INTERROGATIVES:
        return None  # "What a groundbreaking result!": not a question
    text = text.rstrip("\"'” ")
    return text if len(text.split()) >= 3 else None


def opening_requests(profiles: list[dict], openings: list[str], n: int) -> list[tuple[dict, int, str]]:
    """(profile, index, opening) for `n` prompts per profile, the openings
    rotated so that every one is used about equally often; a profile's
    requests are adjacent (the embedded model reuses the passage's tokens)."""
    return [(p, j, openings[(i * n + j) % len(openings)])
            for i, p in enumerate(profiles) for j in range(n)]


def generate_from_openings(store: Store, recipe: Recipe, profiles: list[dict],
                           personas: dict[str, float]) -> int:
    """One short call per prompt, each told the opening to begin with
    (a nudge: a question that begins otherwise is kept too), and its
    persona and difficulty when the recipe has them."""
    n = recipe.sizes.prompts_per_profile
    template = load_template("generate_opening")
    endpoint = recipe.llm.generator
    llm = make_llm(endpoint, store)
    items = opening_requests(profiles, recipe.generation.openings, n)
    told = dict(zip(((p["profile_id"], j) for p, j, _o in items), assign(recipe, personas, len(items))))
    results = llm_map(llm, endpoint, template, items,
                      lambda it: {"text": it[0]["chunk_text"], "topic": topic_of(it[0]),
                                  "opening": it[2], **asked(*told[it[0]["profile_id"], it[1]])},
                      stage=GENERATE_STAGE, seed=recipe.seed, max_tokens=TOKENS_PER_PROMPT,
                      stop=("\n",))

    def item_id(it: tuple[dict, int, str]) -> str:
        return f"{it[0]['profile_id']}:{it[1]}"

    rows = []
    with store.drops(GENERATE_STAGE) as drops:
        for item, result in answered(store, GENERATE_STAGE, results, item_id):
            profile, opening = item[0], item[2]
            text = opening_prompt(result.text, opening, recipe.generation.openings)
            if text is None:
                drops.add(item_id(item), "llm_invalid_output",
                          f"no question in the reply: {result.text[:200]}", None)
                continue
            rows.append(prompt_row(text, "generated", profile["profile_id"], profile["profile_id"],
                                   opening_task_type(text), llm.model, template.version,
                                   result.key, *told[profile["profile_id"], item[1]]))
    store.insert("candidate_prompts", rows)
    return len(rows)


def asked(persona: str | None, level: str | None) -> dict:
    """A generation template's persona and difficulty variables (none when unset)."""
    return {"persona": persona, "difficulty": ASKS[level] if level else None}


def generate_prompts(store: Store, recipe: Recipe, profiles: list[dict]) -> int:
    personas = choose_personas(store, recipe)
    if recipe.generation.openings:
        return generate_from_openings(store, recipe, profiles, personas)
    told = dict(zip((p["profile_id"] for p in profiles), assign(recipe, personas, len(profiles))))
    n = recipe.sizes.prompts_per_profile
    base = load_template("generate")
    # 1..n prompts: a small model that rambles past the token budget keeps the
    # prompts it finished (the cut-off one is dropped) instead of losing all.
    template = with_schema(base, exact_items(base.schema, "prompts", n, at_least=1))
    endpoint = recipe.llm.generator
    budget = min(endpoint.max_tokens, request_budget(n))
    llm = make_llm(endpoint, store)
    results = llm_map(llm, endpoint, template, profiles,
                      lambda p: {"domain": recipe.domain.name, "profile": p, "text": p["chunk_text"],
                                 "topic": topic_of(p), "n": n, "task_types": TASK_TYPES,
                                 "use_cases": recipe.domain.use_cases,
                                 **asked(*told[p["profile_id"]])},
                      stage=GENERATE_STAGE, seed=recipe.seed, max_tokens=budget)
    rows = []
    with store.drops(GENERATE_STAGE) as drops:
        for profile, result in answered(store, GENERATE_STAGE, results, lambda p: p["profile_id"]):
            items = finished_prompts(drops, profile["profile_id"], result, budget)
            rows += [prompt_row(item["prompt"], "generated", profile["profile_id"],
                                profile["profile_id"], item["task_type"], llm.model,
                                template.version, result.key, *told[profile["profile_id"]])
                     for item in items]
    store.insert("candidate_prompts", rows)
    return len(rows)


def finished_prompts(drops, profile_id: str, result, limit: int) -> list[dict]:
    """The prompts of a list answer that it finished; the one the token
    budget cut off is a drop (`truncated`, item `<profile_id>:cut`)."""
    items, cut = whole_items(result, "prompts", limit)
    if cut is not None:
        drops.add(f"{profile_id}:cut", "truncated",
                  f"the answer used its {limit} tokens; cut off: {str(cut.get('prompt', cut))[:300]}")
    return items


def broaden_prompts(store: Store, recipe: Recipe, profiles: list[dict]) -> int:
    n = recipe.sizes.broaden_per_profile
    if n == 0 or not profiles:
        return 0
    base = load_template("broaden")
    template = with_schema(base, exact_items(base.schema, "prompts", n, at_least=1))
    examples = defaultdict(list)
    for profile_id, text in store.execute(
            "SELECT profile_id, text FROM candidate_prompts WHERE origin = 'generated' "
            "ORDER BY prompt_id"):
        examples[profile_id].append(text)
    endpoint = recipe.llm.generator
    llm = make_llm(endpoint, store)
    subdomains = [s.name for s in recipe.domain.subdomains]
    results = llm_map(llm, endpoint, template, profiles,
                      lambda p: {"domain": recipe.domain.name, "subdomains": subdomains,
                                 "profile": p, "examples": examples[p["profile_id"]][:3], "n": n},
                      stage=BROADEN_STAGE, seed=recipe.seed)
    rows = []
    with store.drops(BROADEN_STAGE) as drops:
        for profile, result in answered(store, BROADEN_STAGE, results, lambda p: p["profile_id"]):
            items = finished_prompts(drops, profile["profile_id"], result, endpoint.max_tokens)
            rows += [prompt_row(item["prompt"], "broadened", profile["profile_id"],
                                profile["profile_id"], "broadened", llm.model, template.version,
                                result.key)
                     for item in items]
    store.insert("candidate_prompts", rows)
    return len(rows)


@stage_task("generate", recipe=("domain", "llm", "sizes", "generation", "personas", "difficulty",
                                  "seed"),
            templates=("generate", "generate_opening", "personas"), reads=("profiles",),
            writes=("candidate_prompts", "personas"))
def generate(recipe: Recipe, profiles: StageResult) -> StageResult:
    store = Store.open(profiles.out.db_path)
    timer = StageTimer(store, GENERATE_STAGE)
    chosen = selected_profiles(store, recipe)
    made = generate_prompts(store, recipe, chosen)
    return timer.done(store.ref("candidate_prompts", "prompt_id"), len(chosen), made,
                      f"{len(chosen)} of {profiles.out.rows} profiles selected")


@stage_task("broaden", recipe=("domain", "llm", "sizes", "seed"), templates=("broaden",),
            reads=("candidate_prompts",), writes=("candidate_prompts",))
def broaden(recipe: Recipe, generated: StageResult) -> StageResult:
    store = Store.open(generated.out.db_path)
    timer = StageTimer(store, BROADEN_STAGE)
    chosen = selected_profiles(store, recipe)
    made = broaden_prompts(store, recipe, chosen)
    return timer.done(store.ref("candidate_prompts", "prompt_id"), len(chosen), made)
