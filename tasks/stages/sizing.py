"""How much work the target needs: the profiles it takes, the relevant chunks those need, and
how large each wave of relevance judging (or round of web queries) is, from the keep rates seen so
far (or assumed before there are any)."""

from __future__ import annotations

import math
import random
from collections import defaultdict

from sftmill.core.recipe import Recipe


def split_shares(named: list[tuple[str, float | None]]) -> dict[str, float]:
    """Name → target share, summing to 1: those without a share split what
    the others leave (subdomains, personas)."""
    if not named:
        return {}
    fixed = sum(share for _name, share in named if share is not None)
    free = [name for name, share in named if share is None]
    rest = (1.0 - fixed) / len(free) if free else 0.0
    shares = {name: (share if share is not None else rest) for name, share in named}
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in shares.items()}


def target_shares(recipe: Recipe) -> dict[str, float]:
    """Subdomain → target share; subdomains without a share split what is left."""
    return split_shares([(s.name, s.share) for s in recipe.domain.subdomains])


def allocate(n: int, shares: dict[str, float], available: dict[str, int]) -> dict[str, int]:
    """How many profiles to take per subdomain: `n` split by `shares`
    (largest remainders), capped by what is available, the shortfall moved
    to subdomains that have spare profiles."""
    n = min(n, sum(available.values()))
    if not shares:
        shares = {k: 1.0 / len(available) for k in available} if available else {}
    raw = {k: shares.get(k, 0.0) * n for k in set(shares) | set(available)}
    quota = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (raw[k] - quota[k], k), reverse=True)[: n - sum(quota.values())]:
        quota[k] += 1
    quota = {k: min(q, available.get(k, 0)) for k, q in quota.items()}
    short = n - sum(quota.values())
    while short > 0:
        spare = sorted((k for k in available if available[k] > quota.get(k, 0)),
                       key=lambda k: (-shares.get(k, 0.0), k))
        if not spare:
            break
        for k in spare[:short]:
            quota[k] = quota.get(k, 0) + 1
            short -= 1
    return {k: q for k, q in quota.items() if q > 0}


def needed_profiles(recipe: Recipe) -> int:
    """Profiles the generation stage needs to reach the target prompt count."""
    sizes = recipe.sizes
    per_profile = sizes.prompts_per_profile + sizes.broaden_per_profile
    if sizes.keep_rephrased_originals:  # variants are kept beside their originals
        per_profile *= 1 + sizes.rephrasings_per_prompt
    return -(-recipe.sizes.target_prompts // per_profile)


# Profiles a search query is assumed to bring (through its pages' relevant
# chunks) before a round has shown the real figure.
PRIOR_PROFILES_PER_QUERY = 1.0
MIN_QUERIES = 8  # queries a round writes at least (while profiles are left to ask about)


# The relevance keep rate assumed before 16 chunks are judged: a corpus put
# together for a domain is mostly on topic (the example's: 33 of 35 chunks).
PRIOR_KEEP_RATE = 0.8
MIN_WAVE = 32  # chunks judged at least per wave (while that many are left)
HEADROOM = 1.25  # a wave asks for this many times the chunks the keep rate says it needs
MAX_WAVES = 8


def wanted_relevant(recipe: Recipe) -> int:
    """Relevant chunks the target needs: one profile each, with the margin."""
    return math.ceil(needed_profiles(recipe) * recipe.sizes.profile_margin)


def interleave(rows: list[tuple[str, str]], seed: int) -> list[str]:
    """Chunk IDs of (chunk_id, doc_id) rows, round-robin across documents:
    documents and the chunks within each in a seeded random order, so any
    prefix is a sample spread over the whole corpus."""
    by_doc: dict[str, list[str]] = defaultdict(list)
    for chunk_id, doc_id in sorted(rows):
        by_doc[doc_id].append(chunk_id)
    rng = random.Random(seed)
    docs = sorted(by_doc)
    rng.shuffle(docs)
    for doc in docs:
        rng.shuffle(by_doc[doc])
    order, depth = [], 0
    while len(order) < len(rows):
        order += [by_doc[d][depth] for d in docs if depth < len(by_doc[d])]
        depth += 1
    return order


def wave_size(missing: int, keep_rate: float, room: int, minimum: int = MIN_WAVE) -> int:
    """Items to try (chunks to judge, queries to search) for `missing` good
    ones at `keep_rate` good per item, with headroom, at least `minimum`,
    at most the `room` left."""
    if missing <= 0 or room <= 0:
        return 0
    return min(room, max(minimum, math.ceil(missing / max(keep_rate, 0.02) * HEADROOM)))
