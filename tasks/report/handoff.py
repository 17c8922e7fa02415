"""Hand a run's dataset to a trainer as it expects it (`sftmill export --for`).

    llama-factory   the records in ShareGPT form (`dataset.sharegpt.jsonl`) and
                    `dataset_info.json` naming it, so LLaMA-Factory reads the
                    folder as its `dataset_dir` (`dataset: <name>`).  A trace
                    of a reasoning model goes inline (`<think>…</think>`),
                    the form LLaMA-Factory's reasoning templates read.
    trl             the records as OpenAI `messages` (`dataset.openai.jsonl`)
                    and `train_trl.py`, a short script that fine-tunes a model
                    on them with TRL's SFTTrainer (conversational format).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sftmill.core.files import write_atomic
from sftmill.core.store import Store
from sftmill.tasks.report.export import export_jsonl

TRAINERS = ("llama-factory", "trl")

TRL_SCRIPT = '''"""Fine-tune a model on {name} ({n} records) with TRL's SFTTrainer.

    pip install trl
    python train_trl.py --model Qwen/Qwen2.5-0.5B-Instruct --out {name}-sft

Written by `sftmill export --for trl`: the records are in dataset.openai.jsonl
beside this file, one conversation per line as OpenAI messages.
"""

import argparse
from pathlib import Path

from datasets import load_dataset
from trl import SFTConfig, SFTTrainer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="a chat model on the Hub")
parser.add_argument("--out", default="{name}-sft", help="where the fine-tuned model goes")
parser.add_argument("--epochs", type=float, default=2.0)
parser.add_argument("--lr", type=float, default=2e-5)
args = parser.parse_args()

data = load_dataset("json", data_files=str(Path(__file__).with_name("dataset.openai.jsonl")),
                    split="train").select_columns(["messages"])
config = SFTConfig(output_dir=args.out, num_train_epochs=args.epochs, learning_rate=args.lr,
                   per_device_train_batch_size=4, gradient_accumulation_steps=4,
                   logging_steps=10, save_strategy="epoch")
trainer = SFTTrainer(model=args.model, train_dataset=data, args=config)
trainer.train()
trainer.save_model(args.out)
'''


def dataset_name(name: str) -> str:
    """A name LLaMA-Factory and a file system take: lower case, [a-z0-9_-]."""
    return re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_") or "sftmill"


def for_llama_factory(store: Store, out_dir: Path, name: str) -> list[Path]:
    data = out_dir / "dataset.sharegpt.jsonl"
    export_jsonl(store, "sharegpt", data, reasoning="inline")
    info = {dataset_name(name): {
        "file_name": data.name, "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                 "assistant_tag": "gpt"}}}
    write_atomic(out_dir / "dataset_info.json",
                 [json.dumps(info, indent=2, ensure_ascii=False).encode() + b"\n"])
    return [data, out_dir / "dataset_info.json"]


def for_trl(store: Store, out_dir: Path, name: str, reasoning: str = "field") -> list[Path]:
    data = out_dir / "dataset.openai.jsonl"
    n = export_jsonl(store, "openai", data, reasoning=reasoning)
    script = out_dir / "train_trl.py"
    write_atomic(script, [TRL_SCRIPT.format(name=dataset_name(name), n=n).encode()])
    return [data, script]


def hand_off(store: Store, trainer: str, out_dir: Path, name: str, reasoning: str = "field") -> list[Path]:
    """The files `trainer` needs, written into `out_dir`."""
    if trainer == "llama-factory":
        return for_llama_factory(store, out_dir, name)
    if trainer == "trl":
        return for_trl(store, out_dir, name, reasoning)
    raise ValueError(f"unknown trainer {trainer!r}; choose one of {', '.join(TRAINERS)}")
