"""A run killed (SIGKILL) in the middle of an LLM stage and started again
finishes without sending again the LLM calls that had completed."""

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import yaml

from fakes import schema_answers
from sftmill.llm import ChatRequest

ROOT = Path(__file__).resolve().parents[2]


class FakeOpenAI:
    """An OpenAI-compatible chat endpoint answering like the scripted LLM, slowly."""

    def __init__(self, delay_s: float = 0.2):
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, payload):
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._json({"data": [{"id": "fake"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests += 1
                time.sleep(delay_s)
                schema = body["response_format"]["json_schema"]["schema"]
                request = ChatRequest.build(body["messages"], schema=schema)
                answer = json.dumps(schema_answers(request))
                self._json({"choices": [{"message": {"content": answer}}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5}})

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


def start_run(recipe: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING"}
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
        os.killpg(first.pid, signal.SIGKILL)  # the CLI and Prefect's temporary server
        first.wait(timeout=30)

        db = tmp_path / "run" / "sftmill.duckdb"
        done_before = ok_calls(db)
        assert done_before, "no call had completed before the kill"

        second = start_run(recipe, home)
        assert second.wait(timeout=600) == 0
        done_after = ok_calls(db)
        assert all(n == 1 for n in done_after.values())  # nothing answered twice
        assert set(done_before) <= set(done_after)
        con = duckdb.connect(str(db), read_only=True)
        hits = {k for (k,) in con.execute("SELECT key FROM llm_calls WHERE status = 'cache_hit'").fetchall()}
        n_prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
        con.close()
        assert set(done_before) <= hits  # the rerun needed them and took them from the table
        assert n_prompts > 0
    finally:
        server.close()
