"""Stage 4 — one profile per kept chunk: subdomain, topic, use case and a
short summary, written by the generator LLM (the domain is the recipe's).

When the recipe lists subdomains, the answer's schema restricts `subdomain`
to them (llama.cpp's grammar and vLLM's guided decoding both enforce enums),
which keeps even a tiny model on the recipe's map.  The subdomains are
offered nearest first (embedding cosine between the chunk and each
subdomain's name and description): a capable model still reads and
chooses, and a small one, which tends to take the first option offered,
takes the likeliest instead of always the same one.  With
`domain.subdomain_by: embedding` only the nearest is offered: the
embedding decides and the generator writes the rest of the profile.

Only the chunks the target needs are profiled (`sizing.wanted_relevant`, as
`sftmill plan` counts them), chosen toward the subdomains' target shares by
each chunk's nearest subdomain (`choose_chunks`): a subdomain with relevant
chunks is never left without profiles while another takes more than its
share, and a corpus larger than the target costs no extra calls.
"""

from __future__ import annotations

import copy

from sftmill.core.ids import content_id
from sftmill.core.recipe import Recipe
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map
from sftmill.prompts import PromptTemplate, load_template, with_schema
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.relevance import kept_chunk_ids
from sftmill.tasks.stages.sizing import allocate, interleave, target_shares, wanted_relevant

STAGE = "profile"
TEMPLATE = "profile"


def schema_for(recipe: Recipe, template: PromptTemplate, names: list[str] | None = None) -> dict:
    schema = copy.deepcopy(template.schema)
    names = names if names is not None else [s.name for s in recipe.domain.subdomains]
    if names:
        schema["properties"]["subdomain"] = {"type": "string", "enum": names}
    return schema


def subdomain_orders(store: Store, recipe: Recipe, texts: list[str]) -> list[tuple[str, ...]]:
    """For each text, the recipe's subdomains nearest first (embedding cosine
    with "name. description")."""
    subs = recipe.domain.subdomains
    if len(subs) < 2 or not texts:
        return [tuple(s.name for s in subs)] * len(texts)

    embedder = Embedder(recipe.embedding, store)
    labels = embedder.embed([f"{s.name}. {s.description}".strip() for s in subs])
    sims = embedder.embed(texts) @ labels.T
    return [tuple(subs[j].name for j in sorted(range(len(subs)), key=lambda j: (-row[j], j)))
            for row in sims]


WAVE = 500  # chunks whose subdomain orders are embedded while the waves before are in flight


def profile_chunks(store: Store, recipe: Recipe, chunk_ids: list[str]) -> int:
    """Profile the chunks that have none yet; return how many were asked.
    Their subdomain orders are embedded a wave at a time, each wave's while
    the calls of the waves before it are in flight, and every order's calls
    go out as one batch (a schema per order: `template_of`)."""
    todo = store.execute(
        "SELECT chunk_id, heading, text FROM chunks WHERE chunk_id IN (SELECT unnest(?)) "
        "AND chunk_id NOT IN (SELECT chunk_id FROM profiles) ORDER BY chunk_id", [chunk_ids])
    if not todo:
        return 0
    base = load_template(TEMPLATE)
    endpoint = recipe.llm.generator
    llm = make_llm(endpoint, store)
    domain = recipe.domain
    templates: dict[tuple[str, ...], PromptTemplate] = {}  # one schema per order of the subdomains

    def template_of(item: tuple[tuple, tuple[str, ...]]) -> PromptTemplate:
        order = item[1]
        if order not in templates:
            templates[order] = with_schema(base, schema_for(recipe, base, list(order)))
        return templates[order]

    def waves():
        for start in range(0, len(todo), WAVE):
            part = todo[start:start + WAVE]
            orders = subdomain_orders(store, recipe, [row[2] for row in part])
            if domain.subdomain_by == "embedding":
                orders = [order[:1] for order in orders]
            yield list(zip(part, orders))

    results = llm_map(
        llm, endpoint, template_of, waves(),
        lambda item: {"domain": domain.name, "subdomains": list(item[1]),
                      "use_cases": domain.use_cases, "heading": item[0][1] or "", "text": item[0][2]},
        stage=STAGE, seed=recipe.seed, total=len(todo))
    rows = []
    for ((chunk_id, _h, _t), order), result in answered(store, STAGE, results, lambda item: item[0][0]):
        p = result.data
        rows.append({"profile_id": content_id(chunk_id, p), "chunk_id": chunk_id,
                     "domain": recipe.domain.name, "subdomain": p["subdomain"], "topic": p["topic"],
                     "use_case": p["use_case"], "summary": p["summary"], "model": llm.model,
                     "template_version": templates[order].version, "call_key": result.key})
    store.insert("profiles", rows)
    return len(todo)


def choose_chunks(store: Store, recipe: Recipe, kept: list[str]) -> list[str]:
    """The relevant chunks to profile: those profiled already, then up to
    `wanted_relevant` in all, split over the subdomains by their target
    shares (each chunk counted under its nearest subdomain by embedding),
    spread across documents within each."""
    wanted = wanted_relevant(recipe)
    if len(kept) <= wanted:
        return kept
    done = {r for r, in store.execute(
        "SELECT chunk_id FROM profiles WHERE chunk_id IN (SELECT unnest(?))", [kept])}
    rows = store.execute("SELECT chunk_id, doc_id, text FROM chunks WHERE chunk_id IN "
                         "(SELECT unnest(?)) ORDER BY chunk_id", [kept])
    order = interleave([(c, d) for c, d, _t in rows], recipe.seed)
    shares = target_shares(recipe)
    if shares:
        texts = {c: t for c, _d, t in rows}
        nearest = dict(zip(order, (o[0] for o in subdomain_orders(store, recipe, [texts[c] for c in order]))))
    else:
        nearest = {c: "" for c in order}
    pools: dict[str, list[str]] = {}
    for chunk_id in order:
        pools.setdefault(nearest[chunk_id], []).append(chunk_id)
    quota = allocate(max(wanted, len(done)), shares, {k: len(v) for k, v in pools.items()})
    chosen = set(done)
    for sub, pool in pools.items():
        have = sum(1 for c in pool if c in done)
        chosen.update([c for c in pool if c not in done][:max(0, quota.get(sub, 0) - have)])
    return sorted(chosen)


@stage_task("profile", recipe=("domain", "llm", "sizes", "thresholds", "embedding", "seed"),
            templates=(TEMPLATE,), reads=("relevance",), writes=("profiles",))
def profile(recipe: Recipe, relevant: StageResult) -> StageResult:
    store = Store.open(relevant.out.db_path)
    timer = StageTimer(store, STAGE)
    kept = kept_chunk_ids(store, recipe.thresholds.relevance)
    chosen = choose_chunks(store, recipe, kept)
    asked = profile_chunks(store, recipe, chosen)
    n_out = int(store.scalar(
        "SELECT count(*) FROM profiles WHERE chunk_id IN (SELECT unnest(?))", [kept]))
    spare = len(kept) - len(chosen)
    return timer.done(store.ref("profiles", "profile_id"), len(kept), n_out,
                      f"{asked} chunks sent to the generator"
                      + (f"; {spare} relevant chunks beyond what the target needs" if spare else ""))
