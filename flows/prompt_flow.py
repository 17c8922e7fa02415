"""The prompt half of the recipe (shared/seeds/003, "Cooking the prompts",
steps 1–10): raw texts in, the `prompts` table out, every row traceable to
profile → chunk → document (and the query and URL of web documents)."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from sftmill.config import load_recipe
from sftmill.stages import StageResult
from tasks.chunk import chunk
from tasks.collect import collect, inputs_fingerprint
from tasks.dedup import dedup
from tasks.generate import broaden, generate
from tasks.profile import profile
from tasks.prompt_filter import prompt_filter
from tasks.relevance import relevance
from tasks.rephrase import rephrase
from tasks.web import enough_profiles, search_and_fetch, web_queries


@flow(name="sftmill-prompts", task_runner=ThreadPoolTaskRunner(max_workers=4))
def prompt_flow(recipe_path: str) -> list[StageResult]:
    """Collect → chunk → relevance → profile → (web queries → search and
    fetch → chunk → relevance → profile)* → generate → broaden → rephrase →
    filter → near-duplicate removal."""
    recipe = load_recipe(recipe_path)
    documents = collect(recipe, str(recipe.db_path), inputs_fingerprint(recipe))
    chunks = chunk(recipe, documents)
    relevant = relevance(recipe, chunks)
    profiles = profile(recipe, relevant)
    done = [documents, chunks, relevant, profiles]
    if recipe.search.backend != "none" and recipe.sizes.queries_per_profile > 0:
        for round_no in range(1, recipe.sizes.max_rounds + 1):
            if enough_profiles(profiles, recipe):
                break
            queries = web_queries(recipe, profiles, round_no)
            fetched = search_and_fetch(recipe, queries, round_no)
            if fetched.n_out == 0:
                break
            chunks = chunk(recipe, fetched)
            relevant = relevance(recipe, chunks)
            profiles = profile(recipe, relevant)
            done += [queries, fetched, chunks, relevant, profiles]
    generated = generate(recipe, profiles)
    broadened = broaden(recipe, generated)
    rephrased = rephrase(recipe, broadened)
    filtered = prompt_filter(recipe, rephrased)
    kept = dedup(recipe, filtered)
    return done + [generated, broadened, rephrased, filtered, kept]
