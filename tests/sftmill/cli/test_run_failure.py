"""A run that fails as users meet it (its LLM endpoint goes away for good):
the console ends with one line naming the cause, the hint and the run's log
file, and holds no Python traceback; the tracebacks are in the log file."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from fake_openai import FakeOpenAI
from prefect_homes import served_env

ROOT = Path(__file__).resolve().parents[3]


def test_an_endpoint_gone_for_good_ends_in_one_line_and_the_tracebacks_go_to_the_log(tmp_path):
    llm = FakeOpenAI(delay_s=0.0, down_after=5)  # relevance's sixth call on: 503, for good
    try:
        (tmp_path / "corpus").mkdir()
        for name in ("quarks.md", "gluons.md"):
            shutil.copy(ROOT / "data" / "example" / "corpus" / name, tmp_path / "corpus" / name)
        data = yaml.safe_load((ROOT / "data" / "example" / "recipe.yaml").read_text())
        endpoint = {"backend": "openai", "base_url": llm.url, "model": "fake", "max_retries": 0}
        data.update(output_dir="run", search={"backend": "none"},
                    llm={"generator": endpoint, "judge": endpoint})
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))
        env = {**os.environ, **served_env(tmp_path / "home"), "SFTMILL_TASK_RETRY_DELAYS": "0"}
        proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "run", str(tmp_path / "recipe.yaml")],
                              capture_output=True, text=True, env=env, timeout=600)
    finally:
        llm.close()
    console = proc.stdout + proc.stderr
    assert proc.returncode == 1, console[-3000:]
    assert "Traceback" not in console, console[-3000:]
    last = console.strip().splitlines()[-1]
    log = tmp_path / "run" / "sftmill.log"
    assert last.startswith("error: run failed:") and f"(details in {log})" in last, last
    assert "run the same command again to resume" in last
    assert "Traceback (most recent call last)" in log.read_text()
