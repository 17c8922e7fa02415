"""Augmentations of an existing set: paraphrasing or back-translation of
instructions and/or responses, then export with lineage."""

from __future__ import annotations

from prefect import flow

from sftmill.tasks.curation.curate import curate_generated
from sftmill.tasks.generators.augment import AugmentConfig, augment_dataset, complete_pairs, make_variants
from sftmill.tasks.preflight import check_templates_fit
from sftmill.tasks.report.export import export_dataset
from sftmill.tasks.sources.pairs import file_fingerprint, load_inputs, read_items
from sftmill.tasks.stage_task import StageResult


@flow(name="sftmill-augment")
def augment_flow(cfg: AugmentConfig, fmt: str = "openai") -> list[StageResult]:
    """Inputs → pairs (missing responses generated) → variants → checks → dataset → export."""
    check_templates_fit(cfg.llm_templates())  # a prompt that can never fit stops here
    read_items(cfg.input_path)  # an unusable input file stops before any LLM call
    inputs = load_inputs(cfg.input_path, str(cfg.db_path), file_fingerprint(cfg.input_path))
    pairs = complete_pairs(cfg, inputs)
    variants = make_variants(cfg, pairs)
    dataset = augment_dataset(cfg, variants)
    curated = curate_generated(cfg, dataset)
    return [inputs, pairs, variants, dataset, curated, export_dataset(cfg.output_dir, fmt, curated)]
