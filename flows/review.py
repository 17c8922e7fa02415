"""Review gates in a flow (`tasks/review/gate.py` does the work).

At a gate whose sample is not reviewed yet:
- a served run (a deployment's flow run, started from the UI, a schedule or
  the API) pauses with Prefect's pause-with-input: the UI shows a form with
  the project link and the counts, and the choice to go on with the reviews
  so far (`use`), to keep waiting (`wait`: the run pulls the reviews again
  and pauses again unless they are complete) or to skip the review (`skip`);
- any other run (`sftmill run`) returns at the gate: the CLI prints where to
  review, and the same command rerun goes on from there.
"""

from __future__ import annotations

import os
from typing import Literal

from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment
from pydantic import Field

from sftmill.core.recipe import Recipe
from sftmill.core.store import Store, TableRef
from sftmill.tasks.review.gate import review_gate, status
from sftmill.tasks.stage_task import StageResult

# Seconds between the paused run's looks at its state (Prefect's default is 10).
PAUSE_POLL_S = int(os.environ.get("SFTMILL_PAUSE_POLL_S", "10"))


class ReviewResume(RunInput):
    """The form a paused run shows at a review gate."""

    choice: Literal["use", "wait", "skip"] = Field(
        default="use", description="use: go on with the reviews so far; wait: pull the reviews "
        "again and pause again unless every sampled item is reviewed; skip: go on without "
        "applying any review")


def served() -> bool:
    """Is this flow run a deployment's (a worker or `serve` runs it)?"""
    return deployment.id is not None


def pass_gate(recipe: Recipe, gate: str, choice: str,
              upstream: StageResult | TableRef) -> StageResult:
    """The gate's stage result; its note is 'waiting' when the run must stop here."""
    result = review_gate(recipe, gate, choice, upstream)
    if result.note != "waiting" or not served():
        return result

    while result.note == "waiting":
        state = status(Store.open(recipe.db_path), recipe, gate)
        form = ReviewResume.with_initial_data(
            description=f"**{state.line()}**\n\nReview there, then choose how to go on.",
            choice="use")
        answer = pause_flow_run(wait_for_input=form, timeout=int(recipe.review.pause_hours * 3600),
                                poll_interval=PAUSE_POLL_S)
        result = review_gate(recipe, gate, answer.choice, upstream)
    return result
