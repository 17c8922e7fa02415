"""The prompt half of the recipe (the SFT recipe this pipeline follows, "Cooking the prompts",
steps 1–10): raw texts in, the `prompts` table out, every row traceable to
profile → chunk → document (and the query and URL of web documents)."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from sftmill.core.remote import local_recipe
from sftmill.core.store import Store
from sftmill.flows.params import RunParams, stage
from sftmill.llm.budget import record_budget
from sftmill.tasks.preflight import check_templates_fit
from sftmill.tasks.stage_task import StageResult
from sftmill.tasks.stages.chunk import chunk
from sftmill.tasks.stages.collect import collect, inputs_fingerprint
from sftmill.tasks.stages.dedup import dedup
from sftmill.tasks.stages.evolve import evolve
from sftmill.tasks.stages.generate import broaden, generate
from sftmill.tasks.stages.profile import profile
from sftmill.tasks.stages.prompt_filter import prompt_filter
from sftmill.tasks.stages.relevance import more_wanted, relevance
from sftmill.tasks.stages.rephrase import rephrase
from sftmill.tasks.stages.web import enough_profiles, search_and_fetch, web_queries


def judge_and_profile(recipe, chunks: StageResult, r: list[str]) -> list[StageResult]:
    """Relevance → profile in waves, each as large as the relevant chunks
    still missing for the target need (at the keep rate seen so far)."""
    wave, results = 1, []
    while True:
        relevant = stage(relevance, "relevance", r)(recipe, chunks, wave)
        results += [relevant, stage(profile, "profile", r)(recipe, relevant)]
        if not more_wanted(relevant, recipe, wave):
            return results
        wave += 1


@flow(name="sftmill-prompts", task_runner=ThreadPoolTaskRunner(max_workers=4))
def prompt_flow(params: RunParams) -> list[StageResult]:
    """Collect → chunk → (relevance → profile)* in waves until the target has
    its chunks → (web queries → search and fetch → chunk → relevance →
    profile)* → generate → broaden → rephrase → evolve (a share made harder) →
    filter → near-duplicate removal."""
    with local_recipe(params.recipe_path) as path:  # on object storage: its run folder synced here
        return prompt_flow_stages(params.model_copy(update={"recipe_path": path}))


def prompt_flow_stages(params: RunParams) -> list[StageResult]:
    recipe, r = params.load(), params.refresh
    check_templates_fit(recipe.llm_templates())  # a prompt that can never fit stops here
    record_budget(Store.open(recipe.db_path), recipe)  # the run's LLMs check it per chunk
    documents = stage(collect, "collect", r)(recipe, str(recipe.db_path), inputs_fingerprint(recipe))
    chunks = stage(chunk, "chunk", r)(recipe, documents)
    judged = judge_and_profile(recipe, chunks, r)
    profiles = judged[-1]
    done = [documents, chunks, *judged]
    if recipe.search.backend != "none" and recipe.sizes.queries_per_profile > 0:
        for round_no in range(1, recipe.sizes.max_rounds + 1):
            if enough_profiles(profiles, recipe):
                break
            queries = stage(web_queries, "web_queries", r)(recipe, profiles, round_no)
            fetched = stage(search_and_fetch, "search_fetch", r)(recipe, queries, round_no)
            if fetched.n_out == 0:
                break
            chunks = stage(chunk, "chunk", r)(recipe, fetched)
            judged = judge_and_profile(recipe, chunks, r)
            profiles = judged[-1]
            done += [queries, fetched, chunks, *judged]
    generated = stage(generate, "generate", r)(recipe, profiles)
    broadened = stage(broaden, "broaden", r)(recipe, generated)
    rephrased = stage(rephrase, "rephrase", r)(recipe, broadened)
    evolved = stage(evolve, "evolve", r)(recipe, rephrased)
    filtered = stage(prompt_filter, "prompt_filter", r)(recipe, evolved)
    kept = stage(dedup, "dedup", r)(recipe, filtered)
    return done + [generated, broadened, rephrased, evolved, filtered, kept]
