"""Checks that run before any work: every problem here is fatal and is
reported as one line naming the recipe field."""

from __future__ import annotations

import json

from sftmill.config import Recipe, RecipeError
from sftmill.embeddings import model_available
from sftmill.llm import preflight_endpoint


def _check_table_columns(recipe: Recipe) -> None:
    from tasks.collect import expand_source

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
    problem = model_available(recipe.embedding.model)
    if problem:
        raise RecipeError(f"embedding.model: {problem}")
