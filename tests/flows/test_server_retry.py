"""On a real Prefect server: `sftmill serve`, a run triggered through the API
with parameters, a stage that fails because its LLM endpoint goes down, and
a retry of the same flow run through the API once the endpoint is back.

Asserts that the stages that had completed come back Cached, that only the
failed stage (and those after it) ran again, and that no LLM call that had
succeeded was sent twice.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest
from conftest import stop_group
from fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


def wait_for(check, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def read_only(db: Path):
    """Open the run database once the flow-run process has let go of it."""
    def attempt():
        try:
            return duckdb.connect(str(db), read_only=True)
        except duckdb.IOException:
            return None

    return wait_for(attempt, 60, "the run database to be released")


def task_runs(api: str, flow_run_id: str) -> list[dict]:
    return api_call("POST", f"{api}/task_runs/filter",
                    json={"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}).json()


def api_call(method: str, url: str, missing_ok: bool = False, **kwargs):
    """A request to the Prefect API, retrying 503s and timeouts as Prefect's
    own client does (a busy server's SQLite is locked now and then under
    load; on 2 busy cores an answer once took over 30 s).  `missing_ok`: the
    JSON answer, or None for a 404."""
    for attempt in range(10):
        try:
            response = httpx.request(method, url, timeout=30, **kwargs)
        except httpx.TimeoutException:
            if attempt == 9:
                raise
            continue
        if response.status_code != 503:
            break
        time.sleep(1)
    if missing_ok:
        return None if response.status_code == 404 else response.raise_for_status().json()
    response.raise_for_status()
    return response


def create_run(api: str, deployment_id: str, parameters: dict) -> dict:
    return api_call("POST", f"{api}/deployments/{deployment_id}/create_flow_run",
                    json={"parameters": parameters}).json()


def flow_run_state(api: str, flow_run_id: str) -> str:
    return api_call("GET", f"{api}/flow_runs/{flow_run_id}").json()["state"]["type"]


def example_folder(tmp_path: Path, files: tuple[str, ...], extra: str = "") -> Path:
    """The example recipe (no web search, output in ./run) over some of its
    corpus files, in `tmp_path`; returns the recipe file."""
    (tmp_path / "corpus").mkdir()
    for name in files:
        shutil.copy(ROOT / "data" / "example" / "corpus" / name, tmp_path / "corpus" / name)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((ROOT / "data" / "example" / "recipe.yaml").read_text()
                      .replace("../../runs/quarks-and-gluons", "run")
                      .replace("backend: local", "backend: none") + extra)
    return recipe


@contextlib.contextmanager
def serving(api: str, tmp_path: Path, **env):
    """`sftmill serve` against the server at `api`, stopped on leaving."""
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "client-home"),
           "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
           "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "SFTMILL_TASK_RETRY_DELAYS": "0,0",
           "PREFECT_LOGGING_LEVEL": "WARNING", **env}
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen([sys.executable, "-m", "sftmill.cli", "serve"], cwd=ROOT, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield serve
        finally:
            stop_group(serve)


def test_retry_on_the_server_reuses_completed_stages(prefect_server, tmp_path):
    api = prefect_server
    llm = FakeOpenAI(delay_s=0.02, down_after=14)  # relevance (11 calls) passes, profile fails
    # The example's first four files (11 chunks): the failure below is placed by call count.
    example_folder(tmp_path, ("quarks.md", "gluons.md", "experiments.md", "bread.txt"))
    with contextlib.closing(llm), serving(api, tmp_path):
        def deployment():
            return api_call("GET", f"{api}/deployments/name/sftmill-prompts/prompts", missing_ok=True)

        dep = wait_for(deployment, 120, "the served deployment")
        for name in ("sftmill-self-instruct/self-instruct", "sftmill-evol-instruct/evol",
                     "sftmill-augment/augment", "sftmill-templates/templates",
                     "sftmill-curate/curate", "sftmill-mix/mix"):
            def registered(name=name):
                return api_call("GET", f"{api}/deployments/name/{name}", missing_ok=True)

            generator = wait_for(registered, 60, name)
            assert "cfg" in generator["parameter_openapi_schema"]["required"], name
        form = json.dumps(dep["parameter_openapi_schema"]["definitions"]["RunParams"])
        assert '"maximum": 1000000' in form and '"answer_checks"' in form  # bounds and enums
        assert "Override sizes.target_prompts" in form  # descriptions
        parameters = {"params": {"recipe_path": str(tmp_path / "recipe.yaml"),
                                 "generator_base_url": llm.url, "generator_model": "fake",
                                 "judge_base_url": llm.url, "judge_model": "fake",
                                 "target_prompts": 12}}
        run = create_run(api, dep["id"], parameters)
        wait_for(lambda: flow_run_state(api, run["id"]) in ("FAILED", "COMPLETED", "CRASHED"),
                 300, "the first attempt to end")
        assert flow_run_state(api, run["id"]) == "FAILED"

        db = tmp_path / "run" / "sftmill.duckdb"
        con = read_only(db)
        ok_before = {k for (k,) in con.execute("SELECT key FROM llm_calls WHERE status = 'ok'").fetchall()}
        con.close()
        assert len(ok_before) == 14

        llm.down_after = None  # the endpoint is back
        api_call("POST", f"{api}/flow_runs/{run['id']}/set_state",
                 json={"state": {"type": "SCHEDULED", "message": "retry from test"}, "force": True})
        wait_for(lambda: flow_run_state(api, run["id"]) in ("FAILED", "COMPLETED", "CRASHED")
                 and api_call("GET", f"{api}/flow_runs/{run['id']}").json()["run_count"] >= 2,
                 300, "the retried run to end")
        assert flow_run_state(api, run["id"]) == "COMPLETED"

        second = {}
        for tr in task_runs(api, run["id"]):
            if tr["flow_run_run_count"] == 2:
                second.setdefault(tr["name"].rsplit("-", 1)[0], []).append(tr["state"]["name"])
        assert second["collect"] == ["Cached"]
        assert second["chunk"] == ["Cached"]
        assert second["relevance"] == ["Cached"]
        assert second["profile"] == ["Completed"]  # the stage that had failed ran again
        assert second["dedup"] == ["Completed"]

        con = read_only(db)
        per_key = dict(con.execute(
            "SELECT key, count(*) FROM llm_calls WHERE status = 'ok' GROUP BY key").fetchall())
        con.close()
        assert all(n == 1 for n in per_key.values())  # nothing that succeeded was sent again
        assert ok_before <= set(per_key)

        artifacts = api_call("POST", f"{api}/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
        progress = [a for a in artifacts if a["type"] == "progress"]
        assert progress and all(a["data"] == 100.0 for a in progress)  # long stages showed progress

        # A classic generator triggered through its deployment: the form's JSON is its config.
        spec = tmp_path / "spec.yaml"
        spec.write_text("templates: ['Explain [TOPIC] to a student.']\n"
                        "slots: {TOPIC: [quark confinement, gluon jets, asymptotic freedom]}\n")
        templates = api_call("GET", f"{api}/deployments/name/sftmill-templates/templates").json()
        run = create_run(api, templates["id"], {"fmt": "alpaca", "cfg": {
            "spec_path": str(spec), "output_dir": str(tmp_path / "tpl"),
            "generator": {"backend": "openai", "base_url": llm.url, "model": "fake"}}})
        wait_for(lambda: flow_run_state(api, run["id"]) in ("FAILED", "COMPLETED", "CRASHED"),
                 300, "the templates run to end")
        assert flow_run_state(api, run["id"]) == "COMPLETED"
        records = [json.loads(x) for x in (tmp_path / "tpl" / "dataset.jsonl").read_text().splitlines()]
        assert len(records) == 3 and all(r["output"].startswith("A plain answer") for r in records)


def test_a_served_run_pauses_at_a_review_gate_and_resumes_with_the_form(prefect_server, tmp_path):
    """The prompt gate of a served pipeline run: the answers subflow shows as
    Paused with the gate's form, the reviewers fill the sheet, the run is
    resumed through the API with the form's input, and only the prompts
    reviewers kept are answered (the edited one as edited)."""
    api = prefect_server
    llm = FakeOpenAI(delay_s=0.01)
    example_folder(tmp_path, ("quarks.md", "gluons.md"),
                   "\nreview: {gates: [prompts], sample: 3, tool: csv}\n")
    with contextlib.closing(llm), serving(api, tmp_path, SFTMILL_PAUSE_POLL_S="1"):
        def deployment():
            return api_call("GET", f"{api}/deployments/name/sftmill-pipeline/pipeline", missing_ok=True)

        dep = wait_for(deployment, 120, "the served pipeline deployment")
        run = create_run(api, dep["id"], {"params": {
            "recipe_path": str(tmp_path / "recipe.yaml"), "generator_base_url": llm.url,
            "generator_model": "fake", "judge_base_url": llm.url, "judge_model": "fake",
            "target_prompts": 8}})

        def paused():
            r = api_call("POST", f"{api}/flow_runs/filter", json={"flow_runs": {
                "parent_flow_run_id": None, "state": {"type": {"any_": ["PAUSED"]}}}})
            runs = [fr for fr in r.json() if fr["name"] != run["name"]]
            if flow_run_state(api, run["id"]) in ("FAILED", "CRASHED", "COMPLETED"):
                pytest.fail(f"the run ended before the gate: {flow_run_state(api, run['id'])}")
            return runs[0] if runs else None

        answers_run = wait_for(paused, 300, "the answers subflow to pause at the gate")
        assert answers_run["state"]["name"] == "Paused"
        keyset = answers_run["state"]["state_details"]["run_input_keyset"]
        description = api_call("GET", f"{api}/flow_runs/{answers_run['id']}/input/{keyset['description']}").json()
        assert "review gate 'prompts': 0 of 3 prompts reviewed" in description
        schema = api_call("GET", f"{api}/flow_runs/{answers_run['id']}/input/{keyset['schema']}").json()
        assert schema["properties"]["choice"]["enum"] == ["use", "wait", "skip"]
        assert flow_run_state(api, run["id"]) == "RUNNING"

        db = tmp_path / "run" / "sftmill.duckdb"
        sheet = tmp_path / "run" / "review" / "prompts.csv"
        import csv as csv_module

        rows = list(csv_module.DictReader(sheet.open(encoding="utf-8")))
        assert len(rows) == 3
        rows[0]["decision"], rows[1]["decision"] = "reject", "edit"
        rows[1]["edited_prompt"] = "What holds quarks together inside a proton?"
        with sheet.open("w", encoding="utf-8", newline="") as handle:
            writer = csv_module.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

        response = httpx.post(f"{api}/flow_runs/{answers_run['id']}/resume", timeout=30,
                              json={"run_input": {"choice": "use"}})
        response.raise_for_status()
        assert response.json()["status"] == "ACCEPT"
        wait_for(lambda: flow_run_state(api, run["id"]) in ("FAILED", "COMPLETED", "CRASHED"),
                 300, "the resumed run to end")
        assert flow_run_state(api, run["id"]) == "COMPLETED"

        con = read_only(db)
        answered = {p for (p,) in con.execute("SELECT DISTINCT prompt_id FROM answers").fetchall()}
        edited = con.execute("SELECT text FROM answerable_prompts WHERE prompt_id = ?",
                             [rows[1]["item_id"]]).fetchone()
        asked = con.execute("SELECT count(*) FROM llm_calls WHERE stage = 'answer' AND "
                            "request_json LIKE '%What holds quarks together inside a proton?%'"
                            ).fetchone()[0]
        con.close()
        assert rows[0]["item_id"] not in answered and rows[1]["item_id"] in answered
        assert edited == ("What holds quarks together inside a proton?",) and asked == 1
        card = (tmp_path / "run" / "card.md").read_text()
        assert "## Human review: prompts" in card

