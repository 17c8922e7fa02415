"""`sftmill mix`: several datasets — run folders or dataset
files — into one, with target weights by source (or by a metadata field
such as `subdomain`), near duplicates removed across sources, the mix
curated, every record keeping its own lineage.

Steps: each source's records go into one `dataset` table (metadata: the
record's own lineage plus `mix.source`); curation scores and decides the
whole mix (its near-duplicate check compares records of every source); then
`select` keeps, per group, the share the weights ask for: the largest total
the curated records allow (or `total`, if smaller), split by the weights
with largest remainders, so each group lands within one record of its
target.  Records over their group's share are left out with reason
`over_weight` (stage `mix`), so they are counted, not lost.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from sftmill.core.errors import RecipeError
from sftmill.core.ids import content_id
from sftmill.core.markdown import markdown_table
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store
from sftmill.tasks.sources.pairs import read_items
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task

STAGE = "mix"
META_KEY = "mix"


@dataclass(frozen=True)
class Source:
    name: str
    path: Path  # a dataset file

    @classmethod
    def parse(cls, spec: str) -> "Source":
        """`NAME=PATH` or `PATH`; a run folder stands for its dataset.jsonl."""
        name, _, where = spec.rpartition("=")
        path = Path(where)
        if path.is_dir():
            path = path / "dataset.jsonl"
        if not path.is_file():
            raise RecipeError(f"{spec}: no dataset file there")
        return cls(name or (path.parent.name if path.name == "dataset.jsonl" else path.stem), path)


def parse_weights(text: str | None, names: list[str]) -> dict[str, float]:
    """`a=2,b=1` → shares summing to 1 (none given: equal weights)."""
    if not text:
        if not names:
            raise RecipeError("--weights: give the target share of each group (NAME=W,…)")
        return {n: 1 / len(names) for n in names}
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise RecipeError(f"--weights: {part!r} is not NAME=NUMBER") from None
    if any(w < 0 for w in weights.values()) or not sum(weights.values()):
        raise RecipeError("--weights: weights must be ≥ 0 and not all 0")
    total = sum(weights.values())
    return {n: w / total for n, w in weights.items()}


def load_sources(store: Store, sources: list[Source]) -> int:
    """Every source's records into `dataset` (replacing an earlier mix's);
    the same text in two sources stays twice (curation decides)."""
    rows = []
    for source in sources:
        items, _skipped = read_items(source.path)
        for item in items:
            earlier = dict(item.source.get("earlier") or {})
            meta = {**earlier, "mix": {"source": source.name, "file": str(source.path),
                                       "line": item.source.get("line")}}
            record_id = content_id(source.name, item.instruction, item.response)
            rows.append({"record_id": record_id, "prompt_id": record_id, "answer_id": record_id,
                         "prompt": item.instruction, "answer": item.response, "grounded": False,
                         "metadata": json.dumps(meta, ensure_ascii=False, default=str)})
    return store.replace_rows("dataset", rows)


# Where sftmill's own exports keep the fields one mixes by: `--by subdomain` finds a
# pipeline record's `profile.subdomain`.  Any other field is a dotted path into the metadata.
EXPORTED_AT = {"subdomain": ("profile.subdomain",), "task_type": ("record.task_type",)}


def field_of(meta: dict, path: str):
    """The value at a dotted `path` of the metadata (None when it is not there)."""
    value = meta
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def group_of(meta: dict, by: str) -> str:
    """A mixed record's group: its source, or its metadata field `by`."""
    if by == "source":
        return meta["mix"]["source"]
    for path in (by, *EXPORTED_AT.get(by, ())):
        value = field_of(meta, path)
        if value not in (None, ""):
            return str(value)
    return "(none)"


def check_groups(sources: list[Source], weights: dict[str, float], by: str) -> None:
    """RecipeError when a source cannot be read, or when a weight names a
    group no source's record is in (the mix would come out empty)."""
    items = {s.name: read_items(s.path)[0] for s in sources}
    if by == "source":
        present = set(items)
    else:
        present = {group_of(item.source.get("earlier") or {}, by)
                   for source_items in items.values() for item in source_items}
    unknown = sorted(set(weights) - present)
    if unknown:
        kind = "source named" if by == "source" else f"record with {by}"
        raise RecipeError(f"--weights: no {kind} {unknown[0]!r} "
                          f"(found: {', '.join(sorted(present)) or 'none'})")


def shares_of(weights: dict[str, float], available: dict[str, int], total: int | None) -> dict[str, int]:
    """Records per group: the largest total every weighted group can fill
    (at most `total`), split by largest remainders."""
    wanted = {g: w for g, w in weights.items() if w > 0}
    most = min((available.get(g, 0) / w for g, w in wanted.items()), default=0)
    n = math.floor(most + 1e-9) if total is None else min(total, math.floor(most + 1e-9))
    exact = {g: n * w for g, w in wanted.items()}
    counts = {g: math.floor(x) for g, x in exact.items()}
    for g in sorted(exact, key=lambda g: (-(exact[g] - counts[g]), g))[:n - sum(counts.values())]:
        counts[g] += 1
    return {g: min(c, available.get(g, 0)) for g, c in counts.items()}


def select(store: Store, weights: dict[str, float], by: str, total: int | None,
           seed: int) -> dict[str, dict]:
    """Leave out, per group, the curated records over its share; return the
    mix table (target share, available, selected) by group."""
    store.execute("DELETE FROM rejects WHERE stage = ?", [STAGE])
    kept = store.query_dicts(f"SELECT record_id, metadata FROM {KEPT_DATASET} ORDER BY record_id")
    # (the earlier selection's over_weight rows were deleted above: all curated records count)
    groups: dict[str, list[str]] = {}
    for row in kept:
        groups.setdefault(group_of(json.loads(row["metadata"]), by), []).append(row["record_id"])
    counts = shares_of(weights, {g: len(ids) for g, ids in groups.items()}, total)
    rng = random.Random(seed)
    drops = []
    for group, ids in groups.items():
        rng.shuffle(ids)
        take = counts.get(group, 0)
        drops += [(i, "over_weight", f"{by} {group}: {take} of {len(ids)} taken for weight "
                   f"{weights.get(group, 0):.3g}", None) for i in ids[take:]]
    store.reject_many(STAGE, drops)
    selected = sum(counts.values())
    table = {g: {"target": weights.get(g, 0.0), "available": len(groups.get(g, [])),
                 "selected": counts.get(g, 0),
                 "actual": counts.get(g, 0) / selected if selected else 0.0}
             for g in sorted(set(weights) | set(groups))}
    store.set_meta(META_KEY, json.dumps({"by": by, "groups": table}))
    return table


@stage_task("mix_load", writes=("dataset",))
def mix_load(db_path: str, sources: list[str], fingerprints: list[str]) -> StageResult:
    """The sources' records into `dataset` (`fingerprints`: their files' content, for the cache)."""
    store = Store.open(db_path)
    timer = StageTimer(store, "dataset")
    n = load_sources(store, [Source.parse(s) for s in sources])
    return timer.done(store.ref("dataset", "record_id"), n, n, f"{len(sources)} sources")


@stage_task("mix", cached=False, reads=("dataset",))
def mix_select(weights: dict[str, float], by: str, total: int | None, seed: int,
               curated: StageResult) -> StageResult:
    store = Store.open(curated.out.db_path)
    timer = StageTimer(store, STAGE)
    table = select(store, weights, by, total, seed)
    selected = sum(g["selected"] for g in table.values())
    return timer.done(curated.out, curated.n_out, selected,
                      ", ".join(f"{g} {t['selected']}" for g, t in table.items()))


def mix_section(store: Store) -> list[str]:
    """The card's mix table: per group its target share, the curated records
    it had, how many were taken and the share they make."""
    raw = store.get_meta(META_KEY)
    if not raw:
        return []
    mixed = json.loads(raw)

    return [f"## Mix by {mixed['by']}",
            markdown_table([mixed["by"], "target", "after curation", "selected", "actual"],
                   [[g, f"{t['target']:.1%}", t["available"], t["selected"], f"{t['actual']:.1%}"]
                    for g, t in mixed["groups"].items()])]
