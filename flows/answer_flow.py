"""The answer half of the recipe (the SFT recipe this pipeline follows, "Cooking the answers",
steps 1–2) and the export: kept prompts in, `dataset.jsonl`,
`dataset.parquet` and `card.md` out."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from sftmill.core.remote import local_recipe
from sftmill.core.store import Store
from sftmill.core.warmup import when_waiting
from sftmill.flows.params import RunParams, stage
from sftmill.flows.review import pass_gate
from sftmill.llm.budget import record_budget
from sftmill.tasks.curation.curate import curate, models_to_load
from sftmill.tasks.curation.preferences import preference_pairs
from sftmill.tasks.preflight import check_templates_fit
from sftmill.tasks.report.card import dataset_card, pyplot
from sftmill.tasks.report.export import export
from sftmill.tasks.stage_task import StageResult
from sftmill.tasks.stages.answer import answer, answer_checks
from sftmill.tasks.stages.conversation import conversation
from sftmill.tasks.stages.rag import extended_search, retrieve


@flow(name="sftmill-answers", task_runner=ThreadPoolTaskRunner(max_workers=4))
def answer_flow(params: RunParams) -> list[StageResult]:
    """(Prompt review gate) → extended queries → chop-n-RAG retrieval →
    grounded answers → answer checks → (conversations) → curation → (answer review gate) →
    export → dataset card.  A gate still waiting for reviewers ends the flow
    there (a served run pauses at it instead)."""
    with local_recipe(params.recipe_path) as path:  # on object storage: its run folder synced here
        return answer_flow_stages(params.model_copy(update={"recipe_path": path}))


def answer_flow_stages(params: RunParams) -> list[StageResult]:
    recipe, r = params.load(), params.refresh
    check_templates_fit(recipe.llm_templates())  # a prompt that can never fit stops here
    store = Store.open(recipe.db_path)
    record_budget(store, recipe)  # the run's LLMs check it per chunk
    done: list[StageResult] = []
    if "prompts" in recipe.review.gates:  # before any answer is paid for
        done.append(pass_gate(recipe, "prompts", params.review, store.ref("prompts", "prompt_id")))
        if done[-1].note == "waiting":
            return done
    prompts = store.ref("answerable_prompts", "prompt_id || text")
    passages = stage(extended_search, "answer_search", r)(recipe, prompts)
    retrieved = stage(retrieve, "retrieve", r)(recipe, prompts, passages)
    # The card's plotting library and curation's models, loaded once the
    # answer stage waits on its calls (not beside retrieve: it needs the CPU).
    when_waiting("sftmill-answer-flow-preload", [pyplot, *models_to_load(recipe.curation)])
    answers = stage(answer, "answer", r)(recipe, retrieved)
    dataset = stage(answer_checks, "answer_checks", r)(recipe, answers)
    done += [passages, retrieved, answers, dataset]
    if recipe.conversations.enabled or store.scalar("SELECT count(*) FROM dataset WHERE turns IS NOT NULL"):
        dataset = stage(conversation, "conversation", r)(recipe, dataset)  # (or clears earlier turns)
        done.append(dataset)
    curated = stage(curate, "curate", r)(recipe, dataset)
    done.append(curated)
    if "answers" in recipe.review.gates:
        done.append(pass_gate(recipe, "answers", params.review, curated))
        if done[-1].note == "waiting":
            return done
    pairs = [stage(preference_pairs, "preferences", r)(recipe, curated)
             ] if recipe.export.preference_pairs else []
    exported = export(recipe, curated)
    card = dataset_card(recipe, exported)
    return done + [*pairs, exported, card]
