"""What a run did, read back from its DuckDB file: per-stage counts, reject
reasons, LLM usage.  Used by `sftmill run` (closing summary) and `sftmill stats`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store
from sftmill.llm.journal import CallJournal
from sftmill.tasks.curation.curate import kept_count
from sftmill.tasks.report.plan import planned_for_run, price_of
from sftmill.tasks.stages.relevance import not_judged

if TYPE_CHECKING:
    from sftmill.core.recipe import Recipe


@dataclass
class RunSummary:
    stages: list[dict] = field(default_factory=list)
    rejects: list[tuple[str, str, int]] = field(default_factory=list)
    llm: list[dict] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    shares: list[dict] = field(default_factory=list)  # subdomain, target, actual
    openings: dict | None = None


def or_dash(value, fmt: str = "{}") -> str:
    """A table cell: the value formatted, or "-" when there is none."""
    return "-" if value is None else fmt.format(value)


PROMPTS_BY_SUBDOMAIN = "SELECT coalesce(subdomain, '(none)'), count(*) FROM prompts GROUP BY ALL"
RECORDS_BY_SUBDOMAIN = (f"SELECT coalesce(p.subdomain, '(none)'), count(*) FROM {KEPT_DATASET} d "
                        "JOIN prompts p USING (prompt_id) GROUP BY ALL")


def subdomain_shares(store: Store, targets: dict[str, float],
                     count_sql: str = PROMPTS_BY_SUBDOMAIN) -> list[dict]:
    """Target vs actual share per subdomain of what `count_sql` counts
    (final prompts by default); `count` is the number behind each share."""
    return shares_of(dict(store.execute(count_sql)), targets)


def shares_of(counts: dict[str, int], targets: dict[str, float]) -> list[dict]:
    """Target vs actual share per subdomain, from counts per subdomain."""
    total = sum(counts.values()) or 1
    names = list(targets) + sorted(set(counts) - set(targets))
    return [{"subdomain": n, "target": targets.get(n), "actual": counts.get(n, 0) / total,
             "count": counts.get(n, 0)} for n in names]


def summarize(store: Store, targets: dict[str, float] | None = None,
              recipe: "Recipe | None" = None) -> RunSummary:
    """Per stage, the row of the latest run that computed it.  With the
    recipe, each LLM row also has the calls planned for it (`sftmill plan`)
    and its cost (None without a price for the model)."""
    CallJournal.for_store(store)  # calls of a killed run still in the journal count too
    stages = store.query_dicts(
        "SELECT stage, n_in, n_out, seconds, run_id FROM stage_stats "
        "QUALIFY row_number() OVER (PARTITION BY stage ORDER BY finished_at DESC) = 1 "
        "ORDER BY finished_at")
    llm = store.query_dicts(
        "WITH calls AS (SELECT model, stage, count(*) FILTER (WHERE status = 'ok') AS sent, "
        "count(*) FILTER (WHERE status = 'cache_hit') AS old_hits, "
        "count(*) FILTER (WHERE status = 'error') AS errors, "
        "coalesce(sum(tokens_in) FILTER (WHERE status = 'ok'), 0) AS tokens_in, "
        "coalesce(sum(tokens_out) FILTER (WHERE status = 'ok'), 0) AS tokens_out, "
        "coalesce(sum(latency_s) FILTER (WHERE status = 'ok'), 0) AS seconds, "
        "coalesce(sum(tokens_in) FILTER (WHERE status = 'ok' AND backend LIKE '%-batch'), 0) AS batch_in, "
        "coalesce(sum(tokens_out) FILTER (WHERE status = 'ok' AND backend LIKE '%-batch'), 0) AS batch_out "
        "FROM llm_calls GROUP BY ALL) "
        "SELECT model, stage, coalesce(sent, 0) AS sent, "
        "coalesce(batch_in, 0) AS batch_in, coalesce(batch_out, 0) AS batch_out, "
        "coalesce(old_hits, 0) + coalesce(hits, 0) AS cache_hits, coalesce(errors, 0) AS errors, "
        "coalesce(tokens_in, 0) AS tokens_in, coalesce(tokens_out, 0) AS tokens_out, "
        "coalesce(seconds, 0) AS seconds "
        "FROM calls FULL JOIN llm_cache_hits USING (model, stage) ORDER BY stage, model")
    if recipe is not None:
        planned = planned_for_run(store, recipe)
        for row in llm:
            plan = planned.get((row["stage"], row["model"]))
            row["planned"] = plan.calls if plan else None
            online = price_of(recipe, row["model"], row["tokens_in"] - row["batch_in"],
                              row["tokens_out"] - row["batch_out"])
            batch = price_of(recipe, row["model"], row["batch_in"], row["batch_out"], batch=True)
            row["cost"] = None if online is None else online + batch
    tables = {t: store.count(t) for t in ("documents", "chunks", "profiles", "queries",
                                          "candidate_prompts", "prompts")}
    if store.count("relevance"):  # chunks the target did not need: neither kept nor dropped
        tables["chunks not judged"] = not_judged(store)
    openings = store.get_meta("opening_share")
    return RunSummary(stages, store.reject_counts(), llm, tables,
                      subdomain_shares(store, targets or {}),
                      json.loads(openings) if openings else None)


# Where to look when a drop reason dominates: the recipe setting behind it.
SETTING_FOR_REASON = {
    "not_relevant": "thresholds.relevance (or domain.relevant)",
    "low_prompt_quality": "thresholds.prompt_quality (or a stronger llm.judge)",
    "vague_prompt": "a stronger {generator}",
    "near_duplicate": "thresholds.dedup_cosine",
    "rouge_l_duplicate": "rouge_threshold",
    "no_supporting_passage": "answers.min_similarity (or answers.allow_ungrounded)",
    "low_lexical_support": "answers.min_lexical_support",
    "not_grounded": "answers.min_groundedness (or a stronger llm.judge)",
    "too_short": "answers.min_chars",
    "too_long": "answers.max_chars",
    "truncated": "llm.generator.max_tokens",
    "echoes_prompt": "a stronger {generator}",
    "no_citations": "a stronger {generator}",
    "llm_invalid_output": "llm.generator / llm.judge (a model that follows JSON schemas)",
    "prompt_too_long": "chunking.max_tokens, answers.top_k or the model's n_ctx",
    "rejected_by_reviewer": "the reviewers' notes (review sheets or Label Studio project)",
    "degenerate": "a more capable {generator}: a small model loops and writes digit soup",
    "copies_passage": "answers.max_copied_share (or a more capable {generator})",
    "not_self_contained": "a more capable {generator}",
    "malformed_prompt": "a more capable {generator}",
    "refusal": "a more capable {generator} (or curation.refusals.patterns)",
    "missing_reasoning": "answers.reasoning.required (a generator that reasons: llm.generator.reasoning)",
    "reasoning_length": "answers.reasoning.min_chars / max_chars",
}


def biggest_drop(store: Store) -> tuple[str, str, int, int] | None:
    """(stage, its commonest reason, that reason's count, the stage's drops)
    for the stage that dropped the most; None when nothing was dropped."""
    rows = store.reject_counts()
    if not rows:
        return None
    per_stage: dict[str, int] = {}
    for stage, _reason, n in rows:
        per_stage[stage] = per_stage.get(stage, 0) + n
    stage = max(per_stage, key=lambda s: (per_stage[s], s))
    reason, n = max(((r, n) for s, r, n in rows if s == stage), key=lambda rn: (rn[1], rn[0]))
    return stage, reason, n, per_stage[stage]


def emptying_stage(store: Store) -> tuple[str, int, list[tuple[str, int]]] | None:
    """(stage, records it was given, its drops by reason, commonest first) for
    the last run's first stage that was given records, kept none and dropped
    them with reasons: where the run became empty."""
    rows = store.execute(
        "SELECT stage, n_in FROM stage_stats WHERE run_id = (SELECT run_id FROM stage_stats "
        "ORDER BY finished_at DESC LIMIT 1) AND n_in > 0 AND n_out = 0 ORDER BY finished_at")
    drops = store.reject_counts() if rows else []
    for stage, n_in in rows:
        reasons = [(r, n) for s, r, n in drops if s == stage]
        if reasons:
            return stage, int(n_in), sorted(reasons, key=lambda rn: (-rn[1], rn[0]))
    return None


def empty_run_hint(store: Store, generator: str = "llm.generator") -> str:
    """One or two lines for a run that ended with no record: the stage that
    removed the last records (else the one that removed the most) and why,
    and the setting to look at (`generator`: how the run names its
    generating model — the recipe's llm.generator, a command's --base-url and --model)."""
    emptied = emptying_stage(store)
    if emptied is not None:
        stage, given, reasons = emptied
        reason = reasons[0][0]
        what = (f"The {stage} stage removed all {given} records it was given ("
                + ", ".join(f"{n} {r}" for r, n in reasons[:3]) + ")")
    else:
        top = biggest_drop(store)
        if top is None:
            return "No record was made and nothing was dropped: check that the inputs hold text."
        stage, reason, n, total = top
        what = f"The {stage} stage removed the most ({total}; {n} of them {reason})"
    setting = SETTING_FOR_REASON.get(reason, "").format(generator=generator)
    return (f"No record survived. {what}" + (f": look at {setting}." if setting else ".")
            + " The drops are listed above and in the rejects table.")


def sample_records(store: Store, n: int = 3, per_subdomain: bool = False) -> list[dict]:
    """A few finished records with the passage each cites first: prompt,
    answer, subdomain, passage, source.  Chosen by record ID (a hash, so a
    stable spread across the data); `per_subdomain`: up to `n` of each."""
    if not kept_count(store):
        return []
    rows = store.query_dicts(
        "SELECT d.record_id, d.prompt, d.answer, coalesce(p.subdomain, '(none)') AS subdomain, "
        "c.text AS passage, doc.uri AS source, row_number() OVER ("
        + ("PARTITION BY p.subdomain " if per_subdomain else "")
        + "ORDER BY d.record_id) AS k "
        f"FROM {KEPT_DATASET} d LEFT JOIN answers a USING (answer_id) LEFT JOIN prompts p "
        "ON p.prompt_id = d.prompt_id LEFT JOIN chunks c ON c.chunk_id = a.cited_chunk_ids[1] "
        "LEFT JOIN documents doc ON doc.doc_id = c.doc_id QUALIFY k <= ? "
        "ORDER BY subdomain, d.record_id", [n])
    return [{k: v for k, v in r.items() if k != "k"} for r in rows]
