"""Evol-Instruct: M rounds of evolving every lineage's latest instruction,
the eliminator, responses for the survivors; then export with lineage."""

from __future__ import annotations

from prefect import flow

from sftmill.tasks.curation.curate import curate_generated
from sftmill.tasks.generators.evol import EvolConfig, evol_dataset, evolve_round
from sftmill.tasks.preflight import check_templates_fit
from sftmill.tasks.report.export import export_dataset
from sftmill.tasks.sources.pairs import file_fingerprint, load_inputs, read_items
from sftmill.tasks.stage_task import StageResult


@flow(name="sftmill-evol-instruct")
def evol_flow(cfg: EvolConfig, fmt: str = "openai") -> list[StageResult]:
    """Inputs → rounds 1..M of evolve → eliminate → respond → dataset → export."""
    check_templates_fit(cfg.llm_templates())  # a prompt that can never fit stops here
    read_items(cfg.input_path)  # an unusable input file stops before any LLM call
    stages = [load_inputs(cfg.input_path, str(cfg.db_path), file_fingerprint(cfg.input_path))]
    for round_no in range(1, cfg.rounds + 1):
        stages.append(evolve_round(cfg, stages[-1], round_no))
    stages.append(evol_dataset(cfg, stages[-1]))
    stages.append(curate_generated(cfg, stages[-1]))
    return stages + [export_dataset(cfg.output_dir, fmt, stages[-1])]
