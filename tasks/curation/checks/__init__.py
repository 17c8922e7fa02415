"""The curation checks, one small module each.  Every check
scores records (`Score` rows in `curation_scores`); `tasks.curate` decides
from the scores and the thresholds, with a reason from `REASONS`.

A check's score is stored with its `basis` — what the score depends on
besides the record (the model, the template, the benchmark files): the same
basis is never computed twice, so a changed threshold re-decides without a
call, a perplexity or an embedding."""

from __future__ import annotations

from dataclasses import dataclass

# Why a record was dropped by curation: the reasons of one vocabulary (the
# `rejects` table, stage "curate").
REASONS = {
    "too_short": "length.min_*",
    "too_long": "length.max_*",
    "blocked_keyword": "keywords.block",
    "refusal": "refusals.patterns",
    "degenerate": "degenerate.enabled",
    "not_self_contained": "self_contained.enabled",
    "malformed_prompt": "malformed_prompts.enabled",
    "copies_passage": "copies_passage.max_share",
    "no_allowed_keyword": "keywords.allow",
    "low_fluency": "fluency.max_perplexity",
    "offensive": "offensive.max_probability",
    "unsafe": "safety.min_score",
    "low_adherence": "adherence.min_score",
    "llm_invalid_output": "safety.unjudged / adherence.unjudged",
    "near_duplicate": "near_duplicates.cosine",
    "contaminated": "decontamination.benchmarks",
}


@dataclass(frozen=True)
class Record:
    record_id: str
    instruction: str
    response: str
    lineage: str = ""  # records of one lineage (an instruction and its variants) never compete
    passages: tuple[str, ...] = ()  # what the response cites (pipeline records), for copies_passage


def lineage_of(record_id: str, metadata: dict) -> str:
    """The lineage a record belongs to: its Evol-Instruct root, its augmented
    pair, or itself."""
    return str(metadata.get("root_id") or metadata.get("pair_id") or record_id)


@dataclass(frozen=True)
class Score:
    record_id: str
    check: str  # e.g. response_perplexity, offensive, contamination
    score: float | None  # None: could not be scored (the detail says why)
    detail: str = ""
