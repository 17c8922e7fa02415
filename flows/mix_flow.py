"""`sftmill mix`: several datasets → one, by target weights, deduplicated
across sources and curated, each record with its own lineage."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from sftmill.core.curation import CurateConfig
from sftmill.core.recipe import DB_FILE
from sftmill.tasks.curation.curate import curate_standalone
from sftmill.tasks.curation.mix import Source, mix_load, mix_select
from sftmill.tasks.report.export import export_dataset
from sftmill.tasks.sources.pairs import file_fingerprint
from sftmill.tasks.stage_task import StageResult


@flow(name="sftmill-mix")
def mix_flow(sources: list[str], weights: dict[str, float], cfg: CurateConfig, output_dir: str,
             by: str = "source", total: int | None = None) -> list[StageResult]:
    """Sources → one dataset → curation (near duplicates across sources) →
    selection by weights → export with card."""
    db_path = str(Path(output_dir) / DB_FILE)
    files = [Source.parse(s).path for s in sources]
    loaded = mix_load(db_path, sources, [file_fingerprint(f) for f in files])
    curated = curate_standalone(cfg, loaded)
    mixed = mix_select(weights, by, total, cfg.seed, curated)
    return [loaded, curated, mixed, export_dataset(output_dir, cfg.format, mixed)]
