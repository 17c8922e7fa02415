"""Sharded runs, the plain functions: planning shards, near-duplicates
across shards, merging the exports (the flow on a work pool:
tests/flows/test_sharded_pool.py)."""

import json

import numpy as np
import yaml
from examples import example_recipe

from sftmill.core.endpoints import Embedding
from sftmill.core.recipe import load_recipe
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder, text_hash
from sftmill.tasks import shard


def test_plan_deals_every_file_once_and_balances_bytes(tmp_path):
    recipe = load_recipe(example_recipe(tmp_path, sizes={"target_prompts": 100}))
    paths = shard.plan_shards(recipe, 3)
    shards = [load_recipe(p) for p in paths]
    files = [s.path for r in shards for s in r.inputs]
    assert sorted(files) == [str(p) for p in shard.input_files(recipe)]  # each file once
    assert len({r.db_path for r in shards}) == 3
    assert all(r.run_dir == tmp_path / "run" / "shards" / f"shard-{k}" for k, r in enumerate(shards))
    sizes = [sum((tmp_path / "corpus" / p.rsplit("/", 1)[1]).stat().st_size
                 for p in (s.path for s in r.inputs)) for r in shards]
    assert max(sizes) - min(sizes) <= max((tmp_path / "corpus").glob("*"),
                                          key=lambda p: p.stat().st_size).stat().st_size
    assert 100 <= sum(r.sizes.target_prompts for r in shards) <= 103  # shares by bytes, rounded up
    assert shards[0].name == f"{recipe.name}-shard0" and shards[0].domain == recipe.domain
    assert shard.plan_shards(recipe, 3) == paths  # deterministic; the same files again
    assert [load_recipe(p).inputs for p in paths] == [r.inputs for r in shards]


def test_plan_refuses_what_cannot_be_sharded(tmp_path):
    recipe = load_recipe(example_recipe(tmp_path))
    n_files = len(shard.input_files(recipe))
    try:
        shard.plan_shards(recipe, n_files + 1)
    except ValueError as err:
        assert f"{n_files} input file(s) cannot make {n_files + 1} shards" in str(err)
    else:
        raise AssertionError("planned more shards than files")


def test_a_self_contained_plan_copies_each_shards_files_into_its_folder(tmp_path):
    """For object storage: a shard's folder is all its worker needs (a name
    met twice with other content is told apart)."""
    recipe_path = example_recipe(tmp_path, sizes={"target_prompts": 100})
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "quarks.md").write_text("Other notes on quarks, under the same name.\n" * 30)
    data = yaml.safe_load(recipe_path.read_text())
    data["inputs"].append({"path": "more/*.md"})
    recipe_path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(recipe_path)
    paths = shard.plan_shards(recipe, 1, self_contained=True)
    planned = yaml.safe_load(paths[0].read_text())
    names = [i["path"] for i in planned["inputs"]]
    assert all(n.startswith("inputs/") for n in names) and len(set(names)) == len(shard.input_files(recipe))
    assert {"inputs/quarks.md", "inputs/quarks-1.md"} <= set(names)
    copied = load_recipe(paths[0])  # loads where it stands: every input is in its folder
    texts = sorted((paths[0].parent / n).read_text() for n in names)
    assert texts == sorted(p.read_text() for p in shard.input_files(recipe))
    assert copied.inputs[0].path == names[0]
    assert recipe.search.local_dir and planned["search"]["local_dir"] == "search"  # the web pages too
    assert sorted(p.name for p in (paths[0].parent / "search").iterdir()) == sorted(
        p.name for p in recipe.resolve(recipe.search.local_dir).iterdir())


def test_sharded_params_take_an_object_storage_url_only():
    import pytest
    from pydantic import ValidationError

    from sftmill.flows.shard_flow import ShardParams

    assert ShardParams(recipe_path="r.yaml", storage="s3://b/runs/x").storage == "s3://b/runs/x"
    with pytest.raises(ValidationError, match="object-storage URL"):
        ShardParams(recipe_path="r.yaml", storage="/shared/runs/x")


def _shard_with_prompts(path, k, texts, vectors):
    store = Store.open(load_recipe(path).db_path)
    store.insert("prompts", [{"prompt_id": f"s{k}p{i}", "text": t, "origin": "generated",
                              "quality": 4.0, "doc_id": f"d{k}"} for i, t in enumerate(texts)])
    Embedder(Embedding(), store)._keep([(text_hash(t), v) for t, v in zip(texts, vectors)], {})  # cached


def test_merge_removes_near_duplicates_across_shards_only(tmp_path):
    recipe = load_recipe(example_recipe(tmp_path))
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    a, b, c = unit(rng.normal(size=(3, 384)))
    near_a = unit(a + 0.05 * unit(rng.normal(size=384)))
    paths = shard.plan_shards(recipe, 2)
    _shard_with_prompts(paths[0], 0, ["A", "B", "A again, in shard 0"], [a, b, near_a])
    _shard_with_prompts(paths[1], 1, ["A, in shard 1", "C"], [near_a, c])
    Store.close_all()

    counts = shard.merge_prompts(recipe, paths)
    assert counts == {"prompts": 5, "removed_across_shards": 1, "per_shard": {0: 0, 1: 1}}
    one = Store.open(load_recipe(paths[1]).db_path)
    (reason, detail), = one.execute("SELECT reason, detail FROM rejects WHERE stage = 'shard_merge'")
    assert reason == "near_duplicate" and "to shard 0 s0p" in detail
    assert [r[0] for r in one.execute("SELECT text FROM answerable_prompts ORDER BY text")] == ["C"]
    zero = Store.open(load_recipe(paths[0]).db_path)
    assert zero.count("answerable_prompts") == 3  # within a shard, the shard's own dedup decides
    Store.close_all()
    assert shard.merge_prompts(recipe, paths) == counts  # a rerun decides the same, afresh


def test_merge_exports_tags_records_with_their_shard(tmp_path):
    recipe = load_recipe(example_recipe(tmp_path))
    paths = shard.plan_shards(recipe, 2)
    subdomains = [["quarks", "gluons"], ["quarks", "quarks", "gluons"]]  # the records' prompts'
    for k, path in enumerate(paths):
        (path.parent / "dataset.jsonl").write_text("".join(
            json.dumps({"messages": [], "metadata": {"source": {"uri": f"doc{k}-{i}"}}}) + "\n"
            for i in range(k + 2)))
        store = Store.open(load_recipe(path).db_path)
        store.insert("prompts", [{"prompt_id": f"s{k}p{i}", "text": f"p{k}{i}", "subdomain": sub}
                                 for i, sub in enumerate(subdomains[k])])
        store.insert("dataset", [{"record_id": f"s{k}r{i}", "prompt_id": f"s{k}p{i}"}
                                 for i in range(len(subdomains[k]))])
        Store.close_all()
    out = shard.merge_exports(recipe, paths, {"prompts": 9, "removed_across_shards": 2})
    assert out == {"records": 5, "per_shard": {0: 2, 1: 3}}
    records = [json.loads(x) for x in (recipe.run_dir / "dataset.jsonl").read_text().splitlines()]
    assert [r["metadata"]["shard"] for r in records] == [0, 0, 1, 1, 1]
    card = (recipe.run_dir / "card.md").read_text()
    assert "5 records" in card and "2 of 9 prompts removed" in card and "shards/shard-1/card.md" in card
    assert "| quarks |" in card and "| 3 |" in card.split("| quarks |")[1].split("\n")[0]  # 3 of 5 over shards
    assert "60%" in card.split("| quarks |")[1].split("\n")[0]
    assert yaml.safe_load(paths[0].read_text())["output_dir"] == "."
