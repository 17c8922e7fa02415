"""`sftmill run` with `batch: true` endpoints against the local
Batch API server of tests/fake_openai.py: a run killed between a batch's
submission and its results resumes that batch instead of paying for its
requests again, and ends with the records of the online path."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
import yaml
from fake_openai import FakeOpenAI
from prefect_homes import served_env

ROOT = Path(__file__).resolve().parents[2]


def write_recipe(tmp_path: Path, server: FakeOpenAI, name: str, batch: bool) -> Path:
    if not (tmp_path / "corpus").exists():
        shutil.copytree(ROOT / "data" / "example" / "corpus", tmp_path / "corpus")
    data = yaml.safe_load((ROOT / "data" / "example" / "recipe.yaml").read_text())
    endpoint = {"backend": "openai", "base_url": server.url, "model": "fake"}
    if batch:
        endpoint.update(batch=True, batch_poll_s=0.05, batch_min=1)
    data.update(output_dir=name, search={"backend": "none"},
                llm={"generator": endpoint, "judge": endpoint})
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(data))
    return recipe


def start(recipe: Path, home: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, **served_env(home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "sftmill.cli", "run", str(recipe)],
                            env=env, start_new_session=True, text=True, **kwargs)


def finish(recipe: Path, home: Path) -> None:
    run = start(recipe, home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-3000:]


def records(run_dir: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (run_dir / "dataset.jsonl").read_text().splitlines()]
    return sorted((r["messages"][0]["content"], r["messages"][-1]["content"]) for r in rows)


def query(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture
def server():
    fake = FakeOpenAI(delay_s=0.0)
    yield fake
    fake.close()


def test_a_batch_run_killed_while_its_batch_runs_resumes_it_and_gives_the_online_records(
        server, tmp_path):
    home = tmp_path / "prefect-home"
    finish(write_recipe(tmp_path, server, "online", batch=False), home)
    online_calls = list(server.keys)
    assert online_calls

    recipe = write_recipe(tmp_path, server, "batch", batch=True)
    server.batch_release.clear()  # batches stay in progress until released
    first = start(recipe, home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not server.batches and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # its ID recorded, polling
    assert first.poll() is None, "the run ended before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    (held,) = server.batches
    db = tmp_path / "batch" / "sftmill.duckdb"
    assert query(db, "SELECT batch_id FROM llm_batches") == [(held,)]

    server.batch_release.set()
    finish(recipe, home)
    assert server.keys == online_calls  # the batch run sent nothing online
    inputs = [b["input_file_id"] for b in server.batches.values()]
    submitted = Counter(json.loads(line)["custom_id"] for file_id in inputs
                        for line in server.files[file_id].splitlines())
    assert all(n == 1 for n in submitted.values()), "a request was submitted twice"
    assert Counter(server.batch_keys) == Counter(online_calls)  # the same requests, each once
    assert server.batches[held]["status"] == "completed"
    assert query(db, f"SELECT status FROM llm_batches WHERE batch_id = '{held}'") == [("completed",)]
    stages = {s for s, in query(db, "SELECT stage FROM llm_batches WHERE status = 'completed'")}
    assert {"relevance", "profile", "answer"} <= stages
    assert query(db, "SELECT DISTINCT backend FROM llm_calls") == [("openai-batch",)]
    assert records(tmp_path / "batch") == records(tmp_path / "online")
