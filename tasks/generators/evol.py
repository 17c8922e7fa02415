"""Evol-Instruct (Xu et al., 2023, WizardLM): rewrite instructions, round
after round, into harder (in-depth) or rarer (in-breadth) ones.

Each round evolves every lineage's latest instruction with one operation
drawn at random (seeded per instruction and round) from:
    in-depth   add_constraints, deepen, concretize, increase_reasoning,
               complicate_input
    in-breadth breadth (a new instruction: same domain and difficulty,
               rarer topic)
each an evolution prompt `prompts/evol_<operation>.jinja2`.  The
eliminator drops a failed evolution with its reason (in `rejects`, stage
`evol_r<round>`):
    empty_evolution         nothing came back
    truncated_evolution     the rewrite used the whole token budget
    copies_template_words   it repeats words of the evolution prompt (a run of
                            four of its words, "given prompt", "this method" …)
    no_information_gain     identical to its parent, or the judge LLM finds
                            the two equal (`prompts/evol_equal`)
    not_a_request           the parent was a question or a request and the
                            rewrite is neither (the model answered it)
    near_duplicate          embedding cosine ≥ `dedup_cosine` with an
                            instruction of another lineage (FAISS, as in
                            the prompt flow's dedup)
    empty_response, response_truncated, response_refusal,
    response_too_short      the evolved instruction makes the generator
                            answer poorly (`tasks.respond`)
As in the paper, a failed evolution puts its parent back: the lineage is
evolved again next round with a freshly drawn operation.  Survivors get
their response and join `evol_items` with parent ID, operation and round.
The dataset holds the evolved pairs of rounds 1..M (and, with
`include_inputs`, the input pairs that came with a response).
"""

from __future__ import annotations

import json

from pydantic import Field

from sftmill.core.endpoints import Embedding, LLMEndpoint
from sftmill.core.ids import content_id
from sftmill.core.recipe import GeneratorConfig
from sftmill.core.sections import EVOL_OPERATIONS, EvolOperation
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map, truncated
from sftmill.prompts import load_template
from sftmill.tasks.generators.respond import respond
from sftmill.tasks.sources.pairs import SCHEMA as INPUT_SCHEMA
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.dedup import new_near_duplicates
from sftmill.tasks.stages.evolve import evolution_problem, fixed_text, pick_operation

STAGE = "evol"

SCHEMA = {
    "evol_items": """
        item_id VARCHAR PRIMARY KEY,
        root_id VARCHAR,          -- the input item this lineage started from
        parent_id VARCHAR,        -- NULL for round 0 (the inputs)
        operation VARCHAR,        -- 'input' for round 0
        round INTEGER,
        instruction VARCHAR,
        response VARCHAR,
        model VARCHAR,
        evolve_template VARCHAR,
        response_template VARCHAR,
        judge_model VARCHAR,
        evolve_call VARCHAR,
        response_call VARCHAR
    """,
}


class EvolConfig(GeneratorConfig):
    input_path: str = Field(description="Plain instructions (.txt, one per line) or JSONL "
                            "(Alpaca, prompt/response, OpenAI messages, ShareGPT, an earlier export).")
    rounds: int = Field(default=4, ge=1, le=20, description="Evolution rounds M.")
    operations: tuple[EvolOperation, ...] = Field(default=EVOL_OPERATIONS, min_length=1,
                                              description="Operations drawn from, uniformly.")
    judge_info_gain: bool = Field(default=True, description="Ask the judge LLM whether an "
                                  "evolution equals its parent (identical text is always dropped).")
    include_inputs: bool = Field(default=False, description="Also export the input pairs that "
                                 "came with a response (round 0).")
    min_response_words: int = Field(default=3, ge=1)
    dedup_cosine: float = Field(default=0.92, gt=0, le=1, description="An evolution this "
                                "cosine-similar to an instruction of another lineage is dropped.")
    embedding: Embedding = Field(default_factory=Embedding)
    judge: LLMEndpoint = Field(default_factory=lambda: LLMEndpoint(temperature=0.0, max_tokens=16))

    def llm_templates(self):
        steps = [("generator", self.generator, f"evol_{op}", 0) for op in self.operations]
        if self.judge_info_gain:
            steps.append(("judge", self.judge, "evol_equal", 0))
        return steps + super().llm_templates()


def seed_inputs(store: Store) -> None:
    """Round 0 of every lineage: the input items."""
    store.insert("evol_items", [
        {"item_id": r["item_id"], "root_id": r["item_id"], "parent_id": None, "operation": "input",
         "round": 0, "instruction": r["instruction"], "response": r["response"]}
        for r in store.query_dicts("SELECT * FROM input_items")])


def frontier(store: Store, round_no: int) -> list[dict]:
    """Each lineage's latest kept instruction before `round_no` (lineages of
    the current input file only)."""
    return store.query_dicts(
        "SELECT * FROM evol_items WHERE round < ? AND root_id IN (SELECT item_id FROM input_items) "
        "QUALIFY row_number() OVER (PARTITION BY root_id ORDER BY round DESC) = 1 "
        "ORDER BY root_id", [round_no])


def reject_stage(round_no: int) -> str:
    """Each round is its own stage in `stage_stats` and `rejects`: evol_r1, evol_r2, …"""
    return f"{STAGE}_r{round_no}"


def _drop(drops, parent: dict, op: str, round_no: int, reason: str, text: str) -> None:
    detail = json.dumps({"operation": op, "parent_id": parent["item_id"], "text": text[:300]},
                        ensure_ascii=False)
    drops.add(content_id(parent["item_id"], round_no, op), reason, detail)


def evolve(store: Store, cfg: EvolConfig, llm, parents: list[dict], round_no: int,
           ) -> list[tuple[dict, str, str, str, str]]:
    """Rewrite each parent; returns (parent, operation, text, template version,
    call key) for the rewrites that pass the textual checks."""
    by_op: dict[str, list[dict]] = {}
    for parent in parents:
        by_op.setdefault(pick_operation(cfg.seed, cfg.operations, parent["item_id"], round_no),
                         []).append(parent)
    out = []
    for op, group in sorted(by_op.items()):
        template = load_template(f"evol_{op}")
        own_words = fixed_text(template)
        results = llm_map(llm, cfg.generator, template, group,
                          lambda p: {"instruction": p["instruction"]},
                          stage=f"{STAGE}_r{round_no}_{op}", seed=cfg.seed + round_no)
        with store.drops(reject_stage(round_no)) as drops:
            for parent, result in answered(store, reject_stage(round_no), results,
                                           lambda p, op=op: content_id(p["item_id"], round_no, op)):
                text = result.text.strip()
                problem = evolution_problem(parent["instruction"], text,
                                            truncated(result, cfg.generator.max_tokens), own_words)
                if problem:
                    _drop(drops, parent, op, round_no, problem, text)
                else:
                    out.append((parent, op, text, template.version, result.key))
    return out


def judge_equal(store: Store, cfg: EvolConfig, candidates: list[tuple], round_no: int,
                ) -> tuple[list[tuple], str]:
    """Drop the evolutions the judge finds equal to their parent."""
    judge = make_llm(cfg.judge, store)
    template = load_template("evol_equal")
    results = llm_map(judge, cfg.judge, template, candidates,
                      lambda c: {"parent": c[0]["instruction"], "child": c[2]},
                      stage=f"{STAGE}_r{round_no}_judge", seed=cfg.seed)
    kept = []
    with store.drops(reject_stage(round_no)) as drops:
        for cand, result in answered(store, reject_stage(round_no), results,
                                     lambda c: content_id(c[0]["item_id"], round_no, c[1])):
            if result.data["equal"]:
                _drop(drops, cand[0], cand[1], round_no, "no_information_gain",
                      f"{cand[2]} — the judge found it equal to its parent")
            else:
                kept.append(cand)
    return kept, judge.model


def drop_near_duplicates(store: Store, cfg: EvolConfig, candidates: list[tuple], round_no: int,
                         ) -> list[tuple]:
    """Drop evolutions that repeat an instruction of another lineage (kept
    in an earlier round, or evolved before them in this one)."""
    if not candidates:
        return []
    existing = store.query_dicts(
        "SELECT item_id, root_id, instruction FROM evol_items WHERE round < ? "
        "AND root_id IN (SELECT item_id FROM input_items) ORDER BY round, item_id", [round_no])
    embedder = Embedder(cfg.embedding, store)
    old = embedder.embed([e["instruction"] for e in existing])
    new = embedder.embed([c[2] for c in candidates])
    removed = new_near_duplicates(old, new, cfg.dedup_cosine, [e["root_id"] for e in existing],
                                  [c[0]["root_id"] for c in candidates])
    with store.drops(reject_stage(round_no)) as drops:
        for k, (which, j, sim) in removed.items():
            twin = existing[j]["instruction"] if which == "old" else candidates[j][2]
            _drop(drops, candidates[k][0], candidates[k][1], round_no, "near_duplicate",
                  f"{candidates[k][2]} — cosine {sim:.3f} to: {twin}")
    return [c for k, c in enumerate(candidates) if k not in removed]


def run_round(store: Store, cfg: EvolConfig, round_no: int) -> int:
    llm = make_llm(cfg.generator, store)
    candidates = evolve(store, cfg, llm, frontier(store, round_no), round_no)
    candidates = drop_near_duplicates(store, cfg, candidates, round_no)
    judge_model = None
    if cfg.judge_info_gain and candidates:
        candidates, judge_model = judge_equal(store, cfg, candidates, round_no)
    ids = {content_id(p["root_id"], round_no, text): (p, op, text, version, key)
           for p, op, text, version, key in candidates}
    responses = respond(store, llm, cfg.generator, [(i, c[2]) for i, c in ids.items()],
                        stage=reject_stage(round_no), seed=cfg.seed,
                        min_words=cfg.min_response_words)
    rows = []
    for item_id, (parent, op, text, version, key) in ids.items():
        if item_id not in responses:
            continue
        response, response_key, response_version = responses[item_id]
        rows.append({"item_id": item_id, "root_id": parent["root_id"], "parent_id": parent["item_id"],
                     "operation": op, "round": round_no, "instruction": text, "response": response,
                     "model": llm.model, "evolve_template": version,
                     "response_template": response_version, "judge_model": judge_model,
                     "evolve_call": key, "response_call": response_key})
    store.insert("evol_items", rows)
    return len(rows)


@stage_task("evol_round", reads=("input_items", "evol_items"), writes=("evol_items",))
def evolve_round(cfg: EvolConfig, previous: StageResult, round_no: int) -> StageResult:
    """One evolution round over every lineage."""
    store = Store.open(cfg.db_path)
    store.ensure_tables(INPUT_SCHEMA | SCHEMA)
    timer = StageTimer(store, reject_stage(round_no))
    seed_inputs(store)
    n_in = len(frontier(store, round_no))
    # A rerun round starts clean: rows and drops of an earlier attempt are replaced.
    store.execute("DELETE FROM evol_items WHERE round = ?", [round_no])
    store.execute("DELETE FROM rejects WHERE stage = ?", [reject_stage(round_no)])
    added = run_round(store, cfg, round_no)
    return timer.done(store.ref("evol_items", "item_id"), n_in, added,
                      f"round {round_no}: {added} of {n_in} evolved")


def evolution_path(items: dict[str, dict], item: dict) -> list[str]:
    path = []
    while item and item["parent_id"]:
        path.append(item["operation"])
        item = items.get(item["parent_id"])
    return path[::-1]


def to_dataset(store: Store, rounds: int, include_inputs: bool) -> int:
    rows = store.query_dicts("SELECT e.*, i.source FROM evol_items e "
                             "JOIN input_items i ON i.item_id = e.root_id "
                             "WHERE e.round <= ? ORDER BY e.item_id", [rounds])
    items = {r["item_id"]: r for r in rows}
    records = []
    for r in rows:
        if r["round"] == 0 and not (include_inputs and r["response"]):
            continue
        records.append({
            "record_id": r["item_id"], "prompt_id": r["item_id"], "answer_id": r["item_id"],
            "prompt": r["instruction"], "answer": r["response"], "grounded": False,
            "metadata": json.dumps({
                "generator": "evol-instruct", "item_id": r["item_id"], "root_id": r["root_id"],
                "parent_id": r["parent_id"], "operation": r["operation"], "round": r["round"],
                "evolution_path": evolution_path(items, r),
                "source": json.loads(r["source"] or "{}"),
                "models": {"evolve": r["model"], "response": r["model"], "judge": r["judge_model"]},
                "templates": {"evolve": r["evolve_template"], "response": r["response_template"]},
            }, ensure_ascii=False, default=str)})
    return store.replace_rows("dataset", records)


@stage_task("evol_dataset", reads=("evol_items",), writes=("dataset",))
def evol_dataset(cfg: EvolConfig, evolved: StageResult) -> StageResult:
    store = Store.open(cfg.db_path)
    timer = StageTimer(store, "dataset")
    n = to_dataset(store, cfg.rounds, cfg.include_inputs)
    return timer.done(store.ref("dataset", "record_id"), evolved.out.rows, n)
