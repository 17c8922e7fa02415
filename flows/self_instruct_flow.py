"""Self-Instruct: bootstrap instructions from a seed pool, round after round,
until the target count; then export with lineage."""

from __future__ import annotations

from prefect import flow, get_run_logger

from sftmill.tasks.curation.curate import curate_generated
from sftmill.tasks.generators.self_instruct import (
    SelfInstructConfig,
    bootstrap_round,
    load_seeds,
    self_instruct_dataset,
    stall_message,
    stalled,
)
from sftmill.tasks.preflight import check_templates_fit
from sftmill.tasks.report.export import export_dataset
from sftmill.tasks.stage_task import StageResult


@flow(name="sftmill-self-instruct")
def self_instruct_flow(cfg: SelfInstructConfig, fmt: str = "openai") -> list[StageResult]:
    """Rounds of generate → filter → classify → instances, then dataset → curation → export."""
    check_templates_fit(cfg.llm_templates())  # a prompt that can never fit stops here
    load_seeds(cfg.seeds_path)  # a malformed seed file stops before any LLM call
    rounds: list[StageResult] = []
    pool = None
    for round_no in range(1, cfg.max_rounds + 1):
        pool = bootstrap_round(cfg, pool, round_no)
        rounds.append(pool)
        if pool.n_out >= cfg.target:
            break
        if stalled(rounds):
            get_run_logger().warning(stall_message(cfg, rounds))
            break
    dataset = self_instruct_dataset(cfg, pool)
    curated = curate_generated(cfg, dataset)
    return rounds + [dataset, curated, export_dataset(cfg.output_dir, fmt, curated)]
