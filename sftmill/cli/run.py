"""`sftmill plan`, `run`, `init` and `validate`: a recipe checked, planned, written or run."""

from __future__ import annotations

import logging
import re
import time
from enum import Enum
from pathlib import Path

import typer

from sftmill.cli.common import (
    app,
    claim,
    console,
    fail,
    load_checked,
    showing_progress,
    tracebacks_to,
)
from sftmill.cli.output import print_plan, print_preview, print_summary
from sftmill.cli.scaffold import field_docs, propose_subdomains, render_recipe
from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.store import Store
from sftmill.embed.models import preload
from sftmill.flows.params import RunParams
from sftmill.flows.pipeline import pipeline
from sftmill.llm.errors import run_stop_sentence, without_run_stops
from sftmill.tasks.curation.curate import kept_count
from sftmill.tasks.report.summary import empty_run_hint
from sftmill.tasks.review.gate import pending_gate
from sftmill.tasks.stages.sizing import target_shares


@app.command()
def plan(recipe: Path = typer.Argument(..., help="Recipe YAML file.")) -> None:
    """Show what running RECIPE will spend, before running it: per LLM stage,
    the expected calls, input and output tokens, and the cost from the
    recipe's `prices` section.

    Reads and chunks the inputs (no LLM call, nothing written).  Counts follow
    the stages' sizing rules, with the rates they assume printed below the
    table (web rounds only when the corpus falls short of the target).
    """
    print_plan(load_checked(recipe, skip_preflight=True))


class ReviewChoice(str, Enum):
    wait = "wait"
    use = "use"
    skip = "skip"


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file (see data/example/recipe.yaml)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's INFO logs."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Check the recipe and print its plan (`sftmill plan`); "
                                 "send nothing."),
    review: ReviewChoice = typer.Option(
        "wait", "--review",
        help="At a review gate (the recipe's review.gates): wait = stop there until every "
        "sampled item is reviewed (rerun the same command to go on); use = go on with the "
        "reviews so far; skip = go on without review."),
    preview: int = typer.Option(
        None, "--preview", min=1, max=100, metavar="N",
        help="Make about N records the shortest way (a few chunks and profiles, no web round) "
        "in RUN_DIR/preview and print them with their scores and quality figures: try a recipe "
        "in minutes before the full run."),
) -> None:
    """Run the whole pipeline on RECIPE locally, in Prefect's ephemeral mode (no server needed).

    Raw texts → prompts → grounded answers → RUN_DIR/dataset.jsonl,
    dataset.parquet and card.md (RUN_DIR is the recipe's output_dir).

    Checks the recipe, its inputs and its endpoints first; a problem stops the
    run with one line naming it.  Stages already done with the same inputs
    come back from Prefect's cache; LLM calls already answered come back from
    the run's llm_calls table.
    """
    checked = load_checked(recipe)
    params = RunParams(recipe_path=str(recipe.resolve()), review=review.value, preview=preview)
    if preview:
        checked = params.load()
    if dry_run:
        print_plan(checked)
        return

    store = claim(checked.db_path)
    preload([checked.embedding, checked.dedup_embedding, checked.curation.embedding])
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(without_run_stops)
    started = time.perf_counter()
    console.print(f"sftmill: running recipe [bold]{checked.name}[/] → {checked.run_dir.resolve()}")
    with showing_progress(), tracebacks_to(checked.run_dir) as log:
        state = pipeline(params, return_state=True)
    run_id = str(state.state_details.flow_run_id)

    targets = target_shares(checked)
    if not state.is_completed():
        print_summary(store, run_id, targets=targets, recipe=checked)

        stop = run_stop_sentence(state.message)
        if stop:
            fail(stop, code=1)
        fail(f"run failed: {state.message}. Finished stages and LLM calls are kept; "
             f"run the same command again to resume (details in {log}).", code=1)
    if preview:
        print_preview(store, checked.run_dir.resolve(), preview, time.perf_counter() - started)
        Store.close_all()
        return
    print_summary(store, run_id, time.perf_counter() - started, targets, checked)
    run_dir = checked.run_dir.resolve()

    waiting = pending_gate(store, checked)
    if waiting is not None:
        console.print(f"[bold yellow]Stopped at {waiting.line()}[/]", highlight=False, soft_wrap=True)
        how = ("annotate the tasks there" if waiting.tool == "label_studio" else
               "fill in its decision column (accept, reject or edit; reviewers may each fill a "
               f"copy named {waiting.gate}-<name>.csv beside it)")
        console.print(f"Review: {how}.  Then rerun `sftmill run {recipe}` to go on once every "
                      "item is reviewed; add --review use to go on with the reviews so far, or "
                      "--review skip to go on without them.  Finished work is kept.",
                      highlight=False, soft_wrap=True)
        Store.close_all()
        raise typer.Exit(3)

    records = kept_count(store)
    if not records:
        console.print(empty_run_hint(store), highlight=False, soft_wrap=True)
    console.print(f"Dataset: {records} records in {run_dir / 'dataset.jsonl'} "
                  f"({checked.export.format} format) and {run_dir / 'dataset.parquet'}",
                  highlight=False, soft_wrap=True)
    console.print(f"Card: {run_dir / 'card.md'}", highlight=False, soft_wrap=True)
    Store.close_all()


def init_epilog() -> str:
    return ("Fields of a recipe (the one init writes holds only those that differ from the "
            "defaults):\n\n") + "\n\n".join(
        f"{name}: {doc}" if doc else name for name, doc in field_docs())


@app.command(epilog=init_epilog())
def init(
    texts: Path = typer.Argument(..., help="Folder (or file) of your own domain texts."),
    domain: str = typer.Option(..., "--domain", "-d", help="The domain, e.g. 'Particle physics'."),
    out: Path = typer.Option(None, "--out", "-o", help="Recipe file to write (default: "
                             "recipe.yaml beside TEXTS)."),
    name: str = typer.Option(None, help="Run name (default: from the domain)."),
    subdomains: int = typer.Option(3, help="Topic subdomains to propose from the texts "
                                   "(0: leave them for you to fill in)."),
    force: bool = typer.Option(False, help="Overwrite an existing recipe file."),
) -> None:
    """Write a short, commented recipe for a folder of your texts, check it,
    and print the command that runs it.

    Subdomains are the topics the texts are about: their passages are
    embedded and clustered, and the generator (the embedded model) names
    each cluster; a name that is a file name or a title is replaced by the
    cluster's own words.  Edit them, add target shares, and run."""
    if not texts.exists():
        fail(f"{texts}: no such file or folder")
    target = out or texts.parent / "recipe.yaml"
    if target.exists() and not force:
        fail(f"{target} exists; pass --force to overwrite it or --out another path")
    run_name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", domain.lower()).strip("-") or "run"
    proposed = []
    if subdomains > 0:
        console.print(f"finding {subdomains} topics in the texts and naming them …")
        proposed = propose_subdomains(texts if texts.is_dir() else texts.parent, domain,
                                      subdomains, LLMEndpoint(temperature=0.0, max_tokens=200))
        for topic in proposed:
            if topic.note:
                console.print(f"  {topic.note}: {topic.name}", highlight=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_recipe(run_name, domain, texts, target.parent, proposed),
                      encoding="utf-8")
    checked = load_checked(target, skip_preflight=True)
    console.print(f"wrote {target} (recipe {checked.name}; subdomains: "
                  f"{', '.join(t.name for t in proposed) if proposed else 'none yet, fill them in'})",
                  highlight=False, soft_wrap=True)
    console.print(f"run it with:  sftmill run {target}", highlight=False, soft_wrap=True)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    offline: bool = typer.Option(False, help="Skip the endpoint and model checks."),
) -> None:
    """Check RECIPE (keys, types, input paths, endpoints) without running anything."""
    checked = load_checked(recipe, skip_preflight=offline)
    console.print(f"recipe {checked.name}: ok (output_dir {checked.run_dir})")
