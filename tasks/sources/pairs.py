"""Read instructions (and responses, when there are any) for the generators
that start from an existing set: Evol-Instruct, paraphrasing, back-translation.

Accepted, one item per line:
    *.txt     a plain instruction per line
    *.jsonl   {"instruction": …[, "input": …][, "output": …]}   (Alpaca)
              {"prompt": …[, "response": …]}
              {"messages": [{"role": "user", …}, {"role": "assistant", …}]}   (OpenAI)
              {"conversations": [{"from": "human", …}, {"from": "gpt", …}]}   (ShareGPT)
so an earlier sftmill export in any of its formats is valid input; its
`metadata` travels on as the item's source lineage.  A line that fits none
of these is skipped with its reason (the run goes on); a file with no usable
line at all is an error that stops the run before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sftmill.core.errors import RecipeError
from sftmill.core.ids import content_id
from sftmill.core.store import Store
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task


@dataclass(frozen=True)
class Item:
    item_id: str
    instruction: str
    response: str = ""
    source: dict = field(default_factory=dict)  # file, line, earlier lineage


def _from_json(obj: dict) -> tuple[str, str]:
    if "instruction" in obj:
        text = obj["instruction"] + (f"\n\n{obj['input']}" if str(obj.get("input") or "").strip() else "")
        return text, obj.get("output") or ""
    if "prompt" in obj:
        return obj["prompt"], obj.get("response") or ""
    for key, role_key, user, assistant in (("messages", "role", "user", "assistant"),
                                           ("conversations", "from", "human", "gpt")):
        if key in obj:
            turns = obj[key]
            text_key = "content" if key == "messages" else "value"
            users = [t[text_key] for t in turns if t.get(role_key) == user]
            replies = [t[text_key] for t in turns if t.get(role_key) == assistant]
            if not users:
                raise ValueError(f"no {user} turn")
            return users[0], replies[0] if replies else ""
    raise ValueError("no instruction, prompt, messages or conversations field")


def read_items(path: str | Path) -> tuple[list[Item], list[tuple[int, str]]]:
    """The usable items of `path` and the (line number, reason) of the others."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: input file not found")
    items: list[Item] = []
    skipped: list[tuple[int, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        meta: dict = {}
        if path.suffix == ".txt":
            instruction, response = line, ""
        else:
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                instruction, response = _from_json(obj)
                if not isinstance(instruction, str) or not isinstance(response, str):
                    raise ValueError("instruction and response must be strings")
                meta = obj.get("metadata") or {}
            except (ValueError, TypeError, AttributeError, KeyError) as err:
                skipped.append((n, f"unreadable: {err}"))
                continue
        instruction, response = instruction.strip(), response.strip()
        if not instruction:
            skipped.append((n, "empty instruction"))
            continue
        item_id = content_id(instruction, response)
        if item_id in seen:
            skipped.append((n, "duplicate of an earlier line"))
            continue
        seen.add(item_id)
        source = {"file": path.name, "line": n}
        if meta:
            source["earlier"] = meta
        items.append(Item(item_id, instruction, response, source))
    if not items:
        raise RecipeError(f"{path}: no usable instruction in the file"
                          + (f" (line {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    return items, skipped


SCHEMA = {
    "input_items": """
        item_id VARCHAR PRIMARY KEY,
        instruction VARCHAR,
        response VARCHAR,        -- '' when the input had none
        source VARCHAR           -- JSON: file, line, the earlier export's metadata
    """,
}


def file_fingerprint(path: str | Path) -> str:
    return content_id(Path(path).read_bytes().decode("utf-8", errors="replace"))


@stage_task("load_inputs", writes=("input_items",))
def load_inputs(input_path: str, db_path: str, fingerprint: str) -> StageResult:
    """The input file into `input_items`; unusable lines become rejects of
    stage `input` (`fingerprint`, the file's content hash, keys the cache)."""
    store = Store.open(db_path)
    store.ensure_tables(SCHEMA)
    timer = StageTimer(store, "input")
    items, skipped = read_items(input_path)
    store.reject_many("input", [(f"{Path(input_path).name}:{line}", "unusable_input_line", reason,
                                 None) for line, reason in skipped])
    store.replace_rows("input_items", [{"item_id": i.item_id, "instruction": i.instruction,
                                        "response": i.response,
                                        "source": json.dumps(i.source, ensure_ascii=False, default=str)}
                                       for i in items])
    return timer.done(store.ref("input_items", "item_id"), len(items) + len(skipped), len(items),
                      f"{len(skipped)} lines skipped" if skipped else "")
