"""`sftmill curate`, `mix`, `export`, `review` and `stats`: what is done with finished
datasets and runs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sftmill.cli.common import app, checked_curate_config, console, fail, load_checked, run_db
from sftmill.cli.generators import check_choice, check_format, check_input
from sftmill.cli.output import print_summary, run_flow
from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.errors import RecipeError
from sftmill.flows.curate_flow import curate_flow
from sftmill.flows.mix_flow import mix_flow
from sftmill.tasks.curation.checks.fluency import fluency_unavailable
from sftmill.tasks.curation.curate import standalone_embedding, standalone_judge
from sftmill.tasks.curation.mix import Source, check_groups, parse_weights
from sftmill.tasks.report.export import REASONING, export_files, export_jsonl
from sftmill.tasks.report.handoff import TRAINERS, hand_off
from sftmill.tasks.report.quality import dataset_quality, quality_markdown
from sftmill.tasks.review.annotations import refresh_card
from sftmill.tasks.review.sheets import apply_sheet, detect_format, write_sheet
from sftmill.tasks.stages.sizing import target_shares


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
    check_input(input)
    cfg = checked_curate_config(config)

    templates = [(name, standalone_judge(cfg), name, 0)
                 for name in ("safety", "adherence") if getattr(cfg, name).enabled]
    run_flow("curate", out, lambda: curate_flow(str(input.resolve()), cfg, str(out.resolve()),
                                                 return_state=True), templates, near_duplicate_models(cfg))


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
    try:
        parsed = [Source.parse(s) for s in sources]
        names = [s.name for s in parsed]
        if len(set(names)) != len(names):
            raise RecipeError("two sources have the same name: give them NAME=PATH")
        shares = parse_weights(weights, names if by == "source" else [])
        cfg = checked_curate_config(config)
        check_groups(parsed, shares, by)  # reads every source: an unreadable one stops here
    except RecipeError as err:
        fail(str(err))
    templates = [(name, standalone_judge(cfg), name, 0)
                 for name in ("safety", "adherence") if getattr(cfg, name).enabled]
    run_flow("mix", out, lambda: mix_flow([f"{s.name}={s.path.resolve()}" for s in parsed],
                                           shares, cfg, str(out.resolve()), by, total,
                                           return_state=True), templates, near_duplicate_models(cfg))


def near_duplicate_models(cfg) -> list:
    """The embedding model a standalone curation uses, if it removes near duplicates."""
    return [standalone_embedding(cfg)] if cfg.near_duplicates.enabled else []


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run's output_dir (holds sftmill.duckdb)."),
    format: str = typer.Option("openai", "--format", "-f",
                               help="openai (messages), sharegpt (conversations) or alpaca."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Output JSONL path (default RUN_DIR/dataset.<format>.jsonl)."),
    reasoning: str = typer.Option(
        "field", "--reasoning",
        help="A reasoning model's trace: 'field' (reasoning_content in OpenAI messages, "
        "thinking in ShareGPT / Alpaca), 'inline' (<think>…</think> before the answer) or 'drop'."),
    trainer: str = typer.Option(
        None, "--for", help="Ready for a trainer, in RUN_DIR (or --out, a folder): 'llama-factory' "
        "(ShareGPT records and dataset_info.json: use the folder as dataset_dir) or 'trl' "
        "(OpenAI messages and train_trl.py, a fine-tuning script for TRL's SFTTrainer)."),
) -> None:
    """Write a finished run's dataset in another format, with its lineage metadata.

    Reads the run's `dataset` table; writes atomically (a crash never leaves a
    half-written file that looks complete).
    """
    check_format(format)
    check_choice("--reasoning", reasoning, REASONING)
    if trainer is not None:
        check_choice("--for", trainer, TRAINERS)
    store = run_db(run_dir)
    if trainer is not None:
        folder = out or run_dir
        for path in hand_off(store, trainer, folder, run_dir.resolve().name, reasoning):
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        return
    target = out or run_dir / f"dataset.{format}.jsonl"
    n = export_jsonl(store, format, target, reasoning=reasoning)
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
    target = out or run_dir / "review.csv"
    written = write_sheet(run_db(run_dir), target, n, seed)
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
    if not sheet.is_file():
        fail(f"{sheet}: sheet not found")
    store = run_db(run_dir)
    try:
        report = apply_sheet(store, sheet)
    except RecipeError as err:
        fail(str(err))
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
        recipe = load_checked(run, skip_preflight=True)
        print_summary(run_db(recipe.run_dir), None, targets=target_shares(recipe), recipe=recipe)
    else:
        print_summary(run_db(run), None)


@app.command()
def quality(
    dataset: Path = typer.Argument(..., help="A run's output_dir, or a dataset JSONL file "
                                   "(OpenAI messages, ShareGPT, Alpaca or prompt/response)."),
    other: Path = typer.Argument(None, help="A second run or dataset: both side by side."),
    as_json: bool = typer.Option(False, "--json", help="Print the report (both, with OTHER) as JSON."),
    ifd: bool = typer.Option(False, "--ifd", help="Add the difficulty figure: IFD under the "
                             "embedded model (or --ifd-server), two forward passes per record "
                             "on a sample of 200 (~1 s a record on 2 cores)."),
    ifd_server: str = typer.Option(None, "--ifd-server", help="An OpenAI-compatible server "
                                   "whose /completions returns prompt logprobs (vLLM), "
                                   "as URL or URL#MODEL, for --ifd."),
) -> None:
    """Print a dataset's quality report, or compare two datasets.

    Diversity (distinct-n, pairwise ROUGE-L of prompts, distance to the
    nearest prompt and the Vendi score from MiniLM embeddings), the commonest
    opening, lengths, extractiveness (share of answers copied from their
    passages), prompts and answers that are not self-contained, judge and
    support scores, subdomain and task-type shares against the recipe's
    targets, and with --ifd the difficulty (IFD): each with its 10th–90th
    percentile and what good looks like."""
    model = None
    if ifd or ifd_server:
        url, _, name = (ifd_server or "").partition("#")
        model = (LLMEndpoint(backend="openai", base_url=url, model=name or "default")
                 if ifd_server else LLMEndpoint())
        if problem := fluency_unavailable(model):
            fail(f"--ifd: {problem}")
    reports = []
    for path in [dataset] + ([other] if other else []):
        try:
            reports.append(dataset_quality(path, model))
        except RecipeError as err:
            fail(str(err))
    if as_json:
        print(json.dumps(reports[0] if len(reports) == 1 else
                         {str(dataset): reports[0], str(other): reports[1]}, indent=1))
        return
    names = (dataset.name or str(dataset), other.name if other else "")
    print("\n\n".join(quality_markdown(reports[0], reports[1] if other else None, names)))
