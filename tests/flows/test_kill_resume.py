"""A run killed (SIGKILL) in the middle of an LLM stage and started again
finishes without sending again the LLM calls that had completed — also the
ones still in the call journal, not yet merged into `llm_calls`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import yaml
from fake_openai import FakeOpenAI
from prefect_homes import served_env

ROOT = Path(__file__).resolve().parents[2]


def start_run(recipe: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, **served_env(home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "sftmill.cli", "run", str(recipe)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)


def ok_calls(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT key, count(*) FROM llm_calls WHERE status = 'ok' GROUP BY key").fetchall()
    finally:
        con.close()
    return dict(rows)


def journaled_calls(db: Path) -> set[str]:
    """Keys of completed calls in the journal and in a journal file being
    merged (a line torn by the kill aside)."""
    keys = set()
    journals = [Path(str(db) + ".calls.jsonl"), Path(str(db) + ".calls.merging.jsonl")]
    for line in [ln for j in journals if j.exists() for ln in j.read_text().splitlines()]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["status"] == "ok":
            keys.add(row["key"])
    return keys


def test_killed_run_resumes_without_resending_completed_calls(tmp_path):
    server = FakeOpenAI()
    try:
        shutil.copytree(ROOT / "data" / "example" / "corpus", tmp_path / "corpus")
        data = yaml.safe_load((ROOT / "data" / "example" / "recipe.yaml").read_text())
        endpoint = {"backend": "openai", "base_url": server.url, "model": "fake", "max_concurrency": 2}
        data.update(output_dir="run", search={"backend": "none"},
                    llm={"generator": endpoint, "judge": endpoint})
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(data))
        home = tmp_path / "prefect-home"

        first = start_run(recipe, home)
        deadline = time.monotonic() + 240
        while server.requests < 8 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the run ended before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)  # the CLI (its flow run stays RUNNING on the server)
        first.wait(timeout=30)

        db = tmp_path / "run" / "sftmill.duckdb"
        unmerged = journaled_calls(db)
        done_before = set(ok_calls(db)) | unmerged
        assert unmerged, "the kill came when no completed call was waiting in the journal"
        sent_before = len(server.keys)

        second = start_run(recipe, home)
        assert second.wait(timeout=600) == 0
        done_after = ok_calls(db)
        assert all(n == 1 for n in done_after.values())  # nothing answered twice
        assert done_before <= set(done_after)
        resent = set(server.keys[sent_before:]) & done_before
        assert not resent, f"{len(resent)} completed calls were sent again"
        con = duckdb.connect(str(db), read_only=True)
        n_prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
        con.close()
        assert n_prompts > 0
        assert not journaled_calls(db)  # everything merged at the end
    finally:
        server.close()
