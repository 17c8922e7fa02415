"""The prompt gate with a real Label Studio: installed in its own virtual
environment (its pins are not the project's), started on 127.0.0.1, the
run stops at the gate with a project of tasks, two reviewers annotate
through Label Studio's API, and the rerun answers only the prompts they
kept — the edited one as edited."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from examples import example_recipe, params
from fakes import ScriptedLLM, route_llm, schema_answers

from sftmill.core.store import Store

VERSION = "1.23.2"
# Label Studio 1.23.2 asks for sentry-sdk>=2.16 and fails to start under
# sentry-sdk 3 (an option 3.0 removed); .ci/run installs the same pins.
PINS = f"label-studio=={VERSION} sentry-sdk<3"
TOKEN = "sftmill-test-token"
pytestmark = pytest.mark.server


def label_studio_venv() -> Path:
    """Label Studio's own venv (SFTMILL_LABEL_STUDIO_VENV, or a cache folder),
    made on first use or when its pins changed: pip install takes a few minutes."""
    venv = Path(os.environ.get("SFTMILL_LABEL_STUDIO_VENV")
                or Path.home() / ".cache" / "sftmill-tests" / f"label-studio-{VERSION}")
    marker = venv / "sftmill-pins"
    if not marker.exists() or marker.read_text().strip() != PINS:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                        *PINS.split()], check=True, timeout=1800)
        marker.write_text(PINS + "\n")
    return venv


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    venv = label_studio_venv()
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data)}
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
         "-p", str(port), "--data-dir", str(data / "media"), "--username", "lead@example.org",
         "--password", "lead-password-1", "--user-token", TOKEN, "--enable-legacy-api-token"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            pytest.fail(f"label-studio exited; see {data / 'server.log'}")
        try:
            if httpx.get(f"{url}/api/projects", headers={"Authorization": f"Token {TOKEN}"},
                         timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("Label Studio did not answer within 10 minutes")
        time.sleep(1)
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=60)
    log.close()


def test_prompt_gate_in_label_studio(label_studio, prefect_harness, tmp_path, monkeypatch):
    from sftmill.flows.pipeline import pipeline
    from sftmill.tasks.review.label_studio import LabelStudioClient, choices_result

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    llm = route_llm(monkeypatch, ScriptedLLM(schema_answers))
    recipe = example_recipe(tmp_path, review={"gates": ["prompts", "answers"], "sample": 6,
                                              "tool": "label_studio"})
    results = pipeline(params(recipe))
    assert results[-1].stage == "review_prompts" and results[-1].note == "waiting"
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    assert store.count("answers") == 0  # nothing answered before the gate passes
    assert store.scalar("SELECT count(*) FROM llm_calls WHERE stage = 'answer'") == 0
    project_id, link = store.execute("SELECT project_id, location FROM review_gates")[0]
    assert link == f"{label_studio}/projects/{project_id}/data"

    # What a reviewer sees, through Label Studio's own API.
    client = LabelStudioClient(label_studio, TOKEN)
    tasks = sorted(client.tasks(project_id), key=lambda t: t["data"]["item_id"])
    assert len(tasks) == 6
    prompts = dict(store.execute("SELECT prompt_id, text FROM prompts"))
    assert all(t["data"]["prompt"] == prompts[t["data"]["item_id"]] for t in tasks)
    second = httpx.post(f"{label_studio}/api/users/", headers={"Authorization": f"Token {TOKEN}"},
                        json={"email": "second@example.org", "username": "second@example.org"},
                        timeout=30).json()["id"]
    ids = [t["data"]["item_id"] for t in tasks]
    edited = "What keeps a single quark from ever being observed on its own?"
    client.annotate(tasks[0]["id"], choices_result("reject", "prompt"))
    client.annotate(tasks[1]["id"], choices_result("edit", "prompt", {"edited_prompt": edited}))
    for t in tasks[2:]:
        client.annotate(t["id"], choices_result("accept", "prompt"))
    # a second reviewer: agrees on the first, disagrees on the third (a tie: the later wins)
    client.annotate(tasks[0]["id"], choices_result("reject", "prompt"), completed_by=second)
    client.annotate(tasks[2]["id"], choices_result("reject", "prompt"), completed_by=second)
    client.close()
    Store.close_all()

    # From here on a personal access token (a JWT, exchanged for short-lived
    # Bearer tokens), as Label Studio's UI hands out by default.
    pat = httpx.post(f"{label_studio}/api/token/", headers={"Authorization": f"Token {TOKEN}"},
                     timeout=30).json()["token"]
    assert pat.startswith("eyJ")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    llm.requests.clear()
    results = pipeline(params(recipe))
    store = Store.open(tmp_path / "run" / "sftmill.duckdb")
    gate = next(r for r in results if r.stage == "review_prompts")
    assert (gate.n_in, gate.n_out, gate.note) == (6, 6, "reviewed")
    rejected = {ids[0], ids[2]}
    considered = {p for (p,) in store.execute(
        "SELECT prompt_id FROM answers UNION SELECT item_id FROM rejects WHERE stage = 'answer'")}
    assert considered == set(prompts) - rejected  # every other prompt was answered or dropped
    assert rejected.isdisjoint({p for (p,) in store.execute("SELECT prompt_id FROM answers")})
    assert ids[1] in {p for (p,) in store.execute("SELECT prompt_id FROM answers")}
    asked = [content for r in llm.requests for _role, content in r.messages]
    assert any(edited in text for text in asked)
    assert not any(prompts[ids[1]] in text for text in asked)  # the original is never asked
    assert store.execute("SELECT item_id FROM rejects WHERE stage = 'prompt_review' ORDER BY 1") \
        == [(i,) for i in sorted(rejected)]
    # The answer gate: a project of records with their cited passages and the scales.
    assert results[-1].stage == "review_answers" and results[-1].note == "waiting"
    assert not (tmp_path / "run" / "dataset.jsonl").exists()
    project_id = store.scalar("SELECT project_id FROM review_gates WHERE gate = 'answers'")
    client = LabelStudioClient(label_studio, pat)
    records = sorted(client.tasks(project_id), key=lambda t: t["data"]["item_id"])
    assert records and all(t["data"]["answer"] and t["data"]["passages"] for t in records)
    better = "Colour confinement: the strong force grows with distance, so quarks stay bound."
    client.annotate(records[0]["id"], choices_result(
        "edit", "answer", {"edited_answer": better}, {"style": 2, "domain_fit": 5, "context_relevance": 4}))
    for t in records[1:]:
        client.annotate(t["id"], choices_result("accept", "answer", scales={
            "style": 4, "domain_fit": 4, "context_relevance": 5}))
    client.close()
    Store.close_all()
    results = pipeline(params(recipe))
    assert next(r for r in results if r.stage == "review_answers").note == "reviewed"
    exported = [json.loads(x) for x in (tmp_path / "run" / "dataset.jsonl").read_text().splitlines()]
    edited_records = [r for r in exported if r["metadata"].get("review", {}).get("decision") == "edit"]
    assert [r["messages"][1]["content"] for r in edited_records] == [better]
    card = (tmp_path / "run" / "card.md").read_text()
    assert f"{len(records)} records reviewed by 1 reviewer(s)" in card
    assert "| style | " in card and "| context_relevance | " in card
    assert "## Human review: prompts" in card
    assert "6 prompts reviewed by 2 reviewer(s) (8 annotations)" in card
    assert "Agreement: 2 prompts had two reviewers or more; 50% unanimous" in card


def test_a_gate_waits_while_label_studio_is_down_and_goes_on_when_it_is_back(
        label_studio, prefect_harness, tmp_path, monkeypatch):
    """Label Studio down as the gate opens: the run stops at the gate with
    one line saying so, the sample already drawn; back up: the project is
    made once, with its tasks.  Down again as the gate pulls, even with
    --review use: still waiting, no review lost; back: the reviews apply."""
    from sftmill.flows.pipeline import pipeline
    from sftmill.tasks.review.gate import pending_gate
    from sftmill.tasks.review.label_studio import LabelStudioClient, choices_result

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("LABEL_STUDIO_URL", down)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    route_llm(monkeypatch, ScriptedLLM(schema_answers))
    recipe = example_recipe(tmp_path, review={"gates": ["prompts"], "sample": 3, "tool": "label_studio"})
    db = tmp_path / "run" / "sftmill.duckdb"

    def gate_line(choice: str = "wait") -> str:
        results = pipeline(params(recipe, review=choice))
        assert results[-1].stage == "review_prompts" and results[-1].note == "waiting"
        store = Store.open(db)
        line = pending_gate(store, params(recipe).load()).line()
        Store.close_all()
        return line

    line = gate_line()
    assert line.startswith("review gate 'prompts': 0 of 3 prompts reviewed (0 annotations) — "
                           "Label Studio project (not made yet); Label Studio at " + down)
    assert "ConnectError" in line and line.endswith("nothing is lost, the gate goes on when it answers")
    store = Store.open(db)
    assert store.execute("SELECT project_id, n_items FROM review_gates") == [(None, 3)]
    sampled = [i for (i,) in store.execute("SELECT item_id FROM review_items ORDER BY 1")]
    assert store.count("answers") == 0
    Store.close_all()

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio)
    line = gate_line()
    store = Store.open(db)
    project_id = store.scalar("SELECT project_id FROM review_gates")
    Store.close_all()
    assert line.endswith(f"Label Studio project {label_studio}/projects/{project_id}/data")
    gate_line()  # a rerun neither makes another project nor imports the tasks again
    client = LabelStudioClient(label_studio, TOKEN)
    tasks = client.tasks(project_id)
    assert sorted(t["data"]["item_id"] for t in tasks) == sampled
    for task in tasks:
        client.annotate(task["id"], choices_result("reject", "prompt"))
    client.close()

    monkeypatch.setenv("LABEL_STUDIO_URL", down)
    line = gate_line("use")  # would go on with the reviews so far: it cannot read them, it waits
    assert "0 of 3 prompts reviewed" in line and "ConnectError" in line

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio)
    results = pipeline(params(recipe))
    gate = next(r for r in results if r.stage == "review_prompts")
    assert (gate.n_in, gate.n_out, gate.note) == (3, 3, "reviewed")
    store = Store.open(db)
    assert store.execute("SELECT item_id FROM rejects WHERE stage = 'prompt_review' ORDER BY 1") \
        == [(i,) for i in sampled]
    assert store.count("answers") > 0
