"""A run folder handed on as it is: `datasets.load_dataset(RUN_DIR)` reads it
through the card's YAML header (offline), and `sftmill export --for` writes
what LLaMA-Factory and TRL read."""

import json
import os
import py_compile
import subprocess
import sys

import pytest
import yaml
from examples import example_recipe

from sftmill.core.hub import size_category, split_header


def test_the_python_api_loads_records_rejects_and_quality(api_run, tmp_path):
    run_dir = api_run
    import sftmill
    from sftmill.core.errors import RecipeError

    data = sftmill.load(run_dir)
    exported = records(run_dir / "dataset.jsonl")
    assert len(data.records) == len(exported) > 0
    assert sorted(json.dumps(r["messages"]) for r in data.records) == \
        sorted(json.dumps(r["messages"]) for r in exported)
    assert all(r["metadata"]["record"]["prompt_id"] for r in data.records)
    assert data.rejects and all(r["reason"] and r["stage"] for r in data.rejects)
    figures = {f["key"]: f for f in data.quality["figures"]}
    assert figures["records"]["value"] == len(exported) and "distinct_2_prompts" in figures
    ds = data.to_dataset()
    assert len(ds) == len(data.records) and json.loads(ds[0]["metadata"]) == data.records[0]["metadata"]
    assert "records" in repr(data)
    bad = yaml.safe_load(example_recipe(tmp_path).read_text())
    bad["sizes"]["target_prompt"] = 10
    with pytest.raises(RecipeError, match="target_prompt"):
        sftmill.run(bad)
    assert not (tmp_path / "run").exists()  # stopped before any work


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_load_dataset_reads_the_run_folder_as_it_is(api_run, monkeypatch):
    run_dir = api_run
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(run_dir.parent / "hf-cache"))
    exported = records(run_dir / "dataset.jsonl")
    loaded = datasets.load_dataset(str(run_dir), split="train")
    assert len(loaded) == len(exported) > 0
    by_prompt = {r["messages"][0]["content"]: r["messages"] for r in exported}
    assert sorted(loaded["prompt"]) == sorted(by_prompt)
    for row in loaded:
        assert row["messages"] == [{"role": m["role"], "content": m["content"]}
                                   for m in by_prompt[row["prompt"]]]
        assert json.loads(row["metadata"])["record"]["prompt_id"] == row["prompt_id"]
    assert any(len(row["messages"]) == 4 for row in loaded)  # a conversation, all its turns

    header, body = split_header((run_dir / "README.md").read_text())
    assert (run_dir / "README.md").read_text() == (run_dir / "card.md").read_text()
    assert body.startswith("# Dataset card: quarks-and-gluons")
    assert header["license"] == "cc-by-4.0" and header["language"] == ["en"]
    assert header["size_categories"] == [size_category(len(exported))] == ["n<1K"]
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "dataset.parquet"}]
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_examples": len(exported)}]
    assert {"name": "messages", "list": [{"name": "role", "dtype": "string"},
                                         {"name": "content", "dtype": "string"}]} \
        in header["dataset_info"]["features"]
    assert "text-generation" in header["task_categories"]


def sftmill(*args):
    done = subprocess.run([sys.executable, "-m", "sftmill.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"})
    return done


def test_export_for_llama_factory_writes_its_dataset_info(api_run):
    run_dir = api_run
    done = sftmill("export", run_dir, "--for", "llama-factory")
    assert done.returncode == 0, done.stderr
    info = json.loads((run_dir / "dataset_info.json").read_text())
    (name, entry), = info.items()
    assert name == "run" and entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "conversations"}
    rows = records(run_dir / entry["file_name"])
    assert len(rows) == len(records(run_dir / "dataset.jsonl"))
    tags = entry["tags"]
    for row in rows:
        turns = row[entry["columns"]["messages"]]
        roles = [t[tags["role_tag"]] for t in turns]
        assert roles == [tags["user_tag"], tags["assistant_tag"]] * (len(turns) // 2)
        assert all(t[tags["content_tag"]] for t in turns)


def test_export_for_trl_writes_messages_and_a_training_script(api_run):
    run_dir = api_run
    import datasets

    out = run_dir.parent / "for-trl"
    out.mkdir()
    done = sftmill("export", run_dir, "--for", "trl", "--out", out)
    assert done.returncode == 0, done.stderr
    py_compile.compile(str(out / "train_trl.py"), doraise=True)
    script = (out / "train_trl.py").read_text()
    assert "SFTTrainer" in script and "dataset.openai.jsonl" in script
    data = datasets.load_dataset("json", data_files=str(out / "dataset.openai.jsonl"),
                                 split="train", cache_dir=str(out / "cache")).select_columns(["messages"])
    assert len(data) > 0
    for row in data:  # TRL's conversational form: a list of role/content messages
        assert [m["role"] for m in row["messages"]][:2] == ["user", "assistant"]
    bad = sftmill("export", run_dir, "--for", "axolotl")
    assert bad.returncode == 2 and "--for: 'axolotl' is not one of llama-factory, trl" in bad.stderr
