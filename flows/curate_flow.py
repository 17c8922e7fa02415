"""Curation of any SFT dataset sftmill reads (`sftmill curate`): the input
file → records keeping their lineage → the checks → curated export and card."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from sftmill.core.curation import CurateConfig
from sftmill.core.recipe import DB_FILE
from sftmill.tasks.curation.curate import curate_inputs, curate_standalone
from sftmill.tasks.report.export import export_dataset
from sftmill.tasks.sources.pairs import file_fingerprint, load_inputs, read_items
from sftmill.tasks.stage_task import StageResult


@flow(name="sftmill-curate")
def curate_flow(input_path: str, cfg: CurateConfig, output_dir: str) -> list[StageResult]:
    """Inputs → dataset → curation (score, then decide) → export with card."""
    read_items(input_path)  # an unusable input file stops before any work
    db_path = str(Path(output_dir) / DB_FILE)
    inputs = load_inputs(input_path, db_path, file_fingerprint(input_path))
    dataset = curate_inputs(db_path, inputs)
    curated = curate_standalone(cfg, dataset)
    return [inputs, dataset, curated, export_dataset(output_dir, cfg.format, curated)]
