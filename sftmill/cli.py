"""The `sftmill` command line."""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sftmill.config import DB_FILE, RecipeError, load_recipe

app = typer.Typer(
    help="sftmill: turn raw domain texts into supervised fine-tuning (SFT) data "
    "with Prefect flows.  Every intermediate table lives in one DuckDB file in the "
    "recipe's output_dir; re-running a recipe reuses every finished stage and "
    "every LLM call that already succeeded.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _claim(db_path: Path):
    """The run database, opened by this process; one line if another holds it."""
    from sftmill.config import output_dir_problem
    from sftmill.store import Store, StoreBusyError

    problem = output_dir_problem(db_path.parent)
    if problem:
        _fail(f"output folder: {problem}")
    try:
        return Store.open(db_path)
    except StoreBusyError as err:
        _fail(str(err))


def _run_db(run_dir: Path):
    """An existing run's database."""
    db = run_dir / DB_FILE
    if not db.is_file():
        _fail(f"{run_dir}: no sftmill.duckdb here")
    return _claim(db)


def _load_checked(recipe_path: Path, skip_preflight: bool = False):
    from sftmill.preflight import preflight

    try:
        recipe = load_recipe(recipe_path)
        if not skip_preflight:
            preflight(recipe)
    except RecipeError as err:
        _fail(str(err))
    return recipe


class RichReporter:
    """Progress bars per stage, drawn by rich."""

    def __init__(self, progress):
        self.progress = progress

    def start(self, stage: str, total: int):
        return self.progress.add_task(stage, total=total, stage=stage)

    def advance(self, handle, n: int = 1) -> None:
        self.progress.advance(handle, n)

    def status(self, handle, text: str) -> None:
        stage = self.progress.tasks[[t.id for t in self.progress.tasks].index(handle)].fields["stage"]
        self.progress.update(handle, description=f"{stage} · {text}")

    def finish(self, handle, note: str = "") -> None:
        task = self.progress.tasks[[t.id for t in self.progress.tasks].index(handle)]
        desc = task.fields.get("stage", task.description) + (f" ({note})" if note else "")
        self.progress.update(handle, completed=task.total, description=desc)


def _quiet_prefect(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral server migrates a new Prefect home's database before it
    # answers: over Prefect's 20 s default on 2 busy cores (seen 2026-12-01).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def print_summary(store, run_id: str | None, elapsed: float | None = None,
                  targets: dict[str, float] | None = None, recipe=None) -> None:
    from sftmill.summary import or_dash, summarize

    s = summarize(store, targets, recipe)
    stages = Table(title="Stages", title_justify="left")
    for col in ("stage", "in", "out", "seconds", ""):
        stages.add_column(col, justify="right" if col in ("in", "out", "seconds") else "left")
    for row in s.stages:
        reused = "reused from cache" if run_id and row["run_id"] != run_id else ""
        stages.add_row(row["stage"], str(row["n_in"]), str(row["n_out"]),
                       f"{row['seconds']:.1f}", reused)
    console.print(stages)
    if s.rejects:
        rejects = Table(title="Dropped, by reason", title_justify="left")
        for col in ("stage", "reason", "count"):
            rejects.add_column(col)
        for stage, reason, n in s.rejects:
            rejects.add_row(stage, reason, str(n))
        console.print(rejects)
    if s.llm:
        planned = recipe is not None
        llm = Table(title="LLM calls", title_justify="left")
        for col in ("stage", "model", *(["plan"] if planned else []), "sent", "hits",
                    "errors", "tokens in", "tokens out", "s", *(["cost"] if planned else [])):
            llm.add_column(col, no_wrap=col == "stage",  # stage names whole
                           max_width=14 if col == "model" else None)
        for r in s.llm:
            llm.add_row(r["stage"], r["model"], *([or_dash(r["planned"])] if planned else []),
                        str(r["sent"]), str(r["cache_hits"]), str(r["errors"]),
                        str(r["tokens_in"]), str(r["tokens_out"]), f"{r['seconds']:.1f}",
                        *([or_dash(r["cost"], "{:,.4f}")] if planned else []))
        console.print(llm)
    if s.tables.get("prompts"):
        shares = Table(title="Prompts per subdomain", title_justify="left")
        for col in ("subdomain", "target", "actual", "prompts"):
            shares.add_column(col)
        for r in s.shares:
            target = "-" if r["target"] is None else f"{r['target']:.0%}"
            shares.add_row(r["subdomain"], target, f"{r['actual']:.0%}", str(r["count"]))
        console.print(shares)
    if s.openings:
        (w0, s0), (w1, s1) = s.openings["before"], s.openings["after"]
        console.print(f'Most common opening: "{w0}" {s0:.0%} of prompts before rephrasing, '
                      f'"{w1}" {s1:.0%} after')
    filled = {k: v for k, v in s.tables.items() if v}
    if filled:
        console.print("Rows: " + ", ".join(f"{k} {v}" for k, v in filled.items()))
    print_samples(store)
    if elapsed is not None:
        console.print(f"Run database: {store.path}  ({elapsed:.0f} s)")


def _clip(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def print_samples(store, n: int = 3) -> None:
    """A few finished records: prompt, answer and the passage it cites."""
    from sftmill.summary import sample_records

    samples = sample_records(store, 1, per_subdomain=True)[:n]  # one per subdomain first
    if len(samples) < n:
        seen = {r["prompt"] for r in samples}
        samples += [r for r in sample_records(store, n) if r["prompt"] not in seen][:n - len(samples)]
    if not samples:
        return
    from sftmill.tasks.curate import kept_count

    console.print(f"[bold]Sample records[/] ({len(samples)} of {kept_count(store)}):")
    for r in samples:
        console.print(f"• [bold]prompt[/] ({r['subdomain']}): {_clip(r['prompt'], 200)}",
                      highlight=False, soft_wrap=True)
        console.print(f"  [bold]answer[/]: {_clip(r['answer'], 300)}", highlight=False,
                      soft_wrap=True)
        if r["passage"]:
            source = (r["source"] or "").rsplit("/", 1)[-1]
            console.print(f"  [bold]cites[/] {source}: {_clip(r['passage'], 200)}",
                          highlight=False, soft_wrap=True)


def print_plan(recipe) -> None:
    """Per LLM stage: expected calls, tokens and cost (tasks/plan.py)."""
    from sftmill.summary import or_dash
    from sftmill.tasks.plan import plan_recipe

    plans, chunks, rates = plan_recipe(recipe)
    table = Table(title=f"Plan for {recipe.name}: {chunks} chunks, target "
                        f"{recipe.sizes.target_prompts} prompts", title_justify="left")
    for col in ("stage", "model", "calls", "tokens in", "tokens out", "cost"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    priced = [p.cost for p in plans if p.cost is not None]
    for p in plans:
        table.add_row(p.stage, p.model + (" (batch)" if p.batch else ""), f"{p.calls:,}",
                      f"{p.tokens_in:,}", f"{p.tokens_out:,}", or_dash(p.cost, "{:,.2f}"))
    table.add_row("total", "", f"{sum(p.calls for p in plans):,}",
                  f"{sum(p.tokens_in for p in plans):,}", f"{sum(p.tokens_out for p in plans):,}",
                  f"{sum(priced):,.2f}" if priced else "-", style="bold")
    console.print(table)
    console.print(f"Rates: {rates}."
                  + ("  (batch): through the Batch API, at the batch price where `prices` "
                     "gives one." if any(p.batch for p in plans) else ""))
    if len(priced) < len(plans):
        console.print("No price for some models: add them under `prices:` "
                      "(per million input and output tokens) to see the cost.")


@app.command()
def plan(recipe: Path = typer.Argument(..., help="Recipe YAML file.")) -> None:
    """Show what running RECIPE will spend, before running it: per LLM stage,
    the expected calls, input and output tokens, and the cost from the
    recipe's `prices` section.

    Reads and chunks the inputs (no LLM call, nothing written).  Counts follow
    the stages' sizing rules, with the rates they assume printed below the
    table (web rounds only when the corpus falls short of the target).
    """
    print_plan(_load_checked(recipe, skip_preflight=True))


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
) -> None:
    """Run the whole pipeline on RECIPE locally, in Prefect's ephemeral mode (no server needed).

    Raw texts → prompts → grounded answers → RUN_DIR/dataset.jsonl,
    dataset.parquet and card.md (RUN_DIR is the recipe's output_dir).

    Checks the recipe, its inputs and its endpoints first; a problem stops the
    run with one line naming it.  Stages already done with the same inputs
    come back from Prefect's cache; LLM calls already answered come back from
    the run's llm_calls table.
    """
    _quiet_prefect(verbose)  # before anything imports Prefect
    checked = _load_checked(recipe)
    if dry_run:
        print_plan(checked)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sftmill.flows.params import RunParams
    from sftmill.flows.pipeline import pipeline
    from sftmill.progress import set_reporter
    from sftmill.store import Store

    store = _claim(checked.db_path)
    from sftmill.embeddings import preload

    preload([checked.embedding, checked.dedup_embedding, checked.curation.embedding])
    import logging

    from sftmill.llm.budget import without_budget_stops

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(without_budget_stops)
    started = time.perf_counter()
    console.print(f"sftmill: running recipe [bold]{checked.name}[/] → {checked.run_dir.resolve()}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bars:
        previous = set_reporter(RichReporter(bars))
        try:
            state = pipeline(RunParams(recipe_path=str(recipe.resolve()), review=review.value),
                             return_state=True)
        finally:
            set_reporter(previous)
    run_id = str(state.state_details.flow_run_id)
    from sftmill.tasks.generate import target_shares

    targets = target_shares(checked)
    if not state.is_completed():
        print_summary(store, run_id, targets=targets, recipe=checked)
        from sftmill.llm.budget import budget_message

        stop = budget_message(state.message)
        if stop:
            _fail(stop, code=1)
        _fail(f"run failed: {state.message}. Finished stages and LLM calls are kept; "
              "run the same command again to resume.", code=1)
    print_summary(store, run_id, time.perf_counter() - started, targets, checked)
    run_dir = checked.run_dir.resolve()
    from sftmill.tasks.review_gate import pending_gate

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
    from sftmill.tasks.curate import kept_count

    records = kept_count(store)
    if not records:
        from sftmill.summary import empty_run_hint

        console.print(empty_run_hint(store), highlight=False, soft_wrap=True)
    console.print(f"Dataset: {records} records in {run_dir / 'dataset.jsonl'} "
                  f"({checked.export.format} format) and {run_dir / 'dataset.parquet'}",
                  highlight=False, soft_wrap=True)
    console.print(f"Card: {run_dir / 'card.md'}", highlight=False, soft_wrap=True)
    Store.close_all()


def _init_epilog() -> str:
    from sftmill.scaffold import field_docs

    return "Fields of the recipe it writes (each is commented in the file):\n\n" + "\n\n".join(
        f"{name}: {doc}" if doc else name for name, doc in field_docs())


@app.command(epilog=_init_epilog())
def init(
    texts: Path = typer.Argument(..., help="Folder (or file) of your own domain texts."),
    domain: str = typer.Option(..., "--domain", "-d", help="The domain, e.g. 'Particle physics'."),
    out: Path = typer.Option(None, "--out", "-o", help="Recipe file to write (default: "
                             "recipe.yaml beside TEXTS)."),
    name: str = typer.Option(None, help="Run name (default: from the domain)."),
    subdomains: int = typer.Option(3, help="Subdomains the generator proposes from the texts "
                                   "(0: leave them for you to fill in)."),
    force: bool = typer.Option(False, help="Overwrite an existing recipe file."),
) -> None:
    """Write a commented recipe for a folder of your texts, check it, and print
    the command that runs it.

    The generator (the embedded model) proposes subdomains from the texts'
    headings and first lines; edit them, add target shares, and run."""
    import re

    from sftmill.config import LLMEndpoint
    from sftmill.scaffold import propose_subdomains, render_recipe

    if not texts.exists():
        _fail(f"{texts}: no such file or folder")
    target = out or texts.parent / "recipe.yaml"
    if target.exists() and not force:
        _fail(f"{target} exists; pass --force to overwrite it or --out another path")
    run_name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", domain.lower()).strip("-") or "run"
    proposed = []
    if subdomains > 0:
        console.print(f"asking the generator for {subdomains} subdomains of {domain} …")
        proposed = propose_subdomains(texts if texts.is_dir() else texts.parent, domain,
                                      subdomains, LLMEndpoint(temperature=0.0, max_tokens=200))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_recipe(run_name, domain, texts, target.parent, proposed),
                      encoding="utf-8")
    checked = _load_checked(target, skip_preflight=True)
    console.print(f"wrote {target} (recipe {checked.name}; subdomains: "
                  f"{', '.join(proposed) if proposed else 'none yet, fill them in'})")
    console.print(f"run it with:  sftmill run {target}", highlight=False, soft_wrap=True)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    offline: bool = typer.Option(False, help="Skip the endpoint and model checks."),
) -> None:
    """Check RECIPE (keys, types, input paths, endpoints) without running anything."""
    checked = _load_checked(recipe, skip_preflight=offline)
    console.print(f"recipe {checked.name}: ok (output_dir {checked.run_dir})")


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
        _fail("PREFECT_API_URL is not set: start a server (prefect server start) and "
              "export PREFECT_API_URL=http://127.0.0.1:4200/api")
    defaults: dict = {}
    checked = None
    if recipe is not None:
        checked = _load_checked(recipe, skip_preflight=True)
        defaults = {"params": {"recipe_path": str(recipe.resolve())}}
    if cron and interval:
        _fail("give --cron or --interval, not both")
    schedule = pipeline_schedule(checked, cron, interval)
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    from prefect import serve as prefect_serve
    from prefect.deployments.runner import EntrypointType

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


CURATION_HELP = ("Curation config YAML (as for `sftmill curate`: checks and thresholds) for the "
                 "curate stage before export; default: the default checks.")


@app.command("self-instruct")
def self_instruct(
    seeds: Path = typer.Argument(..., help="Seed tasks, JSONL of {instruction, instances: "
                                 "[{input, output}], is_classification} (see data/self_instruct)."),
    target: int = typer.Option(100, help="Machine-generated instructions to keep."),
    out: Path = typer.Option(Path("runs/self-instruct"), help="Run folder for the DuckDB file and exports."),
    rounds: int = typer.Option(20, help="Most bootstrapping rounds."),
    prompts_per_round: int = typer.Option(8, help="Generation prompts per round."),
    format: str = typer.Option("openai", "--format", "-f", help="openai, sharegpt or alpaca."),
    base_url: str = typer.Option(None, help="OpenAI-compatible server; default: the embedded model."),
    model: str = typer.Option(None, help="Model name on that server."),
    curation: Path = typer.Option(None, "--curation", help=CURATION_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's INFO logs."),
) -> None:
    """Self-Instruct (Wang et al., 2022) from a seed task file.

    Bootstraps instructions and instances from SEEDS with the paper's filters
    and ROUGE-L novelty check, then exports with lineage."""
    _quiet_prefect(verbose)
    from sftmill.tasks.self_instruct import SelfInstructConfig, load_seeds

    _check_format(format)
    if not seeds.is_file():
        _fail(f"{seeds}: seed file not found")
    try:
        load_seeds(seeds)
    except RecipeError as err:
        _fail(str(err))
    from sftmill.flows.self_instruct_flow import self_instruct_flow

    cfg = _config(SelfInstructConfig, curation=_curation(curation), seeds_path=str(seeds.resolve()), output_dir=str(out.resolve()),
                  target=target, max_rounds=rounds, prompts_per_round=prompts_per_round,
                  generator=_endpoint(base_url, model))
    _run_flow("self-instruct", out, lambda: self_instruct_flow(cfg, format, return_state=True),
              cfg.llm_templates())


def _curation(path: Path | None):
    """The generator's curation settings from a `sftmill curate` config file,
    or one line naming its problem."""
    from sftmill.config import Curation, load_curate_config

    if path is None:
        return Curation()
    try:
        cfg = load_curate_config(path)
    except RecipeError as err:
        _fail(str(err))
    return Curation(**cfg.model_dump(include=set(Curation.model_fields)))


def _endpoint(base_url: str | None, model: str | None, **settings):
    """The embedded model, or an OpenAI-compatible server when `base_url` is given."""
    from sftmill.config import LLMEndpoint

    settings.setdefault("max_tokens", 400)
    if base_url:
        return LLMEndpoint(backend="openai", base_url=base_url, model=model or "default", **settings)
    return LLMEndpoint(**settings)


def _config(cls, **fields):
    """A generator's config from the command's options, or one line naming
    the option whose value it refused."""
    from pydantic import ValidationError

    try:
        return cls(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        _fail(f"--{first['loc'][0]}: {first['msg']}".replace("_", "-"))


def _check_format(fmt: str) -> None:
    from sftmill.tasks.export import FORMATS

    if fmt not in FORMATS:
        _fail(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")


def _check_input(path: Path) -> None:
    from sftmill.tasks.pairs_io import read_items

    try:
        read_items(path)
    except RecipeError as err:
        _fail(str(err))


@app.command()
def evol(
    input: Path = typer.Argument(..., help="Instructions to evolve: a .txt file (one per line) or "
                                 "JSONL (Alpaca, prompt/response, OpenAI messages, ShareGPT, or an "
                                 "earlier sftmill export)."),
    rounds: int = typer.Option(4, "--rounds", "-m", help="Evolution rounds M."),
    out: Path = typer.Option(Path("runs/evol"), help="Run folder for the DuckDB file and exports."),
    operations: str = typer.Option(",".join(("add_constraints", "deepen", "concretize",
                                             "increase_reasoning", "complicate_input", "breadth")),
                                   help="Comma-separated operations to draw from."),
    judge: bool = typer.Option(True, help="Ask the judge LLM whether each evolution adds information."),
    include_inputs: bool = typer.Option(False, help="Also export input pairs that have a response."),
    format: str = typer.Option("openai", "--format", "-f", help="openai, sharegpt or alpaca."),
    base_url: str = typer.Option(None, help="OpenAI-compatible server; default: the embedded model."),
    model: str = typer.Option(None, help="Model name on that server."),
    seed: int = typer.Option(0, help="Seed for operation draws and sampling."),
    curation: Path = typer.Option(None, "--curation", help=CURATION_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's INFO logs."),
) -> None:
    """Evol-Instruct (Xu et al., 2023): evolve instructions for M rounds.

    Each round rewrites every lineage's latest instruction with a random
    operation (in-depth: add constraints, deepen, concretize, increase
    reasoning, complicate input; in-breadth: a rarer topic), drops failed
    evolutions with their reason, answers the survivors, and exports them
    with parent, operation and round."""
    _quiet_prefect(verbose)
    from sftmill.flows.evol_flow import evol_flow
    from sftmill.tasks.evol import EvolConfig

    _check_format(format)
    _check_input(input)
    cfg = _config(EvolConfig, curation=_curation(curation), input_path=str(input.resolve()), output_dir=str(out.resolve()),
                  rounds=rounds, operations=tuple(o.strip() for o in operations.split(",")),
                  judge_info_gain=judge, include_inputs=include_inputs, seed=seed,
                  generator=_endpoint(base_url, model),
                  judge=_endpoint(base_url, model, temperature=0.0, max_tokens=16))
    _run_flow("evol-instruct", out, lambda: evol_flow(cfg, format, return_state=True),
              cfg.llm_templates())


def _augment(kind: str, input: Path, out: Path, fmt: str, base_url, model, curation,
             **settings) -> None:
    from sftmill.flows.augment_flow import augment_flow
    from sftmill.tasks.augment import AugmentConfig

    _check_format(fmt)
    _check_input(input)
    cfg = _config(AugmentConfig, input_path=str(input.resolve()), output_dir=str(out.resolve()),
                  generator=_endpoint(base_url, model), curation=_curation(curation), **settings)
    _run_flow(kind, out, lambda: augment_flow(cfg, fmt, return_state=True),
              cfg.llm_templates())


def _fields(text: str) -> tuple[str, ...]:
    if text not in ("instruction", "response", "both"):
        _fail(f"--field: {text!r} is not one of instruction, response, both")
    return ("instruction", "response") if text == "both" else (text,)


INPUT_HELP = ("Instructions or pairs: a .txt file (one instruction per line) or JSONL (Alpaca, "
              "prompt/response, OpenAI messages, ShareGPT, or an earlier sftmill export); "
              "instructions without a response get one from the generator.")


@app.command()
def paraphrase(
    input: Path = typer.Argument(..., help=INPUT_HELP),
    field: str = typer.Option("instruction", help="What to paraphrase: instruction, response or both."),
    n: int = typer.Option(2, help="Paraphrases per text."),
    min_similarity: float = typer.Option(0.75, help="Least embedding cosine with the original."),
    originals: bool = typer.Option(True, help="Export the original pairs too."),
    out: Path = typer.Option(Path("runs/paraphrase"), help="Run folder for the DuckDB file and exports."),
    format: str = typer.Option("openai", "--format", "-f", help="openai, sharegpt or alpaca."),
    base_url: str = typer.Option(None, help="OpenAI-compatible server; default: the embedded model."),
    model: str = typer.Option(None, help="Model name on that server."),
    curation: Path = typer.Option(None, "--curation", help=CURATION_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's INFO logs."),
) -> None:
    """Paraphrase instructions and/or responses with the LLM.

    Drops variants that are unchanged, repeated or drift in meaning
    (embedding similarity) and exports each kept variant as a pair with lineage."""
    _quiet_prefect(verbose)
    _augment("paraphrase", input, out, format, base_url, model, curation, method="paraphrase",
             fields=_fields(field), n=n, min_similarity=min_similarity, include_originals=originals)


@app.command("back-translate")
def back_translate(
    input: Path = typer.Argument(..., help=INPUT_HELP),
    pivot: list[str] = typer.Option(["French"], help="Pivot language (repeat for several)."),
    source_language: str = typer.Option("English", help="The language of INPUT."),
    field: str = typer.Option("instruction", help="What to translate: instruction, response or both."),
    min_similarity: float = typer.Option(0.75, help="Least embedding cosine with the original."),
    originals: bool = typer.Option(True, help="Export the original pairs too."),
    out: Path = typer.Option(Path("runs/back-translate"), help="Run folder for the DuckDB file and exports."),
    format: str = typer.Option("openai", "--format", "-f", help="openai, sharegpt or alpaca."),
    base_url: str = typer.Option(None, help="OpenAI-compatible server; default: the embedded model."),
    model: str = typer.Option(None, help="Model name on that server."),
    curation: Path = typer.Option(None, "--curation", help=CURATION_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's INFO logs."),
) -> None:
    """Back-translate instructions and/or responses through pivot languages.

    The LLM translates each text into every pivot language and back; unchanged,
    repeated or drifting variants are dropped, each kept one is exported as a
    pair with lineage."""
    _quiet_prefect(verbose)
    _augment("back-translation", input, out, format, base_url, model, curation,
             method="back_translate",
             fields=_fields(field), pivots=tuple(pivot), source_language=source_language,
             min_similarity=min_similarity, include_originals=originals)


@app.command()
def templates(
    spec: Path = typer.Argument(..., help="YAML of instruction templates with [SLOT] placeholders and "
                                "the slots' values (a list, or {llm: description, n: count}); "
                                "see data/templates/particle_physics.yaml."),
    out: Path = typer.Option(Path("runs/templates"), help="Run folder for the DuckDB file and exports."),
    format: str = typer.Option("openai", "--format", "-f", help="openai, sharegpt or alpaca."),
    base_url: str = typer.Option(None, help="OpenAI-compatible server; default: the embedded model."),
    model: str = typer.Option(None, help="Model name on that server."),
    seed: int = typer.Option(0, help="Seed for drawing fillings and sampling."),
    curation: Path = typer.Option(None, "--curation", help=CURATION_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's INFO logs."),
) -> None:
    """Instructions from templates with slots, answered by the generator.

    Slots are filled from lists or by the LLM; near-duplicate fillings are
    dropped; records carry their template and slot values."""
    _quiet_prefect(verbose)
    from sftmill.flows.template_flow import template_flow
    from sftmill.tasks.templates import TemplatesConfig, load_spec

    _check_format(format)
    try:
        load_spec(spec)
    except RecipeError as err:
        _fail(str(err))
    cfg = _config(TemplatesConfig, curation=_curation(curation), spec_path=str(spec.resolve()), output_dir=str(out.resolve()),
                  seed=seed, generator=_endpoint(base_url, model))
    _run_flow("templates", out, lambda: template_flow(cfg, format, return_state=True),
              cfg.llm_templates())


@app.command()
def curate(
    input: Path = typer.Argument(..., help="A dataset: JSONL (OpenAI messages, ShareGPT, Alpaca, "
                                 "prompt/response, or any sftmill export) or .txt (instructions)."),
    config: Path = typer.Option(None, "--config", "-c",
                                help="Curation config YAML: checks and thresholds (see README, "
                                "'Curation'); default: every default."),
    out: Path = typer.Option(Path("runs/curated"), help="Run folder: the DuckDB file with every "
                             "score, the curated dataset.jsonl / dataset.parquet and card.md."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's INFO logs."),
) -> None:
    """Curate INPUT: length bounds, keyword block/allow lists, fluency
    (perplexity under the embedded model), offensive language, optional LLM
    safety and adherence judges, near duplicates and benchmark
    decontamination; export what passes, with a card.

    Every check's score per record stays in the run folder's DuckDB file:
    rerun with a changed threshold and only the decision is made again (no
    LLM call, no perplexity computed twice).  Records keep the lineage of
    the export they came from."""
    _quiet_prefect(verbose)
    from sftmill.config import load_curate_config
    from sftmill.flows.curate_flow import curate_flow

    _check_input(input)
    try:
        cfg = load_curate_config(config)
    except RecipeError as err:
        _fail(str(err))
    from sftmill.tasks.curate import standalone_judge

    templates = [(name, standalone_judge(cfg), name, 0)
                 for name in ("safety", "adherence") if getattr(cfg, name).enabled]
    _run_flow("curate", out, lambda: curate_flow(str(input.resolve()), cfg, str(out.resolve()),
                                                 return_state=True), templates, _near_duplicates(cfg))


@app.command()
def mix(
    sources: list[str] = typer.Argument(..., help="Datasets to mix: run folders or dataset files "
                                        "(any format sftmill reads), each as PATH or NAME=PATH."),
    weights: str = typer.Option(None, help="Target shares, e.g. pipeline=2,evol=1,self-instruct=1 "
                                "(normalised); default: equal."),
    by: str = typer.Option("source", help="What the weights are of: 'source', or a metadata "
                           "field of the records (subdomain, task_type, generator …)."),
    total: int = typer.Option(None, min=1, help="Records wanted; default: the most the weights "
                              "allow from what curation keeps."),
    config: Path = typer.Option(None, "--config", "-c", help="Curation config YAML (as for "
                                "`sftmill curate`); near duplicates are removed across sources."),
    out: Path = typer.Option(Path("runs/mix"), help="Run folder for the DuckDB file, the mixed "
                             "dataset.jsonl / dataset.parquet and card.md."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's INFO logs."),
) -> None:
    """Mix several datasets into one: records keep their own lineage (plus
    `mix.source`), near duplicates are removed across sources, the mix is
    curated, and each group (source, or the --by field) gets its weight's
    share of the records within one record; the card shows the mix against
    its targets."""
    _quiet_prefect(verbose)
    from sftmill.config import load_curate_config
    from sftmill.flows.mix_flow import mix_flow
    from sftmill.tasks.curate import standalone_judge
    from sftmill.tasks.mix import Source, parse_weights

    try:
        parsed = [Source.parse(s) for s in sources]
        names = [s.name for s in parsed]
        if len(set(names)) != len(names):
            raise RecipeError("two sources have the same name: give them NAME=PATH")
        shares = parse_weights(weights, names if by == "source" else [])
        unknown = sorted(set(shares) - set(names)) if by == "source" else []
        if unknown:
            raise RecipeError(f"--weights: no source named {unknown[0]} (sources: {', '.join(names)})")
        cfg = load_curate_config(config)
    except RecipeError as err:
        _fail(str(err))
    for source in parsed:
        _check_input(source.path)
    templates = [(name, standalone_judge(cfg), name, 0)
                 for name in ("safety", "adherence") if getattr(cfg, name).enabled]
    _run_flow("mix", out, lambda: mix_flow([f"{s.name}={s.path.resolve()}" for s in parsed],
                                           shares, cfg, str(out.resolve()), by, total,
                                           return_state=True), templates, _near_duplicates(cfg))


def _near_duplicates(cfg) -> list:
    """The embedding model a standalone curation uses, if it removes near duplicates."""
    from sftmill.tasks.curate import standalone_embedding

    return [standalone_embedding(cfg)] if cfg.near_duplicates.enabled else []


def _run_flow(kind: str, out: Path, start, templates=(), embeddings=()) -> None:
    """Run a flow (`start()` returns its final state) whose run folder is
    `out`, with progress bars and the closing summary; `templates`: its LLM
    steps, checked against the model's context first; `embeddings`: the
    embedding models it uses (loaded in the background meanwhile)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sftmill.progress import set_reporter
    from sftmill.store import Store

    from sftmill.preflight import check_templates_fit

    store = _claim(out.resolve() / DB_FILE)
    try:
        check_templates_fit(templates)
    except RecipeError as err:
        _fail(str(err))
    store.execute("DELETE FROM meta WHERE key = 'stopped_early'")
    from sftmill.embeddings import preload

    preload(embeddings)
    started = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bars:
        previous = set_reporter(RichReporter(bars))
        try:
            state = start()
        finally:
            set_reporter(previous)
    print_summary(store, str(state.state_details.flow_run_id))
    if not state.is_completed():
        _fail(f"run failed: {state.message}. Rerun the same command to resume.", code=1)
    from sftmill.tasks.curate import kept_count

    records = kept_count(store)
    stopped = store.get_meta("stopped_early")
    if stopped:
        console.print(stopped, highlight=False)
    console.print(f"{kind}: {records} records in {out / 'dataset.jsonl'} "
                  f"({time.perf_counter() - started:.0f} s); card: {out / 'card.md'}")
    if not records:
        judged = store.scalar("SELECT count(*) FROM rejects WHERE reason = 'no_information_gain' "
                              "AND detail LIKE '%judge found it equal%'")
        console.print("no record survived: the drops above say why"
                      + ("; the judge found many evolutions equal to their parent (a small "
                         "judge model often does: try --no-judge or a stronger --base-url)"
                         if judged else ""), highlight=False)
    Store.close_all()


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run's output_dir (holds sftmill.duckdb)."),
    format: str = typer.Option("openai", "--format", "-f",
                               help="openai (messages), sharegpt (conversations) or alpaca."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Output JSONL path (default RUN_DIR/dataset.<format>.jsonl)."),
) -> None:
    """Write a finished run's dataset in another format, with its lineage metadata.

    Reads the run's `dataset` table; writes atomically (a crash never leaves a
    half-written file that looks complete).
    """
    from sftmill.tasks.export import export_jsonl

    _check_format(format)
    store = _run_db(run_dir)
    target = out or run_dir / f"dataset.{format}.jsonl"
    n = export_jsonl(store, format, target)
    console.print(f"wrote {n} records to {target}")


review_app = typer.Typer(help="Human review: sample records into a sheet for experts, then "
                         "apply their accept / reject / edit decisions to the run's export.",
                         no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("sample")
def review_sample(
    run_dir: Path = typer.Argument(..., help="A finished run's folder (holds sftmill.duckdb)."),
    n: int = typer.Option(50, "--n", help="Records to draw at random (all when fewer)."),
    out: Path = typer.Option(None, "--out", "-o", help="The sheet (default RUN_DIR/review.csv)."),
    seed: int = typer.Option(0, help="Seed for the draw."),
) -> None:
    """Write a CSV review sheet of records drawn at random.

    Columns: record_id, prompt, answer and the empty decision (accept |
    reject | edit), edited_prompt, edited_answer and note."""
    from sftmill.tasks.review import write_sheet

    target = out or run_dir / "review.csv"
    written = write_sheet(_run_db(run_dir), target, n, seed)
    console.print(f"wrote {written} records to {target}; fill in decision (accept, reject or edit) "
                  f"and run: sftmill review apply {run_dir} {target}")


@review_app.command("apply")
def review_apply(
    run_dir: Path = typer.Argument(..., help="The run the sheet was drawn from."),
    sheet: Path = typer.Argument(..., help="The filled review sheet (CSV)."),
) -> None:
    """Apply a filled review sheet to the run's export.

    Stores the decisions and rewrites dataset.jsonl and dataset.parquet:
    rejected records left out, edits applied, each reviewed record's
    metadata carrying its review; card.md's review section is rewritten.
    A `reviewer` column lets several reviewers share a sheet (majority
    decides, a tie goes to the latest).  Unusable rows are listed and skipped."""
    from sftmill.tasks.export import export_files
    from sftmill.tasks.review import apply_sheet, detect_format, refresh_card

    if not sheet.is_file():
        _fail(f"{sheet}: sheet not found")
    store = _run_db(run_dir)
    try:
        report = apply_sheet(store, sheet)
    except RecipeError as err:
        _fail(str(err))
    for line, reason in report.skipped:
        console.print(f"skipped line {line}: {reason}", highlight=False)
    fmt = detect_format(run_dir / "dataset.jsonl")
    n = export_files(store, fmt, run_dir)
    refresh_card(run_dir / "card.md", store)
    decided = sum(report.applied.values())
    accepted = report.applied.get("accept", 0) + report.applied.get("edit", 0)
    console.print(f"applied {decided} decisions ({', '.join(f'{k} {v}' for k, v in sorted(report.applied.items())) or 'none'}), "
                  f"{report.blank} rows undecided, {len(report.skipped)} skipped; "
                  + (f"kept by reviewers: {accepted / decided:.0%}; " if decided else "")
                  + f"{n} records in {run_dir / 'dataset.jsonl'} ({fmt})")


@app.command()
def stats(
    run: Path = typer.Argument(..., help="A run's output_dir (holds sftmill.duckdb), or the "
                               "recipe that made it (.yaml)."),
) -> None:
    """Show per-stage counts, drop reasons and LLM usage of an earlier run.

    Given the recipe, the LLM table also shows the calls `sftmill plan`
    expects per stage and their cost at the recipe's `prices`, and the
    subdomain table the recipe's targets — as `sftmill run` prints them."""
    if run.is_file() and run.suffix in (".yaml", ".yml"):
        from sftmill.tasks.generate import target_shares

        recipe = _load_checked(run, skip_preflight=True)
        print_summary(_run_db(recipe.run_dir), None, targets=target_shares(recipe), recipe=recipe)
    else:
        print_summary(_run_db(run), None)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted: finished stages and LLM calls are kept in the run database")
        sys.exit(130)


if __name__ == "__main__":
    main()
