"""Plan before running: per LLM stage of the pipeline, the calls
and tokens a recipe is expected to spend on its corpus, and their price
from the recipe's `prices` section.

The corpus is read and chunked here (no LLM, nothing written); the counts
follow the stages' own sizing rules — relevance waves (`relevance.next_wave`,
at the prior keep rate, or the rate a run database already shows), profiles
per needed profile, prompts per profile — and the tokens are the template's
own text plus the chunk, passages or prompt each call carries, and a typical
answer length per stage, plus a reasoning model's typical trace
(`reasoning_tokens` of an endpoint with `reasoning: true`), capped by the
endpoint's `max_tokens`.  Web
rounds are planned when the corpus falls short of the profiles the target
needs (queries at a prior profile per query, their pages judged and
profiled like the corpus), the extended answer search for a prior share of
weakly supported prompts (or the share a run database shows); searches and
fetches are not LLM calls and not counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.llm.backends import model_name
from sftmill.llm.request import estimate_tokens as message_tokens
from sftmill.prompts import load_template
from sftmill.tasks.sources.documents import Doc
from sftmill.tasks.stages.chunk import CHARS_PER_TOKEN, chunk_text, estimate_tokens
from sftmill.tasks.stages.collect import iter_documents
from sftmill.tasks.stages.relevance import kept_chunk_ids
from sftmill.tasks.stages.sizing import (
    MIN_QUERIES,
    PRIOR_KEEP_RATE,
    PRIOR_PROFILES_PER_QUERY,
    needed_profiles,
    wanted_relevant,
    wave_size,
)

# Typical answer tokens per call (the endpoint's max_tokens caps them).
TYPICAL_OUT = {"relevance": 40, "profile": 90, "generate": 40, "broaden": 48, "rephrase": 40,
               "prompt_filter": 40, "answer_queries": 16, "answer": 300, "answer_checks": 60,
               "personas": 16, "difficulty": 30, "follow_up": 30, "evolve": 48}
PROMPT_TOKENS = 30  # a prompt
PROFILE_TOKENS = 80  # a profile (domain, subdomain, topic, use case, summary)
QUERY_TOKENS = 12  # a search query
PRIOR_WEAK_SHARE = 0.3  # prompts the corpus supports weakly, before a run has shown it
REPHRASED_SHARE = 0.3  # prompts whose opening is over-represented (rephrased) when not all are


@dataclass
class StagePlan:
    stage: str
    model: str
    calls: int
    tokens_in: int
    tokens_out: int
    cost: float | None = None  # None: no price for the model
    batch: bool = False  # sent through a Batch API (priced at its batch rate)

    def as_dict(self) -> dict:
        return asdict(self)


def corpus_sizes(recipe: Recipe) -> tuple[int, float]:
    """(chunks, mean tokens per chunk) of the recipe's inputs, chunked as the run will."""
    n, tokens = 0, 0
    seen: set[int] = set()
    for _uri, item in iter_documents(recipe):
        if not isinstance(item, Doc) or hash(item.text) in seen:
            continue
        seen.add(hash(item.text))
        for c in chunk_text(item.text, recipe.chunking.max_tokens, recipe.chunking.min_tokens):
            n += 1
            tokens += estimate_tokens(item.text[c.start:c.end])
    return n, tokens / n if n else 0.0


def template_tokens(name: str) -> int:
    return message_tokens(load_template(name).skeleton())


def price_of(recipe: Recipe, model: str, tokens_in: int, tokens_out: int,
             batch: bool = False) -> float | None:
    price = recipe.prices.get(model)
    return None if price is None else price.cost(tokens_in, tokens_out, batch)


def plan_stages(recipe: Recipe, chunks: int, chunk_tokens: float,
                keep_rate: float | None = None, prompt_keep_rate: float = 1.0,
                weak_share: float = PRIOR_WEAK_SHARE) -> list[StagePlan]:
    """The expected calls and tokens per LLM stage for a corpus of `chunks`
    chunks of `chunk_tokens` tokens; `keep_rate`: relevance keep rate
    (default: the prior the relevance waves start from); `prompt_keep_rate`:
    the share of generated prompts that pass the filter and dedup;
    `weak_share`: the share of prompts whose best passage is below
    `answers.search_below` (they get extended search queries)."""
    sizes, gen, judge = recipe.sizes, recipe.llm.generator, recipe.llm.judge
    rate = PRIOR_KEEP_RATE if keep_rate is None else keep_rate
    room = chunks if sizes.max_chunks is None else min(chunks, sizes.max_chunks)
    wanted = wanted_relevant(recipe)
    judged = wave_size(wanted, rate, room)  # the first wave, at that rate
    profiles = min(wanted, math.floor(judged * rate))
    # Web rounds when the corpus falls short: queries for the missing
    # profiles at the prior profiles per query, and their pages judged and
    # profiled like the corpus (assuming the web has them).
    missing = needed_profiles(recipe) - profiles
    query_calls = 0
    if missing > 0 and recipe.search.backend != "none" and sizes.queries_per_profile and sizes.max_rounds:
        query_calls = math.ceil(wave_size(missing, PRIOR_PROFILES_PER_QUERY, 10**9, MIN_QUERIES)
                                / sizes.queries_per_profile)
        web_relevant = math.ceil(missing * sizes.profile_margin)
        judged += math.ceil(web_relevant / rate)
        profiles += web_relevant
    needed = min(needed_profiles(recipe), profiles)
    per_profile = sizes.prompts_per_profile
    openings = bool(recipe.generation.openings)
    candidates = needed * (per_profile + sizes.broaden_per_profile)
    if not sizes.rephrasings_per_prompt:
        rephrased = 0
    elif sizes.keep_rephrased_originals:
        rephrased = candidates
    elif recipe.thresholds.max_opening_share < 1:  # only over-represented openings
        rephrased = math.ceil(candidates * REPHRASED_SHARE)
    else:
        rephrased = 0
    evolved = math.ceil(candidates * recipe.difficulty.evolve_share)  # a rewrite per chosen prompt
    prompts = min(sizes.target_prompts, math.ceil(candidates * prompt_keep_rate))
    answers, curation = recipe.answers, recipe.curation
    searched = 0  # prompts given extended search queries: the weakly supported share
    if recipe.search.backend != "none" and answers.queries_per_prompt:
        searched = math.ceil(prompts * (1.0 if answers.search_below >= 1 else weak_share))
    passages = recipe.answers.top_k * chunk_tokens
    answer_out = min(gen.max_tokens, TYPICAL_OUT["answer"])
    convs = recipe.conversations  # every turn of the chosen share planned as if it passed
    follow_ups = math.ceil(prompts * convs.share * (sum(convs.turns) / 2 - 1)) if convs.enabled else 0
    # (stage, endpoint, template, calls, input tokens a call carries, answer tokens)
    rows = [
        ("relevance", judge, "relevance", judged, chunk_tokens, TYPICAL_OUT["relevance"]),
        ("profile", gen, "profile", profiles, chunk_tokens, TYPICAL_OUT["profile"]),
        ("web_queries", gen, "web_queries", query_calls, PROFILE_TOKENS,
         QUERY_TOKENS * sizes.queries_per_profile),
        ("generate", gen, "generate_opening" if openings else "generate",
         needed * per_profile if openings else needed, chunk_tokens,
         TYPICAL_OUT["generate"] * (1 if openings else per_profile)),
        ("broaden", gen, "broaden", needed if sizes.broaden_per_profile else 0, chunk_tokens,
         TYPICAL_OUT["broaden"] * sizes.broaden_per_profile),
        ("rephrase", gen, "rephrase", rephrased, PROMPT_TOKENS,
         TYPICAL_OUT["rephrase"] * sizes.rephrasings_per_prompt),
        ("evolve", gen, "evol_deepen", evolved, PROMPT_TOKENS, TYPICAL_OUT["evolve"]),
        ("personas", gen, "personas", 1 if recipe.personas.generate else 0, PROFILE_TOKENS,
         TYPICAL_OUT["personas"] * recipe.personas.generate),
        ("difficulty", judge, "difficulty",
         math.ceil(candidates * prompt_keep_rate)
         if recipe.difficulty.enabled and recipe.difficulty.judge else 0,
         PROMPT_TOKENS, TYPICAL_OUT["difficulty"]),
        ("prompt_filter", judge, "prompt_filter",
         candidates if recipe.thresholds.prompt_quality > 0 else 0, PROMPT_TOKENS,
         TYPICAL_OUT["prompt_filter"]),
        ("answer_queries", gen, "answer_queries", searched, PROMPT_TOKENS,
         TYPICAL_OUT["answer_queries"] * recipe.answers.queries_per_prompt),
        ("answer", gen, "answer", prompts, PROMPT_TOKENS + passages, answer_out),
        ("answer_checks", judge, "groundedness",
         prompts if recipe.answers.min_groundedness > 0 else 0,
         PROMPT_TOKENS + passages + answer_out, TYPICAL_OUT["answer_checks"]),
        # Curation's LLM judges and the preference pairs: a call per record.
        *((f"curate_{name}", curation.judge or judge, name,
           prompts if curation.enabled and getattr(curation, name).enabled else 0,
           PROMPT_TOKENS + answer_out, TYPICAL_OUT["answer_checks"])
          for name in ("safety", "adherence")),
        # Conversations: per follow-up turn, the user's message, its answer and its judge.
        ("follow_up", gen, "follow_up", follow_ups, PROMPT_TOKENS + answer_out, TYPICAL_OUT["follow_up"]),
        ("follow_up_answer", gen, "answer", follow_ups, PROMPT_TOKENS * 2 + answer_out + passages,
         answer_out),
        ("follow_up_checks", judge, "groundedness",
         follow_ups if recipe.answers.min_groundedness > 0 else 0,
         PROMPT_TOKENS + passages + answer_out, TYPICAL_OUT["answer_checks"]),
        ("follow_up_consistency", judge, "consistency",
         follow_ups if recipe.conversations.consistency_judge else 0, answer_out * 2,
         TYPICAL_OUT["answer_checks"]),
        ("negative_answer", gen, "answer", prompts if recipe.export.preference_pairs else 0,
         PROMPT_TOKENS, answer_out),
        ("negative_check", judge, "groundedness", prompts if recipe.export.preference_pairs else 0,
         PROMPT_TOKENS + passages + answer_out, TYPICAL_OUT["answer_checks"]),
    ]
    plans = []
    for stage, endpoint, template, calls, carried, out in rows:
        if calls <= 0:
            continue
        tokens_in = round(calls * (template_tokens(template) + carried))
        thinks = endpoint.reasoning_tokens if endpoint.reasoning else 0  # a trace before each answer
        tokens_out = round(calls * min(endpoint.max_tokens, out + thinks))
        model = model_name(endpoint)
        batch = endpoint.batch and calls >= endpoint.batch_min
        plans.append(StagePlan(stage, model, calls, tokens_in, tokens_out,
                               price_of(recipe, model, tokens_in, tokens_out, batch), batch))
    return plans


def plan_recipe(recipe: Recipe) -> tuple[list[StagePlan], int, str]:
    """The plan for a recipe's corpus: (stage plans, chunks, the rates it
    assumed).  A run database that already judged chunks and filtered
    prompts lends its keep rates."""
    chunks, chunk_tokens = corpus_sizes(recipe)
    keep_rate, prompt_keep_rate, source = None, 1.0, "assumed before any run"
    weak_share = PRIOR_WEAK_SHARE
    if recipe.db_path.exists():
        store = Store.open(recipe.db_path)
        judged, candidates = store.count("relevance"), store.count("candidate_prompts")
        if judged:
            keep_rate = len(kept_chunk_ids(store, recipe.thresholds.relevance)) / judged
            source = f"seen in {recipe.db_path}"
        if candidates:
            prompt_keep_rate = store.count("prompts") / candidates
        if store.count("answer_queries"):
            weak_share = (store.scalar("SELECT count(DISTINCT prompt_id) FROM answer_queries")
                          / max(1, store.count("prompts")))
    rate = PRIOR_KEEP_RATE if keep_rate is None else keep_rate
    searching = recipe.search.backend != "none"
    note = (f"{rate:.0%} of judged chunks relevant, {prompt_keep_rate:.0%} of generated prompts "
            f"kept" + (f", {weak_share:.0%} of prompts searched for more passages"
                       if searching and recipe.answers.queries_per_prompt else "")
            + f" ({source})" + (f"; web rounds at {PRIOR_PROFILES_PER_QUERY:g} profile per query"
                                if searching and recipe.sizes.queries_per_profile else ""))
    return (plan_stages(recipe, chunks, chunk_tokens, keep_rate, prompt_keep_rate, weak_share),
            chunks, note)


def planned_for_run(store: Store, recipe: Recipe) -> dict[tuple[str, str], StagePlan]:
    """The plan as `sftmill plan` showed it before the run (prior keep rates),
    for the corpus the run chunked; by (stage, model), for the summary."""
    n, chars = store.execute("SELECT count(*), coalesce(avg(length(text)), 0) FROM chunks")[0]
    return {(p.stage, p.model): p for p in plan_stages(recipe, n, chars / CHARS_PER_TOKEN)}
