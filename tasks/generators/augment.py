"""Augment an existing instruction set: paraphrasing and back-translation.

    paraphrase       the LLM rewrites the instruction and/or the response in
                     `n` different wordings (`prompts/paraphrase_<field>`)
    back_translate   the LLM translates the text into each pivot language and
                     back (`prompts/translate`); one variant per pivot

Each variant makes one record: the varied side with the other side of its
original pair.  A variant is dropped, with its reason, when it is
    empty_or_truncated   empty, or it used the whole token budget
    unchanged            the same text as the original (case and spacing aside)
    duplicate_variant    the same text as another variant of the same pair
    meaning_drift        its embedding's cosine similarity with the original
                         is under `min_similarity` (the score is kept)
Inputs without a response get one from the generator first
(`tasks.respond`), so every record is a full pair.  The embedding
near-duplicate removal of the other flows is deliberately not applied here:
a variant is meant to be a close rewording of its original, so only exact
repeats are dropped.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
from pydantic import Field

from sftmill.core.endpoints import Embedding
from sftmill.core.ids import content_id
from sftmill.core.recipe import GeneratorConfig
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map, truncated
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.tasks.generators.respond import respond
from sftmill.tasks.sources.pairs import SCHEMA as INPUT_SCHEMA
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task

Field_ = Literal["instruction", "response"]

SCHEMA = {
    "aug_pairs": """
        pair_id VARCHAR PRIMARY KEY,     -- the input item's ID
        instruction VARCHAR,
        response VARCHAR,
        response_origin VARCHAR,         -- input | generated
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "aug_variants": """
        variant_id VARCHAR PRIMARY KEY,
        pair_id VARCHAR,
        method VARCHAR,                  -- paraphrase | back_translate
        field VARCHAR,                   -- instruction | response
        pivot_language VARCHAR,          -- back_translate: the pivot language
        pivot_text VARCHAR,              -- back_translate: the text in the pivot language
        text VARCHAR,
        similarity DOUBLE,               -- cosine with the original text
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
}


class AugmentConfig(GeneratorConfig):
    input_path: str = Field(description="Instructions or pairs (.txt, or JSONL in any export format).")
    method: Literal["paraphrase", "back_translate"] = "paraphrase"
    fields: tuple[Field_, ...] = Field(default=("instruction",), min_length=1,
                                       description="Which side of each pair to vary.")
    n: int = Field(default=2, ge=1, le=10, description="Paraphrases per text.")
    pivots: tuple[str, ...] = Field(default=("French",), min_length=1,
                                    description="Pivot languages for back-translation.")
    source_language: str = Field(default="English", description="The language of the inputs.")
    min_similarity: float = Field(default=0.75, ge=0, le=1,
                                  description="Least embedding cosine between a variant and its original.")
    include_originals: bool = Field(default=True, description="Export the original pairs too.")
    min_response_words: int = Field(default=3, ge=1)

    def llm_templates(self):
        names = ([f"paraphrase_{f}" for f in self.fields] if self.method == "paraphrase"
                 else ["translate"])
        return [("generator", self.generator, n, 0) for n in names] + super().llm_templates()
    embedding: Embedding = Field(default_factory=Embedding)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


@stage_task("augment_pairs", reads=("input_items",), writes=("aug_pairs",))
def complete_pairs(cfg: AugmentConfig, inputs: StageResult) -> StageResult:
    """Every input as a pair; a missing response comes from the generator."""
    store = Store.open(cfg.db_path)
    store.ensure_tables(INPUT_SCHEMA | SCHEMA)
    timer = StageTimer(store, "pairs")
    items = store.query_dicts("SELECT * FROM input_items ORDER BY item_id")
    rows = [{"pair_id": i["item_id"], "instruction": i["instruction"], "response": i["response"],
             "response_origin": "input", "model": None, "template_version": None,
             "call_key": None} for i in items if i["response"]]
    missing = [(i["item_id"], i["instruction"]) for i in items if not i["response"]]
    if missing:
        llm = make_llm(cfg.generator, store)
        answers = respond(store, llm, cfg.generator, missing, stage="pairs", seed=cfg.seed,
                          min_words=cfg.min_response_words)
        rows += [{"pair_id": item_id, "instruction": instruction, "response": answers[item_id][0],
                  "response_origin": "generated", "model": llm.model,
                  "template_version": answers[item_id][2], "call_key": answers[item_id][1]}
                 for item_id, instruction in missing if item_id in answers]
    store.replace_rows("aug_pairs", rows)  # pairs of an earlier input file do not carry over
    return timer.done(store.ref("aug_pairs", "pair_id"), len(items), len(rows))


def _paraphrases(store: Store, cfg: AugmentConfig, llm, pairs: list[dict], field: str) -> list[dict]:
    base = load_template(f"paraphrase_{field}")
    template = with_schema(base, exact_items(base.schema, "paraphrases", cfg.n))
    results = llm_map(llm, cfg.generator, template, pairs,
                      lambda p: {"text": p[field], "n": cfg.n, "instruction": p["instruction"]},
                      stage=f"paraphrase_{field}", seed=cfg.seed)
    out = []
    for pair, result in answered(store, "augment", results,
                                 lambda p: content_id(p["pair_id"], "paraphrase", field)):
        out += [{"pair_id": pair["pair_id"], "method": "paraphrase", "field": field, "pivot_language": None,
                 "pivot_text": None, "text": text.strip(), "model": llm.model,
                 "template_version": template.version, "call_key": result.key,
                 "_truncated": False} for text in result.data["paraphrases"]]
    return out


def translation_budget(cfg: AugmentConfig, text: str) -> int:
    """Tokens a translation of `text` may take: three times its estimated
    length (chars/4) plus 64, within the endpoint's limit — a translation
    past that is rambling, and is cut off and dropped as truncated."""
    return min(cfg.generator.max_tokens, 64 + 3 * (len(text) // 4 + 1))


def _back_translations(store: Store, cfg: AugmentConfig, llm, pairs: list[dict],
                       field: str) -> list[dict]:
    template = load_template("translate")
    out = []
    for pivot in cfg.pivots:
        there = llm_map(llm, cfg.generator, template, pairs,
                        lambda p: {"text": p[field], "language": pivot},
                        stage=f"translate_{field}_to_{pivot}", seed=cfg.seed,
                        max_tokens=lambda p: translation_budget(cfg, p[field]))
        arrived = []
        for pair, result in answered(store, "augment", there,
                                     lambda p: content_id(p["pair_id"], pivot, field, "there")):
            if not result.text.strip() or truncated(result, translation_budget(cfg, pair[field])):
                store.reject("augment", content_id(pair["pair_id"], pivot, field), "empty_or_truncated",
                             f"translation into {pivot}: {result.text[:300]}")
            else:
                arrived.append((pair, result.text.strip()))
        back = llm_map(llm, cfg.generator, template, arrived,
                       lambda a: {"text": a[1], "language": cfg.source_language},
                       stage=f"translate_{field}_from_{pivot}", seed=cfg.seed,
                       max_tokens=lambda a: translation_budget(cfg, a[0][field]))
        for (pair, pivot_text), result in answered(
                store, "augment", back, lambda a: content_id(a[0]["pair_id"], pivot, field, "back")):
            out.append({"pair_id": pair["pair_id"], "method": "back_translate", "field": field,
                        "pivot_language": pivot, "pivot_text": pivot_text, "text": result.text.strip(),
                        "model": llm.model, "template_version": template.version,
                        "call_key": result.key,
                        "_truncated": truncated(result, translation_budget(cfg, pair[field]))})
    return out


def check_variants(store: Store, cfg: AugmentConfig, pairs: dict[str, dict],
                   candidates: list[dict]) -> list[dict]:
    """Apply the variant checks; return the kept rows with their similarity."""
    with store.drops("augment") as drops:
        return _checked(cfg, Embedder(cfg.embedding, store), pairs, candidates, drops)


def _checked(cfg: AugmentConfig, embedder: Embedder, pairs: dict[str, dict],
             candidates: list[dict], drops) -> list[dict]:
    kept, seen = [], set()
    survivors = []
    for k, c in enumerate(candidates):
        original = pairs[c["pair_id"]][c["field"]]
        c["variant_id"] = content_id(c["pair_id"], c["method"], c["field"], c["pivot_language"],
                                      c["text"])
        reason = None
        if c.pop("_truncated") or not c["text"]:
            reason = "empty_or_truncated"
        elif _normal(c["text"]) == _normal(original):
            reason = "unchanged"
        elif (c["pair_id"], c["field"], _normal(c["text"])) in seen:
            reason = "duplicate_variant"
        if reason:
            # a repeat has the ID of the variant it repeats: its drop gets one of its own
            drop_id = content_id(c["variant_id"], k) if reason == "duplicate_variant" else c["variant_id"]
            drops.add(drop_id, reason, c["text"][:300])
            continue
        seen.add((c["pair_id"], c["field"], _normal(c["text"])))
        survivors.append(c)
    if not survivors:
        return []
    originals = embedder.embed([pairs[c["pair_id"]][c["field"]] for c in survivors])
    variants = embedder.embed([c["text"] for c in survivors])
    for c, sim in zip(survivors, np.sum(originals * variants, axis=1)):
        c["similarity"] = float(sim)
        if sim < cfg.min_similarity:
            drops.add(c["variant_id"], "meaning_drift", c["text"][:300], float(sim))
        else:
            kept.append(c)
    return kept


@stage_task("augment_variants", reads=("aug_pairs",), writes=("aug_variants",))
def make_variants(cfg: AugmentConfig, pairs_ref: StageResult) -> StageResult:
    store = Store.open(cfg.db_path)
    timer = StageTimer(store, cfg.method)
    pairs = {p["pair_id"]: p for p in store.query_dicts("SELECT * FROM aug_pairs ORDER BY pair_id")}
    store.execute("DELETE FROM rejects WHERE stage = 'augment'")  # a rerun records its own drops
    llm = make_llm(cfg.generator, store)
    make = _paraphrases if cfg.method == "paraphrase" else _back_translations
    candidates = []
    for field in cfg.fields:
        candidates += make(store, cfg, llm, list(pairs.values()), field)
    kept = check_variants(store, cfg, pairs, candidates)
    store.replace_rows("aug_variants", kept)
    return timer.done(store.ref("aug_variants", "variant_id"), len(candidates), len(kept))


def to_dataset(store: Store, include_originals: bool) -> int:
    pairs = store.query_dicts("SELECT p.*, i.source FROM aug_pairs p "
                              "JOIN input_items i ON i.item_id = p.pair_id ORDER BY pair_id")
    by_id = {p["pair_id"]: p for p in pairs}
    records = []

    def record(record_id: str, pair: dict, prompt: str, answer: str, extra: dict) -> dict:
        meta = {"generator": "augment", "pair_id": pair["pair_id"],
                "source": json.loads(pair["source"] or "{}"),
                "response_origin": pair["response_origin"], **extra}
        return {"record_id": record_id, "prompt_id": pair["pair_id"], "answer_id": record_id,
                "prompt": prompt, "answer": answer, "grounded": False,
                "metadata": json.dumps(meta, ensure_ascii=False, default=str)}

    if include_originals:
        records += [record(p["pair_id"], p, p["instruction"], p["response"],
                           {"method": "original", "models": {"response": p["model"]}})
                    for p in pairs]
    for v in store.query_dicts("SELECT * FROM aug_variants ORDER BY variant_id"):
        pair = by_id[v["pair_id"]]
        prompt = v["text"] if v["field"] == "instruction" else pair["instruction"]
        answer = v["text"] if v["field"] == "response" else pair["response"]
        records.append(record(v["variant_id"], pair, prompt, answer, {
            "method": v["method"], "field": v["field"], "pivot": v["pivot_language"],
            "original": pair[v["field"]], "similarity": round(v["similarity"], 4),
            "models": {"variant": v["model"], "response": pair["model"]},
            "templates": {"variant": v["template_version"], "response": pair["template_version"]}}))
    return store.replace_rows("dataset", records)


@stage_task("augment_dataset", reads=("aug_variants",), writes=("dataset",))
def augment_dataset(cfg: AugmentConfig, variants: StageResult) -> StageResult:
    store = Store.open(cfg.db_path)
    timer = StageTimer(store, "dataset")
    n = to_dataset(store, cfg.include_originals)
    return timer.done(store.ref("dataset", "record_id"), variants.out.rows, n)
