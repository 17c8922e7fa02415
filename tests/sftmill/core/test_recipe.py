import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sftmill.core.errors import RecipeError
from sftmill.core.recipe import load_recipe

MINIMAL = """
name: t
output_dir: out
domain: {name: Physics}
inputs:
  - path: docs
search: {backend: none}
"""


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "a.txt").write_text("quarks and gluons " * 20)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(body))
    return recipe


def test_minimal_recipe_gets_defaults_and_resolves_paths(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.run_dir == tmp_path / "out"
    assert recipe.llm.generator.backend == "embedded"
    assert recipe.llm.generator.max_concurrency == 16
    assert recipe.embedding.model == "all-MiniLM-L6-v2"


@pytest.mark.parametrize("body, expected", [
    (MINIMAL + "colour: red\n", "colour: unknown key"),
    (MINIMAL + "sizes: {target_prompts: many}\n", "sizes.target_prompts: Input should be a valid integer"),
    (MINIMAL.replace("path: docs", "path: nowhere"), "inputs[0].path: does not exist"),
    (MINIMAL.replace("path: docs", "path: 'docs/*.pdf'"), "inputs[0].path: glob matches no file"),
    (MINIMAL + "llm: {judge: {backend: openai}}\n", "llm.judge: Value error, backend 'openai' needs base_url"),
    (MINIMAL + "llm: {judge: {backend: openai, base_url: 'http://x/v1', api_key: sk-123}}\n",
     "llm.judge.api_key: unknown key"),
    (MINIMAL + "llm: {judge: {backend: openai, base_url: 'http://x/v1', api_key_env: SFTMILL_NO_SUCH_VAR}}\n",
     "environment variable SFTMILL_NO_SUCH_VAR is not set"),
    (MINIMAL.replace("domain: {name: Physics}", ""), "domain: required key is missing"),
    (MINIMAL + "schedule: {cron: 'daily'}\n", "schedule: Value error, cron needs 5 fields"),
    (MINIMAL.replace("backend: none", "backend: local"), "search.local_dir: required"),
    (MINIMAL.replace("backend: none", "backend: brave, api_key_env: SFTMILL_NO_SUCH_VAR"),
     "search.api_key_env: environment variable SFTMILL_NO_SUCH_VAR is not set"),
    ("name: [unclosed", "not valid YAML"),
])
def test_bad_recipe_names_the_problem_in_one_line(tmp_path, body, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, body))
    message = str(err.value)
    assert expected.replace("[0]", "") in message.replace(".0.", ".").replace("[0]", ""), message
    assert "\n" not in message


def test_fingerprint_follows_only_the_named_sections(tmp_path):
    a = load_recipe(write(tmp_path, MINIMAL))
    b = load_recipe(write(tmp_path, MINIMAL + "thresholds: {relevance: 0.9}\n"))
    assert a.fingerprint("chunking") == b.fingerprint("chunking")
    assert a.fingerprint("thresholds") != b.fingerprint("thresholds")


def test_cli_on_broken_recipe_exits_nonzero_with_one_line(tmp_path):
    recipe = write(tmp_path, MINIMAL.replace("path: docs", "path: missing-folder"))
    proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "run", str(recipe)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "inputs[0].path: does not exist" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_reports_unreachable_endpoint_before_work(tmp_path):
    recipe = write(tmp_path, MINIMAL + "llm: {generator: {backend: openai, base_url: 'http://127.0.0.1:9/v1'}}\n")
    proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "run", str(recipe)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "llm.generator: cannot reach http://127.0.0.1:9/v1/models" in proc.stderr
    assert not (tmp_path / "out").exists()
