"""`sftmill run` with its output going to a file (nohup, CI, a scheduler's
log): each stage says when it starts and how far it is while the run goes
on, and the summary's tables are whole."""

import os
import subprocess
import sys
import time

from examples import example_recipe
from fake_openai import FakeOpenAI
from prefect_homes import served_env

MODEL = "a-served-model-with-a-rather-long-name"


def test_a_run_logged_to_a_file_shows_each_stage_as_it_goes(tmp_path):
    server = FakeOpenAI(delay_s=0.2)
    try:
        endpoint = {"backend": "openai", "base_url": server.url, "model": MODEL, "max_concurrency": 4}
        recipe = example_recipe(tmp_path, llm={"generator": endpoint, "judge": endpoint},
                                search={"backend": "none"}, sizes={"target_prompts": 40})
        env = {**os.environ, **served_env(tmp_path / "prefect"), "SFTMILL_PROGRESS_SECONDS": "1"}
        log = tmp_path / "run.log"
        seen_while_running = ""
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "sftmill.cli", "run", str(recipe)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
            while proc.poll() is None:
                text = log.read_text()
                if "answer: started" in text and proc.poll() is None:
                    seen_while_running = text
                time.sleep(0.2)
        text = log.read_text()
    finally:
        server.close()
    assert proc.returncode == 0, text[-3000:]
    # written as the run went on, not at its end
    for stage in ("collect", "chunk", "relevance", "profile", "generate", "prompt_filter", "dedup",
                  "answer"):
        assert f" {stage}: started" in seen_while_running, seen_while_running[-3000:]
    assert "relevance: " in seen_while_running and " items" in seen_while_running
    # a line with done/total, the requests per second and an ETA on a stage of many calls
    assert any(" · ETA " in line and "req/s" in line for line in seen_while_running.splitlines())
    # the summary's tables whole: the model's name and every column, nothing cut with "…"
    rows = [line for line in text.splitlines() if line.startswith(("│", "┃"))]
    assert rows and not [row for row in rows if "…" in row]
    assert any(MODEL in row for row in rows) and any("tokens out" in row for row in rows)
