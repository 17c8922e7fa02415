"""Sharded runs: one recipe's inputs split into N shards that run as their
own flow runs (flows/shard_flow.py puts them on a work pool), then merged.

- `plan_shards`: the recipe's files are dealt to N shards, largest first to
  the lightest shard (deterministic), and each shard gets a recipe of its
  own — the same recipe with its files as inputs, its own run folder
  `<output_dir>/shards/shard-<k>` (its own DuckDB file, its own call journal
  and caches) and its share of `sizes.target_prompts` by bytes.
- `merge_prompts`: after every shard's prompt flow, near-duplicates *across*
  shards (within a shard the shard's own dedup ran): all shards' prompts in
  one priority order (origin, judge score, shard, prompt ID), each removed
  when it repeats a kept prompt of another shard at `dedup_cosine` or more.
  The decision is written into each shard's `rejects` (stage `shard_merge`,
  reason `near_duplicate`), which the shard's `answerable_prompts` leaves
  out, so its answer flow never pays for them.
- `merge_exports`: every shard's `dataset.jsonl` into one, each record with
  `metadata.shard`, and a card that sums the shards up.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import yaml

from sftmill.core.recipe import Recipe, load_recipe
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder
from sftmill.tasks.report.card import subdomain_section
from sftmill.tasks.report.summary import RECORDS_BY_SUBDOMAIN, shares_of
from sftmill.tasks.sources.documents import expand_source
from sftmill.tasks.stages.dedup import ORIGIN_RANK, new_near_duplicates
from sftmill.tasks.stages.sizing import target_shares

STAGE = "shard_merge"


def shard_dir(recipe: Recipe, k: int) -> Path:
    return recipe.run_dir / "shards" / f"shard-{k}"


def input_files(recipe: Recipe) -> dict[Path, dict]:
    """Every local file the recipe's `path` inputs stand for (URLs: none),
    sorted, each with the table options (text/id column) of its input."""
    files: dict[Path, dict] = {}
    for source in recipe.inputs:
        if source.path is not None:
            options = source.model_dump(exclude={"path", "url"}, exclude_defaults=True)
            for path in expand_source(source, recipe):
                files.setdefault(path.resolve(), options)
    return dict(sorted(files.items()))


def plan_shards(recipe: Recipe, n: int, self_contained: bool = False) -> list[Path]:
    """Write one recipe per shard; their paths, shard 0 first.  Self-contained
    (for object storage): each shard's input files, and the recipe's
    `search.local_dir`, are copied into its folder and named relative to it."""
    if any(source.url for source in recipe.inputs):
        raise ValueError("sharded runs take path inputs only (a URL input cannot be split)")
    files = input_files(recipe)
    if len(files) < n:
        raise ValueError(f"{len(files)} input file(s) cannot make {n} shards")
    sizes = {path: path.stat().st_size for path in files}
    loads, dealt = [0] * n, [[] for _ in range(n)]
    for path in sorted(files, key=lambda p: (-sizes[p], str(p))):
        k = min(range(n), key=lambda i: (loads[i], i))
        loads[k] += sizes[path]
        dealt[k].append(path)
    total = sum(loads) or 1
    data = recipe.model_dump(mode="json", exclude={"base_dir"})
    paths = []
    for k in range(n):
        folder = shard_dir(recipe, k)
        folder.mkdir(parents=True, exist_ok=True)
        shard = json.loads(json.dumps(data))
        shard["name"] = f"{recipe.name}-shard{k}"
        shard["output_dir"] = "."
        shard["inputs"] = [{**files[path], "path": _place(path, folder / "inputs", self_contained)}
                           for path in sorted(dealt[k])]
        shard["sizes"]["target_prompts"] = max(1, math.ceil(recipe.sizes.target_prompts * loads[k] / total))
        if recipe.search.local_dir:  # the shard's recipe lives elsewhere
            shard["search"]["local_dir"] = _place(recipe.resolve(recipe.search.local_dir).resolve(),
                                                  folder / "search", self_contained)
        # (curation's benchmark files are absolute already: the loader resolved them)
        path = folder / "recipe.yaml"
        path.write_text(f"# shard {k} of {n} of {recipe.name} (sftmill sharded run; made, not edited)\n"
                        + yaml.safe_dump(shard, sort_keys=False))
        paths.append(path)
    return paths


def _place(path: Path, into: Path, copy: bool) -> str:
    """How a shard's recipe names a file or folder: absolute, or (`copy`)
    copied into `into` and relative to the shard's folder."""
    if not copy:
        return str(path)
    if path.is_dir():
        shutil.copytree(path, into, dirs_exist_ok=True)
        return into.name
    into.mkdir(parents=True, exist_ok=True)
    target, n = into / path.name, 1
    while target.exists() and target.read_bytes() != path.read_bytes():  # a name met twice
        target, n = into / f"{path.stem}-{n}{path.suffix}", n + 1
    shutil.copyfile(path, target)
    return str(target.relative_to(into.parent))


def merge_prompts(recipe: Recipe, shard_recipes: list[Path]) -> dict:
    """Remove near-duplicates across shards; the counts."""
    rows, vectors = [], []
    for k, path in enumerate(shard_recipes):
        shard = load_recipe(path)
        store = Store.open(shard.db_path)
        store.execute("DELETE FROM rejects WHERE stage = ?", [STAGE])  # a rerun decides afresh
        found = store.query_dicts("SELECT prompt_id, text, origin, quality FROM prompts")
        rows += [{**r, "shard": k} for r in found]
        vectors.append(Embedder(shard.dedup_embedding or shard.embedding, store).embed(  # from its cache
            [r["text"] for r in found]))
        Store.close_all()
    order = sorted(range(len(rows)), key=lambda i: (ORIGIN_RANK.get(rows[i]["origin"], 9),
                                                    -(rows[i]["quality"] or 0), rows[i]["shard"],
                                                    rows[i]["prompt_id"]))
    rows = [rows[i] for i in order]
    matrix = np.vstack(vectors)[order] if rows else np.zeros((0, 1), dtype=np.float32)
    removed = new_near_duplicates(matrix[:0], matrix, recipe.thresholds.dedup_cosine,
                                  new_groups=[r["shard"] for r in rows]) if rows else {}
    per_shard = {k: [] for k in range(len(shard_recipes))}
    for j, (_which, i, sim) in removed.items():
        kept, dropped = rows[i], rows[j]
        per_shard[dropped["shard"]].append(
            (dropped["prompt_id"], "near_duplicate",
             f"cosine {sim:.3f} to shard {kept['shard']} {kept['prompt_id']}: {kept['text'][:120]}", sim))
    for k, path in enumerate(shard_recipes):
        if per_shard[k]:
            store = Store.open(load_recipe(path).db_path)
            store.reject_many(STAGE, per_shard[k])
            Store.close_all()
    return {"prompts": len(rows), "removed_across_shards": len(removed),
            "per_shard": {k: len(v) for k, v in per_shard.items()}}


def merge_exports(recipe: Recipe, shard_recipes: list[Path], merged: dict | None = None) -> dict:
    """`dataset.jsonl` and `card.md` of the whole run from its shards'."""
    out = recipe.run_dir
    out.mkdir(parents=True, exist_ok=True)
    counts, n, by_subdomain = [], 0, {}
    with (out / "dataset.jsonl.tmp").open("w") as sink:
        for k, path in enumerate(shard_recipes):
            shard = load_recipe(path)
            exported = shard.run_dir / "dataset.jsonl"
            if not exported.exists():
                raise FileNotFoundError(f"shard {k} has no export yet: {exported}")
            lines = [json.loads(line) for line in exported.read_text().splitlines() if line.strip()]
            for record in lines:
                record.setdefault("metadata", {})["shard"] = k
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts.append((k, shard, len(lines)))
            n += len(lines)
            store = Store.open(shard.db_path)
            for name, count in store.execute(RECORDS_BY_SUBDOMAIN):
                by_subdomain[name] = by_subdomain.get(name, 0) + count
            Store.close_all()
    (out / "dataset.jsonl.tmp").replace(out / "dataset.jsonl")
    lines = [f"# {recipe.name}: dataset card (sharded run, {len(shard_recipes)} shards)", "",
             f"{n} records in `dataset.jsonl`, each with `metadata.shard`; every shard's own card "
             "(samples, stages, reject reasons) is in its folder.", ""]
    if merged:
        lines += [f"Near-duplicates across shards: {merged['removed_across_shards']} of "
                  f"{merged['prompts']} prompts removed before answering (cosine ≥ "
                  f"{recipe.thresholds.dedup_cosine}).", ""]
    lines += ["| shard | input files | records | card |", "|---|---|---|---|"]
    for k, shard, count in counts:
        lines.append(f"| {k} | {len(shard.inputs)} | {count} | "
                     f"[shards/shard-{k}/card.md](shards/shard-{k}/card.md) |")
    # Each shard aimed at its share of every subdomain; the whole run's balance:
    lines += ["", *subdomain_section(shares_of(by_subdomain, target_shares(recipe)))]
    (out / "card.md").write_text("\n".join(lines) + "\n")
    return {"records": n, "per_shard": {k: c for k, _, c in counts}}
