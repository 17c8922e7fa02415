"""What a run did, read back from its DuckDB file: per-stage counts, reject
reasons, LLM usage.  Used by `sftmill run` (closing summary) and `sftmill stats`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sftmill.store import Store


@dataclass
class RunSummary:
    stages: list[dict] = field(default_factory=list)
    rejects: list[tuple[str, str, int]] = field(default_factory=list)
    llm: list[dict] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    shares: list[dict] = field(default_factory=list)  # subdomain, target, actual
    openings: dict | None = None


PROMPTS_BY_SUBDOMAIN = "SELECT coalesce(subdomain, '(none)'), count(*) FROM prompts GROUP BY ALL"
RECORDS_BY_SUBDOMAIN = ("SELECT coalesce(p.subdomain, '(none)'), count(*) FROM dataset d "
                        "JOIN prompts p USING (prompt_id) GROUP BY ALL")


def subdomain_shares(store: Store, targets: dict[str, float],
                     count_sql: str = PROMPTS_BY_SUBDOMAIN) -> list[dict]:
    """Target vs actual share per subdomain of what `count_sql` counts
    (final prompts by default); `count` is the number behind each share."""
    counts = dict(store.execute(count_sql))
    total = sum(counts.values()) or 1
    names = list(targets) + sorted(set(counts) - set(targets))
    return [{"subdomain": n, "target": targets.get(n), "actual": counts.get(n, 0) / total,
             "count": counts.get(n, 0)} for n in names]


def summarize(store: Store, targets: dict[str, float] | None = None) -> RunSummary:
    """Per stage, the row of the latest run that computed it."""
    stages = store.query_dicts(
        "SELECT stage, n_in, n_out, seconds, run_id FROM stage_stats "
        "QUALIFY row_number() OVER (PARTITION BY stage ORDER BY finished_at DESC) = 1 "
        "ORDER BY finished_at")
    llm = store.query_dicts(
        "SELECT model, stage, count(*) FILTER (WHERE status = 'ok') AS sent, "
        "count(*) FILTER (WHERE status = 'cache_hit') AS cache_hits, "
        "count(*) FILTER (WHERE status = 'error') AS errors, "
        "coalesce(sum(tokens_in) FILTER (WHERE status = 'ok'), 0) AS tokens_in, "
        "coalesce(sum(tokens_out) FILTER (WHERE status = 'ok'), 0) AS tokens_out, "
        "coalesce(sum(latency_s) FILTER (WHERE status = 'ok'), 0) AS seconds "
        "FROM llm_calls GROUP BY ALL ORDER BY stage, model")
    tables = {t: store.count(t) for t in ("documents", "chunks", "profiles", "queries",
                                          "candidate_prompts", "prompts")}
    openings = store.get_meta("opening_share")
    return RunSummary(stages, store.reject_counts(), llm, tables,
                      subdomain_shares(store, targets or {}),
                      json.loads(openings) if openings else None)
