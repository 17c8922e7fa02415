"""Template generation: slot values (lists or LLM) → filled instructions →
responses → export with lineage."""

from __future__ import annotations

from prefect import flow

from sftmill.stages import StageResult
from tasks.export import export_dataset
from tasks.pairs_io import file_fingerprint
from tasks.templates import TemplatesConfig, load_spec, slot_values, template_dataset, template_pairs


@flow(name="sftmill-templates")
def template_flow(cfg: TemplatesConfig, fmt: str = "openai") -> list[StageResult]:
    load_spec(cfg.spec_path)  # a bad spec stops before any LLM call
    fingerprint = file_fingerprint(cfg.spec_path)
    values = slot_values(cfg, fingerprint)
    pairs = template_pairs(cfg, values, fingerprint)
    dataset = template_dataset(cfg, pairs)
    return [values, pairs, dataset, export_dataset(cfg.output_dir, fmt, dataset)]
