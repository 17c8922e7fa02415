"""The whole recipe: the prompt flow, then the answer flow (as subflows)."""

from __future__ import annotations

from prefect import flow

from sftmill.flows.answer_flow import answer_flow
from sftmill.flows.params import RunParams
from sftmill.flows.prompt_flow import prompt_flow
from sftmill.tasks.stage_task import StageResult


@flow(name="sftmill-pipeline")
def pipeline(params: RunParams) -> list[StageResult]:
    """Raw texts → prompts → grounded answers → exported dataset and card."""
    return prompt_flow(params) + answer_flow(params)
