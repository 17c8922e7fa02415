"""Checks before any work: a recipe whose benchmark file yields no question stops
with one line naming the file and the fields tried."""

import json

import pytest

from sftmill.core.errors import RecipeError
from sftmill.core.recipe import parse_recipe
from sftmill.tasks.preflight import preflight


def test_a_benchmark_without_questions_stops_the_pipeline_before_work(tmp_path):
    (tmp_path / "a.txt").write_text("Quarks are bound by gluons.")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"passage": "Quarks.", "label": 1}) + "\n")
    recipe = parse_recipe({"name": "t", "output_dir": "run", "inputs": [{"path": "a.txt"}],
                           "search": {"backend": "none"}, "domain": {"name": "Physics"},
                           "curation": {"decontamination": {"benchmarks": ["eval.jsonl"]}}}, tmp_path)
    with pytest.raises(RecipeError, match=r"^curation\.decontamination\.benchmarks\[0\]: no question "
                       r"could be read from .*eval\.jsonl \(fields tried: question"):
        preflight(recipe)


def test_embedded_perplexities_without_llama_cpp_python_stop_before_work(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else find_spec(name, *a))
    (tmp_path / "a.txt").write_text("Quarks are bound by gluons.")
    recipe = parse_recipe({"name": "t", "output_dir": "run", "inputs": [{"path": "a.txt"}],
                           "search": {"backend": "none"}, "domain": {"name": "Physics"},
                           "curation": {"fluency": {"enabled": True}}}, tmp_path)
    with pytest.raises(RecipeError, match=r"^curation\.fluency: embedded perplexities need "
                       r"llama-cpp-python \(pip install 'sftmill\[fluency\]'"):
        preflight(recipe)


def test_an_output_folder_without_room_for_a_first_chunk_stops_before_work(tmp_path, monkeypatch):
    import sftmill.core.files as files

    monkeypatch.setattr(files, "free_bytes", lambda path: 2**20)
    (tmp_path / "a.txt").write_text("Quarks are bound by gluons.")
    recipe = parse_recipe({"name": "t", "output_dir": "run", "inputs": [{"path": "a.txt"}],
                           "search": {"backend": "none"}, "domain": {"name": "Physics"}}, tmp_path)
    with pytest.raises(RecipeError, match=r"^output_dir: disk space: .*run has 1\.0 MB free; a run's "
                       r"first 500 calls could need \d+\.\d MB\. Finished work is kept"):
        preflight(recipe)
