"""Run folders on object storage (sftmill.core.remote) against a local server that
speaks the S3 protocol (moto's), as MinIO does: pull/push semantics, and a
prompt flow killed on one "machine" (one cache folder) and run again on
another, which sends again none of the calls whose ledger lines had been
uploaded before the kill."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import BUCKET
from fake_openai import FakeOpenAI
from prefect_homes import served_env

from sftmill.core import remote

ROOT = Path(__file__).resolve().parents[3]


def s3():
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs


def ledger_keys(url: str) -> set[str]:
    """Keys of the completed calls whose ledger lines are on the storage."""
    fs, root = s3(), url.removeprefix("s3://")
    keys = set()
    for path in [p for p in fs.find(f"{root}/ledger") if p.endswith(".jsonl")]:  # (a segment landing
        # between s3fs's listing and its look-up makes find name the folder itself)
        for line in fs.cat_file(path).splitlines():
            row = json.loads(line)
            if row["status"] == "ok":
                keys.add(row["key"])
    return keys


def test_pull_keeps_a_newer_local_copy_and_takes_a_newer_remote_one(s3_env, tmp_path, monkeypatch):
    url = f"s3://{BUCKET}/pull-push/shard-0"
    made = tmp_path / "made"
    (made / "inputs").mkdir(parents=True)
    (made / "recipe.yaml").write_text("name: x\n")
    (made / "inputs" / "a.md").write_text("quarks")
    remote.push(made, url)

    monkeypatch.setenv("SFTMILL_CACHE", str(tmp_path / "machine-a"))
    a = remote.pull(url)
    assert (a / "inputs" / "a.md").read_text() == "quarks" and (a / "recipe.yaml").exists()
    (a / "sftmill.duckdb.calls.jsonl").write_text('{"unpushed": 1}\n')  # went on, then was killed
    assert remote.pull(url) == a and (a / "sftmill.duckdb.calls.jsonl").exists()  # kept: not older
    (a / "out.txt").write_text("from a")
    remote.push(a, url)
    assert s3().cat_file(f"{BUCKET}/pull-push/shard-0/out.txt") == b"from a"

    monkeypatch.setenv("SFTMILL_CACHE", str(tmp_path / "machine-b"))
    b = remote.pull(url)
    assert b != a and (b / "out.txt").read_text() == "from a"
    (b / "inputs" / "a.md").unlink()  # a deletion travels too
    (b / "out.txt").write_text("from b")
    remote.push(b, url)

    monkeypatch.setenv("SFTMILL_CACHE", str(tmp_path / "machine-a"))
    assert (remote.pull(url) / "out.txt").read_text() == "from b"  # a's copy was older: replaced
    assert not (a / "inputs" / "a.md").exists()

    with pytest.raises(FileNotFoundError, match="no such folder"):
        remote.pull(f"s3://{BUCKET}/nothing-here")


def test_ledger_lines_reach_the_storage_as_they_land_and_a_pull_elsewhere_replays_them(
        s3_env, tmp_path, monkeypatch):
    url = f"s3://{BUCKET}/ledger/shard-0"
    made = tmp_path / "made"
    made.mkdir()
    (made / "recipe.yaml").write_text("name: x\n")
    remote.push(made, url)
    monkeypatch.setenv("SFTMILL_SYNC_SECONDS", "0.1")
    monkeypatch.setenv("SFTMILL_CACHE", str(tmp_path / "machine-a"))
    rows = [{"key": f"k{i}", "status": "ok"} for i in range(3)]
    with remote.synced_folder(url) as a:
        ledger = a / "sftmill.duckdb.calls.ledger.jsonl"
        with ledger.open("ab") as f:
            f.write((json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n").encode())
            f.write(json.dumps(rows[2]).encode()[:5])  # a line being written: not sent
            f.flush()
            deadline = time.monotonic() + 30
            while ledger_keys(url) != {"k0", "k1"} and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ledger_keys(url) == {"k0", "k1"}
            f.write(json.dumps(rows[2]).encode()[5:] + b"\n")
        monkeypatch.setenv("SFTMILL_CACHE", str(tmp_path / "machine-b"))  # as if a was killed here
        b = remote.pull(url)
        merging = b / "sftmill.duckdb.calls.merging.jsonl"
        assert {json.loads(line)["key"] for line in merging.read_text().splitlines()} >= {"k0", "k1"}
        monkeypatch.setenv("SFTMILL_CACHE", str(tmp_path / "machine-a"))
    assert ledger_keys(url) == set()  # the push at the end: its lines are in the folder now


def test_a_prompt_flow_killed_on_one_machine_resumes_on_another(s3_env, tmp_path):
    llm = FakeOpenAI(delay_s=0.05)
    try:
        made = tmp_path / "made"
        shutil.copytree(ROOT / "data" / "example" / "corpus", made / "corpus")
        data = yaml.safe_load((ROOT / "data" / "example" / "recipe.yaml").read_text())
        endpoint = {"backend": "openai", "base_url": llm.url, "model": "fake", "max_concurrency": 2}
        data.update(output_dir=".", search={"backend": "none"}, llm={"generator": endpoint, "judge": endpoint})
        (made / "recipe.yaml").write_text(yaml.safe_dump(data))
        url = f"s3://{BUCKET}/kill/shard-0"
        remote.push(made, url)

        def run_on(machine: str) -> subprocess.Popen:
            env = {**os.environ, **s3_env, "SFTMILL_CACHE": str(tmp_path / machine),
                   **served_env(tmp_path / f"{machine}-prefect"),
                   "PREFECT_LOGGING_LEVEL": "WARNING", "SFTMILL_SYNC_SECONDS": "0.5"}
            code = ("from sftmill.flows.prompt_flow import prompt_flow; "
                    "from sftmill.flows.params import RunParams; "
                    f"prompt_flow(RunParams(recipe_path={url + '/recipe.yaml'!r}))")
            return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{machine}.log", "wb"))

        first = run_on("machine-a")
        deadline = time.monotonic() + 300
        while len(ledger_keys(url)) < 6 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, (tmp_path / "machine-a.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        uploaded = ledger_keys(url)  # what machine b can know of
        sent_before = len(llm.keys)
        assert len(uploaded) >= 6

        second = run_on("machine-b")
        assert second.wait(timeout=600) == 0, (tmp_path / "machine-b.log").read_text()[-3000:]
        assert not set(llm.keys[sent_before:]) & uploaded  # none of them sent again
        assert ledger_keys(url) == set()

        import duckdb

        fs = s3()
        fs.get_file(f"{BUCKET}/kill/shard-0/sftmill.duckdb", str(tmp_path / "pushed.duckdb"))
        con = duckdb.connect(str(tmp_path / "pushed.duckdb"), read_only=True)
        calls = dict(con.execute("SELECT key, count(*) FROM llm_calls WHERE status = 'ok' GROUP BY key").fetchall())
        n_prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
        con.close()
        assert n_prompts > 0 and uploaded <= set(calls) and all(n == 1 for n in calls.values())
    finally:
        llm.close()
