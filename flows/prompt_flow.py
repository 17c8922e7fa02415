"""The prompt half of the recipe (shared/seeds/003, "Cooking the prompts").

Stages that exist today: collect → chunk → relevance filter → profile.
The next stages (web queries, generation, broadening, rephrasing, filtering,
near-duplicate removal) join this list as they are built.
"""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from sftmill.config import load_recipe
from sftmill.stages import StageResult
from tasks.chunk import chunk
from tasks.collect import collect, inputs_fingerprint
from tasks.profile import profile
from tasks.relevance import relevance


@flow(name="sftmill-prompts", task_runner=ThreadPoolTaskRunner(max_workers=4))
def prompt_flow(recipe_path: str) -> list[StageResult]:
    """Raw texts → chunks → relevant chunks → profiles, in the run's DuckDB."""
    recipe = load_recipe(recipe_path)
    documents = collect(recipe, str(recipe.db_path), inputs_fingerprint(recipe))
    chunks = chunk(recipe, documents)
    relevant = relevance(recipe, chunks)
    profiles = profile(recipe, relevant)
    return [documents, chunks, relevant, profiles]
