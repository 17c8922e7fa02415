"""`sftmill serve`: sftmill's flows as deployments on a Prefect server."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from prefect import serve as prefect_serve
from prefect.deployments.runner import EntrypointType

from sftmill.cli.common import app, console, fail, load_checked
from sftmill.flows.answer_flow import answer_flow
from sftmill.flows.augment_flow import augment_flow
from sftmill.flows.curate_flow import curate_flow
from sftmill.flows.evol_flow import evol_flow
from sftmill.flows.mix_flow import mix_flow
from sftmill.flows.pipeline import pipeline
from sftmill.flows.prompt_flow import prompt_flow
from sftmill.flows.self_instruct_flow import self_instruct_flow
from sftmill.flows.shard_flow import sharded
from sftmill.flows.template_flow import template_flow


def pipeline_schedule(recipe, cron: str | None, interval_minutes: int | None) -> dict:
    """`to_deployment` schedule arguments: the command line wins over the recipe."""
    if cron:
        return {"cron": cron}
    if interval_minutes:
        return {"interval": interval_minutes * 60}
    if recipe is not None and recipe.schedule.cron:
        return {"cron": recipe.schedule.cron}
    if recipe is not None and recipe.schedule.interval_minutes:
        return {"interval": recipe.schedule.interval_minutes * 60}
    return {}


@app.command()
def serve(
    recipe: Path = typer.Argument(None, help="Default recipe for runs of the deployments "
                                  "(its schedule section, if any, schedules the pipeline)."),
    cron: str = typer.Option(None, help="Run the pipeline on this cron schedule (overrides the recipe's)."),
    interval: int = typer.Option(None, help="Run the pipeline every N minutes (overrides the recipe's)."),
    limit: int = typer.Option(1, help="Flow runs this process executes at once."),
) -> None:
    """Serve sftmill's flows as deployments on a Prefect server.

    Registers the deployments (pipeline, prompts, answers, sharded, the classic
    generators: self-instruct, evol, augment, templates, and curate and mix
    for finished datasets) with the Prefect
    server named by PREFECT_API_URL and executes their runs until stopped.

    Trigger runs from the Prefect UI (a form shows every parameter), with
    `prefect deployment run 'sftmill-pipeline/pipeline'`, or on a schedule;
    retry a failed run from the UI's Retry button or `prefect flow-run retry ID`:
    completed stages come back Cached and LLM calls that succeeded are not sent again.
    """
    if not os.environ.get("PREFECT_API_URL"):
        fail("PREFECT_API_URL is not set: start a server (prefect server start) and "
              "export PREFECT_API_URL=http://127.0.0.1:4200/api")
    defaults: dict = {}
    checked = None
    if recipe is not None:
        checked = load_checked(recipe, skip_preflight=True)
        defaults = {"params": {"recipe_path": str(recipe.resolve())}}
    if cron and interval:
        fail("give --cron or --interval, not both")
    schedule = pipeline_schedule(checked, cron, interval)

    # Module entrypoints (sftmill.flows.pipeline.pipeline …): they load the
    # same way from an editable install, a wheel or a Docker image.
    by_module = {"entrypoint_type": EntrypointType.MODULE_PATH}
    deployments = [
        pipeline.to_deployment(name="pipeline", parameters=defaults, **by_module, **schedule),
        prompt_flow.to_deployment(name="prompts", parameters=defaults, **by_module),
        answer_flow.to_deployment(name="answers", parameters=defaults, **by_module),
        # One recipe in shards: each shard's prompt and answer flows as runs of the two above.
        sharded.to_deployment(name="sharded", **by_module),
        # The classic generators: their form is their config (input file, rounds, endpoints …).
        self_instruct_flow.to_deployment(name="self-instruct", **by_module),
        evol_flow.to_deployment(name="evol", **by_module),
        augment_flow.to_deployment(name="augment", **by_module),
        template_flow.to_deployment(name="templates", **by_module),
        # Curation and mixing of finished datasets: their form is the curation config.
        curate_flow.to_deployment(name="curate", **by_module),
        mix_flow.to_deployment(name="mix", **by_module),
    ]
    console.print(f"serving {len(deployments)} deployments on {os.environ['PREFECT_API_URL']}"
                  + (f" (pipeline schedule: {schedule})" if schedule else ""))
    prefect_serve(*deployments, limit=limit)
