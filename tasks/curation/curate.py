"""Curation: the seeds' quality checks for any SFT dataset — the
pipeline's, every classic generator's, and any JSONL sftmill reads
(`sftmill curate`).  A stage at the end of every flow, before export.

Score first, decide second.  Every check (`tasks/curation/checks/`) writes a score
per record into `curation_scores`; `decide` reads the scores and the
thresholds of the `curation` config and drops records with a reason from
`checks.REASONS` (the `rejects` table, stage "curate"); the export leaves
them out.  Scores that cost something — perplexities, the classifier, the
LLM judges, benchmark n-grams — are kept with their `basis` (model,
template, benchmark files) and never computed twice for it: a changed
threshold re-decides without a call.  Near duplicates are decided last,
among the records every other check kept, from cached embeddings: the
better-scored record of a pair stays (adherence, then fluency).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sftmill.core.curation import CurateConfig, Curation
from sftmill.core.endpoints import Embedding, LLMEndpoint
from sftmill.core.recipe import GeneratorConfig, Recipe
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder
from sftmill.tasks.curation.checks import Record, Score, decontam, fluency, judges, lineage_of, offensive
from sftmill.tasks.curation.checks.keywords import keyword_scores
from sftmill.tasks.curation.checks.length import length_scores
from sftmill.tasks.curation.checks.text import text_rule_scores
from sftmill.tasks.curation.preferences import curation_pairs, write_pairs
from sftmill.tasks.sources.pairs import file_fingerprint
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.dedup import new_near_duplicates

STAGE = "curate"
META_KEY = "curation"  # the last decision's thresholds and removals, for the card
SCHEMA = {
    "curation_scores": """
        record_id VARCHAR,
        "check" VARCHAR,
        score DOUBLE,                 -- null: could not be scored (detail says why)
        detail VARCHAR,
        basis VARCHAR,                -- what the score depends on besides the record
        PRIMARY KEY (record_id, "check")
    """,
}


def kept_count(store: Store) -> int:
    return int(store.scalar(f"SELECT count(*) FROM {KEPT_DATASET}"))


def cited_passages(store: Store) -> dict[str, tuple[str, ...]]:
    """answer_id → the texts of the passages it cites (a pipeline run's
    records; none for a dataset read from a file)."""
    out: dict[str, list[str]] = {}
    for answer_id, text in store.execute(
            "SELECT a.answer_id, c.text FROM (SELECT answer_id, unnest(cited_chunk_ids) AS chunk_id "
            "FROM answers) a JOIN chunks c USING (chunk_id) ORDER BY a.answer_id, c.chunk_id"):
        out.setdefault(answer_id, []).append(text)
    return {k: tuple(v) for k, v in out.items()}


def dataset_records(store: Store) -> list[Record]:
    passages = cited_passages(store)
    return [Record(record_id, prompt, answer, lineage_of(record_id, json.loads(meta or "{}")),
                   passages.get(answer_id, ()))
            for record_id, prompt, answer, meta, answer_id in store.execute(
                "SELECT record_id, prompt, coalesce(answer, ''), metadata, answer_id FROM dataset "
                "ORDER BY record_id")]


def _save(store: Store, scores: list[Score], basis: str) -> None:
    store.insert("curation_scores", [
        {"record_id": s.record_id, "check": s.check, "score": s.score, "detail": s.detail,
         "basis": basis} for s in scores], replace=True)


def _unscored(store: Store, records: list[Record], checks: tuple[str, ...], basis: str) -> list[Record]:
    """The records without a score for `checks` under `basis` (a check that
    could not score a record — a judge answer out of schema — tries again)."""
    done = {r for r, in store.execute(
        'SELECT record_id FROM curation_scores WHERE "check" = ? AND basis = ? AND score IS NOT NULL',
        [checks[0], basis])}
    return [r for r in records if r.record_id not in done]


def scorers(cfg: Curation, store: Store, judge: LLMEndpoint, seed: int,
            ) -> list[tuple[str, tuple[str, ...], Callable[[], str], Callable[[list[Record]], list[Score]]]]:
    """(name, the checks it writes, its basis, how to score records) for the
    costly checks the config turns on."""
    out = []
    if cfg.offensive.enabled:
        out.append(("offensive", ("offensive",), lambda: offensive.BASIS, offensive.offensive_scores))
    if cfg.fluency.enabled:
        out.append(("fluency", ("instruction_perplexity", "response_perplexity"),
                    lambda: fluency.basis(cfg.fluency.model, cfg.fluency.max_tokens),
                    lambda rs: fluency.fluency_scores(rs, cfg.fluency.model, cfg.fluency.max_tokens)))
    for name in judges.JUDGES:
        if getattr(cfg, name).enabled:
            out.append((name, (name,), lambda name=name: judges.basis(judge, name),
                        lambda rs, name=name: judges.judge_scores(store, rs, name, judge, seed)))
    contamination = cfg.decontamination
    if contamination.benchmarks:
        def contamination_basis() -> str:
            return json.dumps([contamination.ngram, contamination.fields,
                               [file_fingerprint(p) for p in contamination.benchmarks]])

        def contamination_scores(rs: list[Record]) -> list[Score]:
            index = decontam.BenchmarkIndex.build(contamination.benchmarks, contamination.ngram,
                                                  contamination.fields or None)
            return decontam.contamination_scores(rs, index)

        out.append(("decontamination", ("contamination",), contamination_basis, contamination_scores))
    return out


def models_to_load(cfg: Curation) -> list[Callable[[], object]]:
    """Loaders of the in-process models the config's checks use, for
    `sftmill.core.warmup` while the stages before curation wait on their calls
    (only the offensive-language classifier: fluency's GGUF model would take
    the memory and cores of an in-process generator)."""
    return [offensive.model] if cfg.enabled and cfg.offensive.enabled else []


def score_records(store: Store, records: list[Record], cfg: Curation, judge: LLMEndpoint,
                  seed: int) -> dict[str, int]:
    """Score every record for every check the config turns on; return how
    many records each costly check computed now (0: all known)."""
    store.ensure_tables(SCHEMA)
    ids = [r.record_id for r in records]
    store.execute('DELETE FROM curation_scores WHERE basis = \'\' AND record_id IN '
                  '(SELECT unnest(?::VARCHAR[]))', [ids])  # the cheap ones, always fresh
    _save(store, length_scores(records) + text_rule_scores(records, cfg)
          + keyword_scores(records, cfg.keywords.block, cfg.keywords.allow), "")
    computed = {}
    for name, checks, basis_of, score in scorers(cfg, store, judge, seed):
        basis = basis_of()
        todo = _unscored(store, records, checks, basis)
        if todo:
            _save(store, score(todo), basis)
        computed[name] = len(todo)
    return computed


def _scores(store: Store, ids: list[str]) -> dict[str, dict[str, tuple[float | None, str]]]:
    out: dict[str, dict[str, tuple[float | None, str]]] = {}
    for record_id, check, score, detail in store.execute(
            'SELECT record_id, "check", score, detail FROM curation_scores '
            'WHERE record_id IN (SELECT unnest(?::VARCHAR[]))', [ids]):
        out.setdefault(record_id, {})[check] = (score, detail or "")
    return out


@dataclass(frozen=True)
class Rule:
    """A threshold on one check's score: `kind` 'min' drops scores below
    `bound`, 'max' scores above it, 'at_least' scores at or above it;
    'unscored' drops a record the check tried and could not score."""

    check: str
    reason: str
    kind: str
    bound: float
    setting: str  # where the bound is set, for the drop's detail and the card

    def fails(self, value: float | None) -> bool:
        if value is None:
            return self.kind == "unscored"
        return {"min": value < self.bound, "max": value > self.bound,
                "at_least": value >= self.bound, "unscored": False}[self.kind]

    def explain(self, value: float | None, detail: str) -> str:
        if value is None:
            return f"{self.check} not scored ({self.setting}: drop)" + (f": {detail}" if detail else "")
        if self.kind == "at_least" and self.bound == 1 and detail:  # a finding: what was found
            return f"{detail} ({self.setting})"
        sign = {"min": "<", "max": ">", "at_least": "≥"}[self.kind]
        return (f"{self.check} {value:,.4g} {sign} {self.setting} {self.bound:,.4g}"
                + (f" ({detail})" if detail else ""))


def rules(cfg: Curation) -> list[Rule]:
    """The thresholds in the order they are applied (contamination first:
    it matters most; the LLM judges' scores last)."""
    out = []
    if cfg.decontamination.benchmarks:
        out.append(Rule("contamination", "contaminated", "at_least", 1, "decontamination.benchmarks"))
    if cfg.keywords.block:
        out.append(Rule("blocked_keyword", "blocked_keyword", "at_least", 1, "keywords.block"))
    if cfg.keywords.allow:
        out.append(Rule("allowed_keyword", "no_allowed_keyword", "min", 1, "keywords.allow"))
    for check, section, setting in (("refusal", "refusals", "refusals.patterns"),
                                    ("degenerate", "degenerate", "degenerate.enabled"),
                                    ("malformed_prompt", "malformed_prompts", "malformed_prompts.enabled"),
                                    ("not_self_contained", "self_contained", "self_contained.enabled")):
        if getattr(cfg, section).enabled:
            out.append(Rule(check, check, "at_least", 1, setting))
    if cfg.copies_passage.enabled:
        out.append(Rule("copied_share", "copies_passage", "at_least", cfg.copies_passage.max_share,
                        "copies_passage.max_share"))
    for part in ("instruction", "response"):
        for unit in ("chars", "tokens"):
            low, high = (getattr(cfg.length, f"{end}_{part}_{unit}") for end in ("min", "max"))
            if low:
                out.append(Rule(f"{part}_{unit}", "too_short", "min", low, f"length.min_{part}_{unit}"))
            if high is not None:
                out.append(Rule(f"{part}_{unit}", "too_long", "max", high, f"length.max_{part}_{unit}"))
    if cfg.offensive.enabled:
        out.append(Rule("offensive", "offensive", "at_least", cfg.offensive.max_probability,
                        "offensive.max_probability"))
    if cfg.safety.enabled:
        out.append(Rule("safety", "unsafe", "min", cfg.safety.min_score, "safety.min_score"))
        if cfg.safety.unjudged == "drop":
            out.append(Rule("safety", "llm_invalid_output", "unscored", 0, "safety.unjudged"))
    if cfg.fluency.enabled:
        for part in ("instruction", "response"):
            out.append(Rule(f"{part}_perplexity", "low_fluency", "max",
                            getattr(cfg.fluency, f"max_{part}_perplexity"),
                            f"fluency.max_{part}_perplexity"))
    if cfg.adherence.enabled:
        out.append(Rule("adherence", "low_adherence", "min", cfg.adherence.min_score,
                        "adherence.min_score"))
        if cfg.adherence.unjudged == "drop":
            out.append(Rule("adherence", "llm_invalid_output", "unscored", 0, "adherence.unjudged"))
    return out


def first_failure(scores: dict[str, tuple[float | None, str]], checks: list[Rule],
                  ) -> tuple[Rule, str, float] | None:
    """(the rule, the drop's detail, the score) of the first rule the
    record's scores fail, or None.  A check that could not score the record
    fails only an 'unscored' rule."""
    for rule in checks:
        if rule.check not in scores:
            continue
        value, detail = scores[rule.check]
        if rule.fails(value):
            return rule, rule.explain(value, detail), value
    return None


def quality_order(record_id: str, scores: dict[str, tuple[float | None, str]]) -> tuple:
    """Better records first: higher adherence, then lower response perplexity."""
    adherence = scores.get("adherence", (None, ""))[0]
    ppl = scores.get("response_perplexity", (None, ""))[0]
    return (-(adherence if adherence is not None else 0.5),
            ppl if ppl is not None else math.inf, record_id)


def decide(store: Store, records: list[Record], cfg: Curation, embedding: Embedding) -> Counter:
    """Drop the records a threshold rejects (replacing an earlier decision);
    return the drops by reason.  The thresholds and what each removed go to
    the meta table for the card."""
    by_id = _scores(store, [r.record_id for r in records])
    checks = rules(cfg)
    drops: list[tuple[str, str, str, float | None]] = []
    removed_by: Counter[tuple[str, str]] = Counter()  # (check, setting)
    kept: list[Record] = []
    for r in records:
        failed = first_failure(by_id.get(r.record_id, {}), checks)
        if failed:
            rule, detail, value = failed
            drops.append((r.record_id, rule.reason, detail, value))
            removed_by[rule.check, rule.setting] += 1
        else:
            kept.append(r)
    duplicates = 0
    store.execute("DELETE FROM curation_scores WHERE basis = 'decided' AND record_id IN "
                  "(SELECT unnest(?::VARCHAR[]))", [[r.record_id for r in records]])
    if cfg.near_duplicates.enabled and len(kept) > 1:
        kept.sort(key=lambda r: quality_order(r.record_id, by_id.get(r.record_id, {})))
        vectors = Embedder(embedding, store).embed([r.instruction for r in kept])
        removed = new_near_duplicates(np.empty((0, vectors.shape[1]), dtype=np.float32), vectors,
                                      cfg.near_duplicates.cosine, [],
                                      [r.lineage or r.record_id for r in kept])
        _save(store, [Score(kept[i].record_id, "near_duplicate", sim, kept[j].record_id)
                      for i, (_, j, sim) in removed.items()], "decided")
        drops += [(kept[i].record_id, "near_duplicate",
                   f"cosine {sim:.3f} with {kept[j].record_id} (better scored)", sim)
                  for i, (_, j, sim) in removed.items()]
        duplicates = len(removed)
    store.execute("DELETE FROM rejects WHERE stage = ?", [STAGE])
    store.reject_many(STAGE, drops)
    store.set_meta(META_KEY, json.dumps({
        "records": len(records),
        "rules": [{"check": c.check, "reason": c.reason, "kind": c.kind, "bound": c.bound,
                   "setting": c.setting, "removed": removed_by[c.check, c.setting]} for c in checks],
        "near_duplicates": ({"cosine": cfg.near_duplicates.cosine, "removed": duplicates}
                            if cfg.near_duplicates.enabled else None)}))
    return Counter(reason for _, reason, _, _ in drops)


def curate_store(store: Store, cfg: Curation, judge: LLMEndpoint, embedding: Embedding,
                 seed: int) -> tuple[int, int, str]:
    """Score and decide the run's `dataset`; return (records, kept, a note)."""
    records = dataset_records(store)
    if not cfg.enabled:
        store.execute("DELETE FROM rejects WHERE stage = ?", [STAGE])
        store.execute("DELETE FROM meta WHERE key = ?", [META_KEY])
        return len(records), len(records), "curation off"
    computed = score_records(store, records, cfg, judge, seed)
    drops = decide(store, records, cfg, embedding)
    decided = json.loads(store.get_meta(META_KEY))
    store.set_meta(META_KEY, json.dumps({**decided, "scored_now": computed}))
    kept = len(records) - sum(drops.values())
    scored = ", ".join(f"{name} {n}" for name, n in computed.items() if n) or "none"
    removed = ", ".join(f"{n} {reason}" for reason, n in drops.most_common()) or "nothing"
    return len(records), kept, f"removed {removed}; scored now: {scored}"


def curated_out(store: Store) -> set[str]:
    """Record IDs curation dropped (the export leaves them out)."""
    return {r for r, in store.execute("SELECT item_id FROM rejects WHERE stage = ?", [STAGE])}


def _curate_stage(store: Store, dataset: StageResult, cfg: Curation, judge: LLMEndpoint,
                  embedding: Embedding, seed: int) -> StageResult:
    timer = StageTimer(store, STAGE)
    n, kept, note = curate_store(store, cfg, judge, embedding, seed)
    return timer.done(dataset.out, n, kept, note)


@stage_task("curate", recipe=("curation", "llm", "embedding", "seed"),
            templates=("safety", "adherence"), reads=("dataset",), writes=("curation_scores",))
def curate(recipe: Recipe, dataset: StageResult) -> StageResult:
    """The pipeline's curation stage: judges default to the recipe's llm.judge."""
    cfg = recipe.curation
    return _curate_stage(Store.open(dataset.out.db_path), dataset, cfg,
                         cfg.judge or recipe.llm.judge, cfg.embedding or recipe.embedding,
                         recipe.seed)


@stage_task("curate", templates=("safety", "adherence"), reads=("dataset",), writes=("curation_scores",))
def curate_generated(cfg: GeneratorConfig, dataset: StageResult) -> StageResult:
    """A classic generator's curation stage: judges default to its generator."""
    curation = cfg.curation
    return _curate_stage(Store.open(dataset.out.db_path), dataset, curation,
                         curation.judge or cfg.generator, standalone_embedding(curation), cfg.seed)


def inputs_to_dataset(store: Store) -> int:
    """`sftmill curate`: the input file's items (`input_items`) as `dataset`
    records, each keeping the lineage an earlier export gave it."""
    rows = []
    for item_id, instruction, response, source in store.execute(
            "SELECT item_id, instruction, response, source FROM input_items ORDER BY item_id"):
        source = json.loads(source or "{}")
        meta = {**source.pop("earlier", {}), "curated_from": source}
        rows.append({"record_id": item_id, "prompt_id": item_id, "answer_id": item_id,
                     "prompt": instruction, "answer": response, "grounded": False,
                     "metadata": json.dumps(meta, ensure_ascii=False, default=str)})
    return store.replace_rows("dataset", rows)


@stage_task("curate_dataset", reads=("input_items",), writes=("dataset",))
def curate_inputs(db_path: str, inputs: StageResult) -> StageResult:
    store = Store.open(db_path)
    timer = StageTimer(store, "dataset")
    n = inputs_to_dataset(store)
    return timer.done(store.ref("dataset", "record_id"), inputs.n_out, n)


def standalone_judge(cfg: CurateConfig) -> LLMEndpoint:
    """`sftmill curate`'s judge: the config's, else the embedded model at temperature 0."""
    return cfg.judge or LLMEndpoint(temperature=0.0, max_tokens=256)


def standalone_embedding(cfg: Curation) -> Embedding:
    """The embedding model of a curation outside the pipeline (`sftmill
    curate`, `mix`, a classic generator): the config's, else the default."""
    return cfg.embedding or Embedding()


@stage_task("curate", templates=("safety", "adherence"), reads=("dataset",), writes=("curation_scores",))
def curate_standalone(cfg: CurateConfig, dataset: StageResult) -> StageResult:
    """`sftmill curate`'s curation stage (and its preference pairs, if asked for)."""
    store = Store.open(dataset.out.db_path)
    result = _curate_stage(store, dataset, cfg, standalone_judge(cfg), standalone_embedding(cfg),
                           cfg.seed)
    write_pairs(store, curation_pairs(store) if cfg.preference_pairs else [])
    return result
