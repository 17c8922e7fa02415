"""sftmill from Python, for a notebook: run a recipe, load what a run made.

    import sftmill

    run_dir = sftmill.run("data/example/recipe.yaml", target_prompts=40)
    data = sftmill.load(run_dir)
    data.records[0]["messages"]      # the conversation, as exported
    data.records[0]["metadata"]      # lineage, citations and scores
    data.rejects[:5]                 # what was dropped, where and why
    data.quality["figures"]          # the quality report
    ds = data.to_dataset()           # a datasets.Dataset (pip install datasets)

`run` runs the whole pipeline in this process (Prefect's ephemeral mode
unless PREFECT_API_URL names a server), like `sftmill run`: rerunning it
reuses every finished stage and LLM call.  `load` reads any run folder
(pipeline, generators, curate, mix) read-only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sftmill.core.recipe import DB_FILE
from sftmill.core.store import Store
from sftmill.flows.params import RunParams
from sftmill.flows.pipeline import pipeline
from sftmill.tasks.preflight import preflight
from sftmill.tasks.report.quality import QUALITY_FILE, read_quality
from sftmill.tasks.report.viewer import exported_rows, kept_row, table_names


@dataclass
class RunData:
    """A run's records as exported, its drops and its quality report."""

    run_dir: Path
    records: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    quality: dict[str, Any] = field(default_factory=dict)

    def to_dataset(self):
        """The records as a `datasets.Dataset` (metadata as a JSON string:
        its fields differ from record to record)."""
        import datasets

        return datasets.Dataset.from_list(
            [{**r, "metadata": json.dumps(r["metadata"], ensure_ascii=False)} for r in self.records])

    def __repr__(self) -> str:
        return f"RunData({self.run_dir}: {len(self.records)} records, {len(self.rejects)} rejects)"


def run(recipe: str | Path | dict, **overrides: Any) -> Path:
    """Run the pipeline on `recipe` (a YAML file, or the recipe as a dict,
    whose relative paths resolve against the working directory); `overrides`
    are the run's parameters (target_prompts, generator_base_url,
    generator_model, judge_base_url, judge_model, refresh …).  Returns the run
    folder.  A bad recipe raises `RecipeError` naming the problem before any work."""
    if isinstance(recipe, dict):
        params = RunParams(recipe_yaml=yaml.safe_dump(recipe), **overrides)
    else:
        params = RunParams(recipe_path=str(recipe), **overrides)
    checked = params.load()
    preflight(checked)
    pipeline(params)
    Store.close_all()  # hand the run database back (a CLI command may open it next)
    return checked.run_dir


def load(run_dir: str | Path) -> RunData:
    """The records of a finished run folder as exported (reviews applied),
    each with `messages` and its metadata; the drops with stage, reason and
    detail; and `quality.json`."""
    run_dir = Path(run_dir)
    store = Store.reader(run_dir / DB_FILE)
    try:
        records = [{"record_id": r["id"], **{k: r[k] for k in ("prompt", "answer", "messages", "metadata")}}
                   for r in map(kept_row, exported_rows(store, table_names(store)))]
        rejects = store.query_dicts("SELECT stage, item_id, reason, detail, score FROM rejects "
                                    "ORDER BY stage, reason, item_id")
    finally:
        store.close()
    return RunData(run_dir, records, rejects, read_quality(run_dir / QUALITY_FILE) or {})
