"""One recipe across a work pool: a real Prefect server, a process work pool
with two workers started by `prefect worker start`, the deployments of
prefect.yaml (`prefect deploy --all`), and the sharded flow run through the
API on the example corpus in 2 shards, the shards' folders on object storage
(a local server speaking S3, as MinIO does; the workers share this machine's
cache folder, so each keeps its copy between attempts).  One shard's
prompt-flow run is killed (SIGKILL of its process) in the middle of its LLM
calls and retried alone with `prefect flow-run retry`; the sharded run then
finishes.

Asserts that every record traces to a document of its own shard, that no
two exported prompts of different shards are near-duplicates, and that no
LLM call that had completed before the kill was sent again."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BUCKET, stop_group
from fake_openai import FakeOpenAI
from test_kill_resume import journaled_calls, ok_calls
from test_server_retry import api_call, create_run, flow_run_state, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


def prefect_cli(env: dict, *args: str, timeout: float = 180) -> str:
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@contextlib.contextmanager
def workers(env: dict, tmp_path: Path, n: int):
    procs = []
    try:
        for k in range(n):
            log = (tmp_path / f"worker-{k}.log").open("wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "sftmill-pool",
                 "--type", "process", "--name", f"worker-{k}"], cwd=ROOT, stdout=log,
                env={**env, "PREFECT_LOGGING_LEVEL": "INFO"},
                stderr=subprocess.STDOUT, start_new_session=True))
        yield procs
    finally:
        for proc in procs:
            stop_group(proc)


def process_of(flow_run_id: str) -> int | None:
    """The PID of the process executing a flow run (a process worker's child)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ.split(b"\0"):
            return int(pid)
    return None


def child_runs(api: str, parent_id: str) -> list[dict]:
    """Flow runs started by the sharded run (run_deployment links them to its task runs)."""
    tasks = api_call("POST", f"{api}/task_runs/filter",
                     json={"flow_runs": {"id": {"any_": [parent_id]}}, "limit": 200}).json()
    ids = [t["id"] for t in tasks]
    if not ids:
        return []
    return api_call("POST", f"{api}/flow_runs/filter",
                    json={"flow_runs": {"parent_task_run_id": {"any_": ids}}, "limit": 50}).json()


def test_a_sharded_run_on_a_work_pool_with_a_killed_shard_retried_alone(prefect_server, s3_env, tmp_path,
                                                                       monkeypatch):
    import fsspec

    from sftmill.core import remote

    api = prefect_server
    storage = f"s3://{BUCKET}/pool-run"
    monkeypatch.setenv("SFTMILL_CACHE", str(tmp_path / "cache"))  # the workers' too
    fs = fsspec.filesystem("s3")
    llm = FakeOpenAI(delay_s=0.05)
    (tmp_path / "corpus").mkdir()
    for name in ("quarks.md", "gluons.md", "experiments.md", "hadrons.md", "qcd.md", "bread.txt"):
        (tmp_path / "corpus" / name).write_text((ROOT / "data" / "example" / "corpus" / name).read_text())
    # The same notes twice: dealt to different shards (equal sizes), their prompts repeat across shards.
    (tmp_path / "corpus" / "quarks-copy.md").write_text((tmp_path / "corpus" / "quarks.md").read_text())
    data = yaml.safe_load((ROOT / "data" / "example" / "recipe.yaml").read_text())
    endpoint = {"backend": "openai", "base_url": llm.url, "model": "fake", "max_concurrency": 2}
    data.update(output_dir="run", search={"backend": "none"}, llm={"generator": endpoint, "judge": endpoint})
    data["sizes"]["target_prompts"] = 40  # every chunk gets prompts: the copy's repeat across shards
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))

    env = {**os.environ, **s3_env, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "client-home"),
           "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"), "SFTMILL_HOME": str(ROOT),
           "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "SFTMILL_TASK_RETRY_DELAYS": "0,0",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    prefect_cli(env, "work-pool", "create", "sftmill-pool", "--type", "process")
    prefect_cli(env, "deploy", "--all")
    deployment = api_call("GET", f"{api}/deployments/name/sftmill-sharded/sharded").json()
    with contextlib.closing(llm), workers(env, tmp_path, 2):
        run = create_run(api, deployment["id"], {"params": {
            "recipe_path": str(tmp_path / "recipe.yaml"), "shards": 2, "poll_s": 1, "storage": storage}})

        # Kill shard 1's prompt flow once its run has completed calls of its own.
        db1 = remote.local_dir(f"{storage}/shards/shard-1") / "sftmill.duckdb"  # the workers' copy
        victim = wait_for(lambda: next((r for r in child_runs(api, run["id"])
                                        if r["name"] == "shard-1-prompts"
                                        and r["state_type"] == "RUNNING"), None), 300,
                          "shard 1's prompt flow to run")
        wait_for(lambda: len(journaled_calls(db1)) >= 3, 120, "shard 1's first completed calls",
                 every=0.05)
        os.kill(wait_for(lambda: process_of(victim["id"]), 30, "its process"), signal.SIGKILL)
        wait_for(lambda: flow_run_state(api, victim["id"]) in ("CRASHED", "FAILED"), 120,
                 "the killed shard run to crash")
        assert flow_run_state(api, run["id"]) == "RUNNING"  # the sharded run waits for the retry
        # Prefect 3.8's process worker reports the killed attempt as crashed a second time when
        # its own wait on the process returns (seconds later); landing after a retry, that report
        # marks the retried run crashed before it starts.  A user then presses Retry again; so
        # does this test (at most three times), after giving the worker time to report.
        done_before = set(ok_calls(db1)) | journaled_calls(db1)
        sent_before = len(llm.keys)
        for _attempt in range(3):
            time.sleep(15)
            prefect_cli(env, "flow-run", "retry", victim["id"])
            wait_for(lambda: flow_run_state(api, run["id"]) in ("COMPLETED", "FAILED", "CRASHED")
                     or flow_run_state(api, victim["id"]) == "CRASHED", 600, "the sharded run to end")
            if flow_run_state(api, victim["id"]) != "CRASHED":
                break
        wait_for(lambda: flow_run_state(api, run["id"]) in ("COMPLETED", "FAILED", "CRASHED"), 600,
                 "the sharded run to end")
        assert flow_run_state(api, run["id"]) == "COMPLETED"
        assert flow_run_state(api, victim["id"]) == "COMPLETED"

    # No call that had completed in shard 1 was sent again.
    assert not set(llm.keys[sent_before:]) & done_before
    assert all(n == 1 for n in ok_calls(db1).values())

    # Every record traces to a document of its own shard.
    fs.invalidate_cache()
    shard_files = [{inp["path"] for inp in yaml.safe_load(
        fs.cat_file(f"{storage}/shards/shard-{k}/recipe.yaml"))["inputs"]} for k in range(2)]
    assert all(f.startswith("inputs/") for files in shard_files for f in files)  # copied there
    assert not shard_files[0] & shard_files[1] and len(shard_files[0] | shard_files[1]) == 7
    assert {Path(f).name for f in shard_files[0]} & {"quarks.md", "quarks-copy.md"} in (
        {"quarks.md"}, {"quarks-copy.md"})  # one in each shard
    records = [json.loads(x) for x in fs.cat_file(f"{storage}/dataset.jsonl").decode().splitlines()]
    shards = {r["metadata"]["shard"] for r in records}
    assert shards == {0, 1}, shards
    for record in records:
        uri = record["metadata"]["source"]["uri"]
        assert any(uri.endswith(Path(f).name) for f in shard_files[record["metadata"]["shard"]]), uri

    # No near-duplicate pair across shards among the exported prompts.
    from sftmill.core.endpoints import Embedding
    from sftmill.embed.embedder import Embedder

    prompts = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in records]
    vectors = Embedder(Embedding()).embed(prompts)
    which = np.array([r["metadata"]["shard"] for r in records])
    across = (vectors @ vectors.T)[which[:, None] != which[None, :]]
    assert across.max() < data.get("thresholds", {}).get("dedup_cosine", 0.92)
    card = fs.cat_file(f"{storage}/card.md").decode()
    assert f"{len(records)} records" in card
    removed = int(card.split("Near-duplicates across shards: ", 1)[1].split(" ", 1)[0])
    assert removed >= 1  # prompts of the copied file, removed before they were answered
    import duckdb

    dropped = set()
    for k in range(2):
        fs.get_file(f"{storage}/shards/shard-{k}/sftmill.duckdb", str(tmp_path / f"shard-{k}.duckdb"))
        con = duckdb.connect(str(tmp_path / f"shard-{k}.duckdb"), read_only=True)
        dropped |= {t for (t,) in con.execute("SELECT p.text FROM prompts p JOIN rejects r ON "
                                              "r.item_id = p.prompt_id AND r.stage = 'shard_merge'").fetchall()}
        con.close()
    assert len(dropped) == removed and not dropped & set(prompts)
