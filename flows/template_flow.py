"""Template generation: slot values (lists or LLM) → filled instructions →
responses → export with lineage."""

from __future__ import annotations

from prefect import flow

from sftmill.tasks.curation.curate import curate_generated
from sftmill.tasks.generators.templates import (
    TemplatesConfig,
    load_spec,
    slot_values,
    template_dataset,
    template_pairs,
)
from sftmill.tasks.preflight import check_templates_fit
from sftmill.tasks.report.export import export_dataset
from sftmill.tasks.sources.pairs import file_fingerprint
from sftmill.tasks.stage_task import StageResult


@flow(name="sftmill-templates")
def template_flow(cfg: TemplatesConfig, fmt: str = "openai") -> list[StageResult]:
    load_spec(cfg.spec_path)  # a bad spec stops before any LLM call
    check_templates_fit(cfg.llm_templates())  # so does a prompt that can never fit
    fingerprint = file_fingerprint(cfg.spec_path)
    values = slot_values(cfg, fingerprint)
    pairs = template_pairs(cfg, values, fingerprint)
    dataset = template_dataset(cfg, pairs)
    curated = curate_generated(cfg, dataset)
    return [values, pairs, dataset, curated, export_dataset(cfg.output_dir, fmt, curated)]
