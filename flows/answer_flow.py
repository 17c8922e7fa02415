"""The answer half of the recipe (shared/seeds/003, "Cooking the answers",
steps 1–2) and the export: kept prompts in, `dataset.jsonl`,
`dataset.parquet` and `card.md` out."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from sftmill.config import load_recipe
from sftmill.stages import StageResult
from sftmill.store import Store
from tasks.answer import answer, answer_checks
from tasks.card import dataset_card
from tasks.export import export
from tasks.rag import extended_search, retrieve


@flow(name="sftmill-answers", task_runner=ThreadPoolTaskRunner(max_workers=4))
def answer_flow(recipe_path: str) -> list[StageResult]:
    """Extended queries → chop-n-RAG retrieval → grounded answers → answer
    checks → export → dataset card."""
    recipe = load_recipe(recipe_path)
    prompts = Store.open(recipe.db_path).ref("prompts", "prompt_id")
    passages = extended_search(recipe, prompts)
    retrieved = retrieve(recipe, prompts, passages)
    answers = answer(recipe, retrieved)
    dataset = answer_checks(recipe, answers)
    exported = export(recipe, dataset)
    card = dataset_card(recipe, exported)
    return [passages, retrieved, answers, dataset, exported, card]
