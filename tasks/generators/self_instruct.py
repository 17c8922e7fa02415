"""Self-Instruct (Wang et al., 2022): bootstrap instructions from a seed pool.

Each round: several generation prompts, each showing 8 in-context
instructions (6 from the human seeds, 2 from earlier machine-generated ones
when there are any) for the model to continue; the textual filters and the
ROUGE-L novelty check of `tasks.self_instruct_filters`; classification
identification by few-shot prompting; instances generated output-first
(label, then input) for classification tasks and input-first otherwise;
the instance filters.  Kept instructions join the pool, until the target
count or the round limit.  Every drop keeps its reason in `rejects`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import Field

from sftmill.core.errors import RecipeError
from sftmill.core.ids import content_id
from sftmill.core.recipe import GeneratorConfig
from sftmill.core.store import Store
from sftmill.llm.backends import make_llm
from sftmill.llm.map import answered, llm_map
from sftmill.prompts import load_template
from sftmill.tasks.generators.self_instruct_filters import (
    ROUGE_THRESHOLD,
    NoveltyIndex,
    instance_rejects,
    instruction_reject,
)
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task

STAGE = "self_instruct"
HUMAN_EXAMPLES, MACHINE_EXAMPLES = 6, 2
CLASSIFY_EXAMPLES = 31  # the paper: 12 classification and 19 other seed tasks

SCHEMA = {
    "si_tasks": """
        task_id VARCHAR PRIMARY KEY,
        instruction VARCHAR,
        is_classification BOOLEAN,
        origin VARCHAR,          -- seed | machine
        round INTEGER,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
    "si_instances": """
        instance_id VARCHAR PRIMARY KEY,
        task_id VARCHAR,
        input VARCHAR,
        output VARCHAR,
        model VARCHAR,
        template_version VARCHAR,
        call_key VARCHAR
    """,
}


class SelfInstructConfig(GeneratorConfig):
    seeds_path: str = Field(description="JSONL of {instruction, instances, is_classification}.")
    target: int = Field(default=100, ge=1, description="Machine-generated instructions to keep.")
    prompts_per_round: int = Field(default=8, ge=1, le=256)
    new_per_prompt: int = Field(default=4, ge=1, le=20)
    max_rounds: int = Field(default=20, ge=1)
    rouge_threshold: float = Field(default=ROUGE_THRESHOLD, gt=0, le=1)

    def llm_templates(self):
        return [("generator", self.generator, name, 0) for name in (
            "self_instruct_generate", "self_instruct_classify", "self_instruct_input_first",
            "self_instruct_output_first")]


def load_seeds(path: str | Path) -> list[dict]:
    """The seed tasks; a malformed line is a fatal error naming the line."""
    seeds = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
            assert isinstance(task["instruction"], str) and task["instruction"].strip()
            assert isinstance(task["is_classification"], bool)
            assert all(isinstance(i["input"], str) and isinstance(i["output"], str)
                       for i in task["instances"]) and task["instances"]
        except (ValueError, KeyError, TypeError, AssertionError):
            raise RecipeError(f"{path}:{n}: expected {{instruction, instances: [{{input, output}}], "
                              "is_classification}") from None
        seeds.append(task)
    if len(seeds) < HUMAN_EXAMPLES:
        raise RecipeError(f"{path}: needs at least {HUMAN_EXAMPLES} seed tasks, found {len(seeds)}")
    return seeds


def sample_examples(human: list[str], machine: list[str], rng: random.Random) -> list[str]:
    """8 in-context instructions: 6 human + 2 machine (8 human while there are none)."""
    n_machine = min(MACHINE_EXAMPLES, len(machine))
    picked = rng.sample(human, min(len(human), HUMAN_EXAMPLES + MACHINE_EXAMPLES - n_machine))
    picked += rng.sample(machine, n_machine)
    rng.shuffle(picked)
    return picked


def seed_pool(store: Store, seeds: list[dict]) -> None:
    store.insert("si_tasks", [{"task_id": content_id(s["instruction"]), "instruction": s["instruction"],
                               "is_classification": s["is_classification"], "origin": "seed",
                               "round": 0} for s in seeds])


def propose(store: Store, cfg: SelfInstructConfig, llm, round_no: int) -> list[tuple[str, str]]:
    """Ask for new instructions; return (instruction, call_key) pairs."""
    rows = store.execute("SELECT instruction, origin FROM si_tasks ORDER BY task_id")
    human = [i for i, o in rows if o == "seed"]
    machine = [i for i, o in rows if o == "machine"]
    rng = random.Random(cfg.seed * 100_003 + round_no)
    batches = [sample_examples(human, machine, rng) for _ in range(cfg.prompts_per_round)]
    template = load_template("self_instruct_generate")
    results = llm_map(llm, cfg.generator, template, batches,
                      lambda ex: {"examples": ex, "n": cfg.new_per_prompt},
                      stage=f"{STAGE}_generate", seed=cfg.seed + round_no,
                      fit="examples", store=store)
    out = []
    for _batch, result in answered(store, f"{STAGE}_generate", results,
                                   lambda batch: content_id(round_no, batch)):
        out += [(i.strip(), result.key) for i in result.data["instructions"]]
    return out


def filter_instructions(store: Store, cfg: SelfInstructConfig, candidates: list[tuple[str, str]],
                        ) -> list[tuple[str, str]]:
    pool = [r[0] for r in store.execute("SELECT instruction FROM si_tasks")]
    novelty = NoveltyIndex(cfg.rouge_threshold, pool)
    kept = []
    for instruction, key in candidates:
        item = content_id(instruction)
        reason = instruction_reject(instruction)
        if reason is None and not novelty.is_novel(instruction):
            reason = "rouge_l_duplicate"
        if reason:
            store.reject(f"{STAGE}_filter", item, reason, instruction[:300])
            continue
        novelty.add(instruction)
        kept.append((instruction, key))
    return kept


def by_length(seeds: list[dict]) -> list[dict]:
    """Seed tasks shortest first (then by text): the order in-context
    examples are given in, so a prompt cut to fit the context keeps the most."""
    return sorted(seeds, key=lambda s: (len(json.dumps(s, ensure_ascii=False)), s["instruction"]))


def classification_examples(seeds: list[dict]) -> list[dict]:
    """The few-shot examples for classification identification, best first
    and at most the paper's 31: classification and other tasks alternating,
    each shortest first, so a prompt shortened to fit a small context stays
    balanced."""
    yes = by_length([s for s in seeds if s["is_classification"]])
    no = by_length([s for s in seeds if not s["is_classification"]])
    mixed = [s for pair in zip(no, yes) for s in pair]
    return (mixed + no[len(yes):] + yes[len(no):])[:CLASSIFY_EXAMPLES]


def classify(store: Store, cfg: SelfInstructConfig, llm, seeds: list[dict],
             instructions: list[str]) -> dict[str, bool]:
    template = load_template("self_instruct_classify")
    examples = classification_examples(seeds)
    results = llm_map(llm, cfg.generator, template, instructions,
                      lambda i: {"examples": examples, "instruction": i},
                      stage=f"{STAGE}_classify", seed=cfg.seed, max_tokens=16,
                      fit="examples", store=store)
    return {instruction: result.data["is_classification"]
            for instruction, result in answered(store, f"{STAGE}_classify", results, content_id)}


def make_instances(store: Store, cfg: SelfInstructConfig, llm, seeds: list[dict],
                   labels: dict[str, bool]) -> dict[str, tuple[list[dict], str, str]]:
    """Instances per instruction: output-first for classification, else input-first."""
    out: dict[str, tuple[list[dict], str, str]] = {}
    for is_cls, name in ((True, "self_instruct_output_first"), (False, "self_instruct_input_first")):
        todo = [i for i, c in labels.items() if c is is_cls]
        examples = by_length([s for s in seeds if s["is_classification"] is is_cls])[:3]
        template = load_template(name)
        results = llm_map(llm, cfg.generator, template, todo,
                          lambda i: {"examples": examples, "instruction": i},
                          stage=f"{STAGE}_instances", seed=cfg.seed,
                          fit="examples", store=store)
        for instruction, result in answered(store, f"{STAGE}_instances", results, content_id):
            instances = [{"input": x["input"], "output": x["label"] if is_cls else x["output"]}
                         for x in result.data["instances"]]
            out[instruction] = (instances, template.version, result.key)
    return out


def run_round(store: Store, cfg: SelfInstructConfig, seeds: list[dict], round_no: int) -> int:
    """One bootstrapping round; returns the instructions it added to the pool."""
    llm = make_llm(cfg.generator, store)
    kept = filter_instructions(store, cfg, propose(store, cfg, llm, round_no))
    labels = classify(store, cfg, llm, seeds, [i for i, _ in kept])
    instances = make_instances(store, cfg, llm, seeds, labels)
    gen_version = load_template("self_instruct_generate").version
    tasks, rows = [], []
    for instruction, key in kept:
        if instruction not in instances:
            continue
        candidates, version, inst_key = instances[instruction]
        reasons = instance_rejects(candidates)
        task_id = content_id(instruction)
        good = [c for c, r in zip(candidates, reasons) if r is None]
        for c, r in zip(candidates, reasons):
            if r:
                store.reject(f"{STAGE}_instances", content_id(task_id, c), r, json.dumps(c)[:300])
        if not good:
            store.reject(f"{STAGE}_instances", task_id, "no_valid_instance", instruction[:300])
            continue
        tasks.append({"task_id": task_id, "instruction": instruction,
                      "is_classification": labels[instruction], "origin": "machine",
                      "round": round_no, "model": llm.model, "template_version": gen_version,
                      "call_key": key})
        rows += [{"instance_id": content_id(task_id, c["input"], c["output"]), "task_id": task_id,
                  "input": c["input"], "output": c["output"], "model": llm.model,
                  "template_version": version, "call_key": inst_key} for c in good]
    store.insert("si_instances", rows)
    store.insert("si_tasks", tasks)
    return len(tasks)


STALL_ROUNDS = 3


def stalled(rounds: list[StageResult]) -> bool:
    """True when the last `STALL_ROUNDS` rounds added nothing to the pool."""
    last = rounds[-STALL_ROUNDS:]
    return len(last) == STALL_ROUNDS and all(r.n_out == r.n_in for r in last)


def stall_message(cfg: SelfInstructConfig, rounds: list[StageResult]) -> str:
    """One line: why the loop stopped early, naming the commonest drop reasons."""
    store = Store.open(cfg.db_path)
    top = store.execute(f"SELECT reason, count(*) AS n FROM rejects WHERE stage LIKE '{STAGE}%' "
                        "GROUP BY reason ORDER BY n DESC, reason LIMIT 3")
    message = (f"self-instruct stopped after round {len(rounds)}: the last {STALL_ROUNDS} rounds "
               f"added no instruction (target {cfg.target}); commonest drops: "
               + (", ".join(f"{r} {n}" for r, n in top) or "none"))
    store.set_meta("stopped_early", message)
    return message


def machine_count(store: Store) -> int:
    return int(store.scalar("SELECT count(*) FROM si_tasks WHERE origin = 'machine'"))


def to_dataset(store: Store) -> int:
    """One SFT record per kept machine instance, into the `dataset` table."""
    rows = store.query_dicts(
        "SELECT t.*, i.instance_id, i.input, i.output, i.template_version AS instance_template "
        "FROM si_tasks t JOIN si_instances i USING (task_id) WHERE t.origin = 'machine' "
        "ORDER BY i.instance_id")
    return store.replace_rows("dataset", [{
        "record_id": r["instance_id"], "prompt_id": r["task_id"], "answer_id": r["instance_id"],
        "prompt": r["instruction"] + (f"\n\n{r['input']}" if r["input"].strip() else ""),
        "answer": r["output"], "grounded": False,
        "metadata": json.dumps({"generator": "self-instruct", "task_id": r["task_id"],
                                "instance_id": r["instance_id"], "round": r["round"],
                                "is_classification": r["is_classification"],
                                "model": r["model"], "templates": {
                                    "instruction": r["template_version"],
                                    "instances": r["instance_template"]}})} for r in rows])


@stage_task("self_instruct_round", reads=("si_tasks",), writes=("si_tasks",))
def bootstrap_round(cfg: SelfInstructConfig, pool: StageResult | None, round_no: int) -> StageResult:
    store = Store.open(cfg.db_path)
    store.ensure_tables(SCHEMA)
    timer = StageTimer(store, STAGE)
    seeds = load_seeds(cfg.seeds_path)
    seed_pool(store, seeds)
    added = run_round(store, cfg, seeds, round_no)
    return timer.done(store.ref("si_tasks", "task_id"), machine_count(store) - added,
                      machine_count(store), f"round {round_no}: {added} instructions added")


@stage_task("self_instruct_dataset", cached=False, reads=("si_tasks",), writes=("dataset",))
def self_instruct_dataset(cfg: SelfInstructConfig, pool: StageResult) -> StageResult:
    """The pool's tasks as `dataset` records (then curation and export)."""
    store = Store.open(cfg.db_path)
    timer = StageTimer(store, "dataset")
    n = to_dataset(store)
    return timer.done(store.ref("dataset", "record_id"), pool.n_out, n)
