"""Checks that run before any work: every problem here is fatal and is
reported as one line naming the recipe field."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

from sftmill.core.errors import RecipeError
from sftmill.core.files import space_problem
from sftmill.core.recipe import Recipe
from sftmill.embed.models import model_available
from sftmill.llm.backends import make_llm, model_name, preflight_endpoint
from sftmill.llm.base import CHUNK, DISK_RESERVE, worst_case_bytes
from sftmill.llm.openai_http import check_reachable
from sftmill.prompts import load_template
from sftmill.tasks.curation.checks.decontam import check_benchmarks
from sftmill.tasks.curation.checks.fluency import fluency_unavailable
from sftmill.tasks.sources.documents import expand_source
from sftmill.tasks.stages.chunk import CHARS_PER_TOKEN

TEMPLATE_CHARS = 2_000  # a stage prompt's own text, about


def _check_table_columns(recipe: Recipe) -> None:
    for i, source in enumerate(recipe.inputs):
        if source.path is None:
            continue
        for path in expand_source(source, recipe):
            suffix = path.suffix.lower()
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                names = pq.read_schema(path).names
            elif suffix == ".jsonl":
                names = _first_jsonl_keys(path)
            else:
                continue
            if names is not None and source.text_column not in names:
                raise RecipeError(f"inputs[{i}].text_column: {path.name} has no column "
                                  f"{source.text_column!r} (columns: {', '.join(names)})")


def _first_jsonl_keys(path) -> list[str] | None:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return None  # bad rows are skipped one by one at collect time
                return list(row) if isinstance(row, dict) else None
    return None


def check_templates_fit(steps) -> None:
    """Stop before any work when a prompt template can never fit its model:
    its fixed text, the least input it always carries and the answer budget
    (`max_tokens`) together exceed the context.  `steps`: (field, endpoint,
    template, input tokens), from a recipe's or generator config's
    `llm_templates()`."""
    models: dict = {}
    for field, endpoint, name, input_tokens in steps:
        if endpoint not in models:
            models[endpoint] = make_llm(endpoint)
        llm = models[endpoint]
        if llm.context_window is None:
            continue
        fixed = llm.count_tokens(load_template(name).skeleton())
        need = fixed + input_tokens + endpoint.max_tokens
        if need > llm.context_window:
            raise RecipeError(
                f"{field}: prompt {name!r} can never fit the model's context ({fixed} tokens of "
                f"template + {input_tokens} of input + max_tokens {endpoint.max_tokens} = {need} "
                f"> n_ctx {llm.context_window}); lower max_tokens"
                + (" or chunking.max_tokens / answers.top_k" if input_tokens else "")
                + " or raise n_ctx")


def preflight(recipe: Recipe) -> None:
    _check_table_columns(recipe)
    checked: set = set()
    for role in ("generator", "judge"):
        endpoint = getattr(recipe.llm, role)
        if endpoint in checked:
            continue
        checked.add(endpoint)
        problem = preflight_endpoint(endpoint)
        if problem:
            raise RecipeError(f"llm.{role}: {problem}")
    for section in ("embedding", "dedup_embedding"):
        embedding = getattr(recipe, section)
        if embedding is None:
            continue
        if embedding.backend == "openai":
            problem = check_reachable(embedding)
        else:
            problem = model_available(embedding.model) or dask_reachable(embedding.dask_address)
        if problem:
            raise RecipeError(f"{section}: {problem}")
    if recipe.budget.max_cost is not None:
        for role in ("generator", "judge"):
            model = model_name(getattr(recipe.llm, role))
            if model not in recipe.prices:
                raise RecipeError(f"budget.max_cost: no price for llm.{role}'s model {model!r} "
                                  "(add it under prices: input and output per million tokens)")
    fluency = recipe.curation.fluency
    if recipe.curation.enabled and fluency.enabled and (problem := fluency_unavailable(fluency.model)):
        raise RecipeError(f"curation.fluency: {problem}")
    check_templates_fit(recipe.llm_templates())
    check_benchmarks(recipe.curation.decontamination)
    check_disk_space(recipe)


def check_disk_space(recipe: Recipe) -> None:
    """The output folder's disk holds at least a first chunk of calls at
    their worst (a passage each, the longest answer) beside the database's
    room; each chunk is checked again before it is sent."""
    max_tokens = max(recipe.llm.generator.max_tokens, recipe.llm.judge.max_tokens)
    prompt_chars = TEMPLATE_CHARS + round(CHARS_PER_TOKEN * recipe.chunking.max_tokens)
    need = DISK_RESERVE + CHUNK * worst_case_bytes(prompt_chars, max_tokens)
    problem = space_problem(recipe.run_dir, need, f"a run's first {CHUNK} calls")
    if problem:
        raise RecipeError(f"output_dir: {problem}")


def dask_reachable(address: str | None) -> str | None:
    """None when there is no address or its scheduler takes a connection."""
    if not address:
        return None

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        with socket.create_connection((parts.hostname, parts.port or 8786), timeout=5):
            return None
    except (OSError, ValueError) as exc:
        return f"Dask scheduler {address} not reachable ({exc.__class__.__name__}: {exc})"
