"""`sftmill self-instruct`, `evol`, `paraphrase`, `back-translate` and `templates`: the
classic generators, each a flow with its own run folder."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from sftmill.cli.common import app, checked_curate_config, fail
from sftmill.cli.output import run_flow
from sftmill.core.curation import Curation
from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.errors import RecipeError
from sftmill.flows.augment_flow import augment_flow
from sftmill.flows.evol_flow import evol_flow
from sftmill.flows.self_instruct_flow import self_instruct_flow
from sftmill.flows.template_flow import template_flow
from sftmill.tasks.generators.augment import AugmentConfig
from sftmill.tasks.generators.evol import EvolConfig
from sftmill.tasks.generators.self_instruct import SelfInstructConfig, load_seeds
from sftmill.tasks.generators.templates import TemplatesConfig, load_spec
from sftmill.tasks.report.export import FORMATS
from sftmill.tasks.sources.pairs import read_items

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
    check_format(format)
    if not seeds.is_file():
        fail(f"{seeds}: seed file not found")
    try:
        load_seeds(seeds)
    except RecipeError as err:
        fail(str(err))

    cfg = config_from_options(SelfInstructConfig, curation=curation_settings(curation), seeds_path=str(seeds.resolve()), output_dir=str(out.resolve()),
                  target=target, max_rounds=rounds, prompts_per_round=prompts_per_round,
                  generator=endpoint_for(base_url, model))
    run_flow("self-instruct", out, lambda: self_instruct_flow(cfg, format, return_state=True),
              cfg.llm_templates())


def curation_settings(path: Path | None):
    """The generator's curation settings from a `sftmill curate` config file,
    or one line naming its problem."""
    if path is None:
        return Curation()
    return Curation(**checked_curate_config(path).model_dump(include=set(Curation.model_fields)))


def endpoint_for(base_url: str | None, model: str | None, **settings):
    """The embedded model, or an OpenAI-compatible server when `base_url` is given."""
    settings.setdefault("max_tokens", 400)
    if base_url:
        return LLMEndpoint(backend="openai", base_url=base_url, model=model or "default", **settings)
    return LLMEndpoint(**settings)


def config_from_options(cls, **fields):
    """A generator's config from the command's options, or one line naming
    the option whose value it refused."""
    try:
        return cls(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        fail(f"--{first['loc'][0]}: {first['msg']}".replace("_", "-"))


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        fail(f"{option}: {value!r} is not one of {', '.join(choices)}")


def check_format(fmt: str) -> None:
    check_choice("--format", fmt, FORMATS)


def check_input(path: Path) -> None:
    try:
        read_items(path)
    except RecipeError as err:
        fail(str(err))


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
    check_format(format)
    check_input(input)
    cfg = config_from_options(EvolConfig, curation=curation_settings(curation), input_path=str(input.resolve()), output_dir=str(out.resolve()),
                  rounds=rounds, operations=tuple(o.strip() for o in operations.split(",")),
                  judge_info_gain=judge, include_inputs=include_inputs, seed=seed,
                  generator=endpoint_for(base_url, model),
                  judge=endpoint_for(base_url, model, temperature=0.0, max_tokens=16))
    run_flow("evol-instruct", out, lambda: evol_flow(cfg, format, return_state=True),
              cfg.llm_templates())


def run_augment(kind: str, input: Path, out: Path, fmt: str, base_url, model, curation,
             **settings) -> None:
    check_format(fmt)
    check_input(input)
    cfg = config_from_options(AugmentConfig, input_path=str(input.resolve()), output_dir=str(out.resolve()),
                  generator=endpoint_for(base_url, model), curation=curation_settings(curation), **settings)
    run_flow(kind, out, lambda: augment_flow(cfg, fmt, return_state=True),
              cfg.llm_templates())


def fields_of(text: str) -> tuple[str, ...]:
    if text not in ("instruction", "response", "both"):
        fail(f"--field: {text!r} is not one of instruction, response, both")
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
    run_augment("paraphrase", input, out, format, base_url, model, curation, method="paraphrase",
             fields=fields_of(field), n=n, min_similarity=min_similarity, include_originals=originals)


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
    run_augment("back-translation", input, out, format, base_url, model, curation,
             method="back_translate",
             fields=fields_of(field), pivots=tuple(pivot), source_language=source_language,
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
    check_format(format)
    try:
        load_spec(spec)
    except RecipeError as err:
        fail(str(err))
    cfg = config_from_options(TemplatesConfig, curation=curation_settings(curation), spec_path=str(spec.resolve()), output_dir=str(out.resolve()),
                  seed=seed, generator=endpoint_for(base_url, model))
    run_flow("templates", out, lambda: template_flow(cfg, format, return_state=True),
              cfg.llm_templates())
