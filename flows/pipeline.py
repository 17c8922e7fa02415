"""The whole recipe: the prompt flow, then the answer flow (as subflows)."""

from __future__ import annotations

from prefect import flow

from flows.answer_flow import answer_flow
from flows.prompt_flow import prompt_flow
from sftmill.stages import StageResult


@flow(name="sftmill-pipeline")
def pipeline(recipe_path: str) -> list[StageResult]:
    """Raw texts → prompts → grounded answers → exported dataset and card."""
    return prompt_flow(recipe_path) + answer_flow(recipe_path)
