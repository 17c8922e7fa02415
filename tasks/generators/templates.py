"""Template generation: instruction templates with slots, filled from lists
or by the LLM, then answered by the generator.

A spec (YAML):

    domain: particle physics              # optional, shown to the LLM
    max_per_template: 20                  # fillings drawn per template
    templates:
      - "What are the main differences between [PARTICLE:1] and [PARTICLE:2] in [FIELD]?"
      - "Explain the role of [PARTICLE] in [PROCESS]."
    slots:
      FIELD: [particle physics, nuclear physics]          # a list of values
      PARTICLE: [quarks, gluons, photons]
      PROCESS: {llm: "a process studied at particle colliders", n: 6, examples: [beta decay]}

`[NAME]` takes a value of slot NAME; `[NAME:1]`, `[NAME:2]` … take distinct
values of the same slot.  Fillings are drawn at random (seeded) without
repetition, up to `max_per_template`; filled instructions that are near
duplicates of an earlier one (embedding cosine ≥ `dedup_cosine`, FAISS, as in
the prompt flow; "Compare A and B" against "Compare B and A") are dropped
before any is answered.  A spec that names an unknown slot, a
slot without values, or no template stops the run with one line.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path
from typing import Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftmill.core.endpoints import Embedding
from sftmill.core.errors import RecipeError
from sftmill.core.ids import content_id
from sftmill.core.recipe import GeneratorConfig, read_yaml
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map
from sftmill.prompts import exact_items, load_template, with_schema
from sftmill.tasks.generators.respond import respond
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.dedup import new_near_duplicates

PLACEHOLDER = re.compile(r"\[([A-Z][A-Z0-9_]*)(?::(\d+))?\]")
MAX_DRAWS = 100_000  # fillings drawn at most per template (a huge product is sampled)

SCHEMA = {
    "tpl_values": """
        slot VARCHAR,
        value VARCHAR,
        origin VARCHAR,          -- list | llm
        model VARCHAR,
        call_key VARCHAR,
        PRIMARY KEY (slot, value)
    """,
    "tpl_pairs": """
        instruction_id VARCHAR PRIMARY KEY,
        template_index INTEGER,
        template VARCHAR,
        bindings VARCHAR,        -- JSON: placeholder → value
        instruction VARCHAR,
        response VARCHAR,
        model VARCHAR,
        response_template VARCHAR,
        call_key VARCHAR
    """,
}


class LLMSlot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    llm: str = Field(min_length=3, description="What the slot's values are, for the LLM.")
    n: int = Field(default=8, ge=1, le=50)
    examples: tuple[str, ...] = ()


class TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str = ""
    max_per_template: int = Field(default=20, ge=1, le=100_000)
    templates: tuple[str, ...] = Field(min_length=1)
    slots: dict[str, Union[tuple[str, ...], LLMSlot]] = Field(default_factory=dict)


def placeholders(template: str) -> list[tuple[str, str]]:
    """(placeholder text, slot name) in order of first appearance."""
    seen: dict[str, str] = {}
    for match in PLACEHOLDER.finditer(template):
        seen.setdefault(match.group(0), match.group(1))
    return list(seen.items())


def _first_problem(err: ValidationError, raw) -> str:
    """One line for the first error, from the union branch the slot meant
    (a mapping is an LLM slot, anything else a list)."""
    def meant(e) -> bool:
        loc = e["loc"]
        if len(loc) > 2 and loc[0] == "slots" and isinstance(raw, dict):
            is_llm = isinstance((raw.get("slots") or {}).get(loc[1]), dict)
            return ("LLMSlot" in loc) == is_llm
        return True

    errors = err.errors()
    first = next((e for e in errors if meant(e)), errors[0])
    where = ".".join(str(p) for p in first["loc"] if p != "LLMSlot" and not str(p).startswith("tuple["))
    return f"{where}: {first['msg']}"


def load_spec(path: str | Path) -> TemplateSpec:
    """The spec, checked; any problem is one RecipeError line."""
    path = Path(path)
    raw = read_yaml(path, "template spec") or {}
    try:
        spec = TemplateSpec.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(f"{path}: {_first_problem(err, raw)}") from None
    for name, values in spec.slots.items():
        if isinstance(values, tuple) and not [v for v in values if str(v).strip()]:
            raise RecipeError(f"{path}: slots.{name}: no values")
    for i, template in enumerate(spec.templates):
        names = placeholders(template)
        if not names:
            raise RecipeError(f"{path}: templates.{i}: no [SLOT] placeholder in {template!r}")
        for text, name in names:
            if name not in spec.slots:
                raise RecipeError(f"{path}: templates.{i}: {text} names no slot under 'slots'")
    return spec


def fillings(template: str, values: dict[str, list[str]], limit: int, rng: random.Random,
             ) -> list[dict[str, str]]:
    """Up to `limit` distinct bindings placeholder → value; the numbered
    placeholders of one slot take distinct values."""
    slots = placeholders(template)
    pools = [values.get(name, []) for _, name in slots]
    if not all(pools):
        return []

    def valid(combo) -> bool:
        used: dict[str, set[str]] = {}
        for (_text, name), value in zip(slots, combo):
            if value in used.setdefault(name, set()):
                return False
            used[name].add(value)
        return True

    size = 1
    for pool in pools:
        size *= len(pool)
    if size <= max(limit * 20, 10_000):  # small enough to list: sample the valid ones
        combos = [c for c in itertools.product(*pools) if valid(c)]
        picked = rng.sample(combos, min(limit, len(combos)))
    else:  # draw at random until enough distinct valid ones
        found: dict[tuple, None] = {}
        for _ in range(MAX_DRAWS):
            combo = tuple(rng.choice(pool) for pool in pools)
            if valid(combo):
                found.setdefault(combo, None)
                if len(found) >= limit:
                    break
        picked = list(found)
    return [{text: value for (text, _), value in zip(slots, combo)} for combo in picked]


def fill(template: str, binding: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: binding[m.group(0)], template)


class TemplatesConfig(GeneratorConfig):
    spec_path: str = Field(description="YAML spec of templates and slots.")
    min_response_words: int = Field(default=3, ge=1)
    dedup_cosine: float = Field(default=0.92, gt=0, le=1, description="A filled instruction this "
                                "cosine-similar to an earlier one is dropped.")
    embedding: Embedding = Field(default_factory=Embedding)

    def llm_templates(self):
        return [("generator", self.generator, "template_slot_values", 0)] + super().llm_templates()


@stage_task("template_slot_values", writes=("tpl_values",))
def slot_values(cfg: TemplatesConfig, spec_fingerprint: str) -> StageResult:
    """Every slot's values: the spec's lists, and the LLM's for `llm` slots."""
    store = Store.open(cfg.db_path)
    store.ensure_tables(SCHEMA)
    timer = StageTimer(store, "slot_values")
    spec = load_spec(cfg.spec_path)
    rows = [{"slot": name, "value": str(v).strip(), "origin": "list", "model": None, "call_key": None}
            for name, values in spec.slots.items() if isinstance(values, tuple)
            for v in values if str(v).strip()]
    asked = [(name, s) for name, s in spec.slots.items() if isinstance(s, LLMSlot)]
    if asked:
        llm = make_llm(cfg.generator, store)
        base = load_template("template_slot_values")
        for name, slot in asked:
            template = with_schema(base, exact_items(base.schema, "values", slot.n))
            results = llm_map(llm, cfg.generator, template, [name],
                              lambda _n, slot=slot: {"domain": spec.domain, "description": slot.llm,
                                                     "n": slot.n, "examples": list(slot.examples)},
                              stage=f"slot_{name}", seed=cfg.seed)
            for _name, result in answered(store, "slot_values", results, lambda n: n):
                rows += [{"slot": name, "value": v.strip(), "origin": "llm", "model": llm.model,
                          "call_key": result.key} for v in result.data["values"] if v.strip()]
    store.replace_rows("tpl_values", rows)
    return timer.done(store.ref("tpl_values", "slot || value"), len(spec.slots), len(rows))


@stage_task("template_pairs", reads=("tpl_values",), writes=("tpl_pairs",))
def template_pairs(cfg: TemplatesConfig, values: StageResult, spec_fingerprint: str) -> StageResult:
    """Fill every template, then answer each instruction."""
    store = Store.open(cfg.db_path)
    timer = StageTimer(store, "templates")
    spec = load_spec(cfg.spec_path)
    by_slot: dict[str, list[str]] = {}
    for slot, value in store.execute("SELECT slot, value FROM tpl_values ORDER BY slot, value"):
        by_slot.setdefault(slot, []).append(value)
    store.execute("DELETE FROM rejects WHERE stage = 'templates'")  # a rerun records its own drops
    rng = random.Random(cfg.seed)
    filled: dict[str, dict] = {}
    for i, template in enumerate(spec.templates):
        bindings = fillings(template, by_slot, spec.max_per_template, rng)
        if not bindings:
            store.reject("templates", content_id(template), "slot_without_values", template)
        for binding in bindings:
            instruction = fill(template, binding)
            filled.setdefault(content_id(instruction), {
                "template_index": i, "template": template, "instruction": instruction,
                "bindings": json.dumps(binding, ensure_ascii=False)})
    keys, n_filled = list(filled), len(filled)
    vectors = Embedder(cfg.embedding, store).embed([filled[k]["instruction"] for k in keys])
    for k, (_which, j, sim) in new_near_duplicates(vectors[:0], vectors, cfg.dedup_cosine).items():
        store.reject("templates", keys[k], "near_duplicate",
                     f"{filled[keys[k]]['instruction']} — cosine {sim:.3f} to: "
                     f"{filled[keys[j]]['instruction']}", sim)
        del filled[keys[k]]
    llm = make_llm(cfg.generator, store)
    answers = respond(store, llm, cfg.generator, [(k, v["instruction"]) for k, v in filled.items()],
                      stage="templates", seed=cfg.seed, min_words=cfg.min_response_words)
    store.replace_rows("tpl_pairs", [
        {"instruction_id": k, **v, "response": answers[k][0], "model": llm.model,
         "response_template": answers[k][2], "call_key": answers[k][1]}
        for k, v in filled.items() if k in answers])
    return timer.done(store.ref("tpl_pairs", "instruction_id"), n_filled, store.count("tpl_pairs"))


def to_dataset(store: Store, spec_path: str) -> int:
    origins = {(s, v): (o, m) for s, v, o, m in
               store.execute("SELECT slot, value, origin, model FROM tpl_values")}
    records = []
    for r in store.query_dicts("SELECT * FROM tpl_pairs ORDER BY instruction_id"):
        binding = json.loads(r["bindings"])
        slots = {text: {"value": value, "origin": origins.get((PLACEHOLDER.match(text).group(1), value),
                                                             ("?", None))[0]}
                 for text, value in binding.items()}
        records.append({
            "record_id": r["instruction_id"], "prompt_id": r["instruction_id"],
            "answer_id": r["instruction_id"], "prompt": r["instruction"], "answer": r["response"],
            "grounded": False,
            "metadata": json.dumps({
                "generator": "template", "spec": Path(spec_path).name,
                "template_index": r["template_index"], "template": r["template"], "slots": slots,
                "models": {"response": r["model"],
                           "slot_values": sorted({m for (_o, m) in origins.values() if m})},
                "templates": {"response": r["response_template"]}}, ensure_ascii=False)})
    return store.replace_rows("dataset", records)


@stage_task("template_dataset", reads=("tpl_pairs",), writes=("dataset",))
def template_dataset(cfg: TemplatesConfig, pairs: StageResult) -> StageResult:
    store = Store.open(cfg.db_path)
    timer = StageTimer(store, "dataset")
    n = to_dataset(store, cfg.spec_path)
    return timer.done(store.ref("dataset", "record_id"), pairs.out.rows, n)
