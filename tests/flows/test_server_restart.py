"""A served run across a restart of its Prefect server (a real `prefect
server start`, stopped and started again on the same port and database)."""

import contextlib
import time

import pytest
from conftest import free_port, stop_group
from fake_openai import FakeOpenAI
from test_server_retry import (
    api_call,
    create_run,
    example_folder,
    flow_run_state,
    read_only,
    serving,
    task_runs,
    wait_for,
)

pytestmark = pytest.mark.server


def test_a_served_run_goes_on_after_the_prefect_server_restarts(tmp_path):
    """`prefect server start` stopped in the middle of a served run's LLM
    stages and started again (same port, same database).  Prefect's client
    retries its API calls for about a minute, which outlasts a quick
    restart: the run goes on by itself; should it fail (a slower restart),
    it is retried from the UI as a user would (a new SCHEDULED state
    through the API) and the stages that had finished come back Cached.
    Either way every LLM call that had succeeded is answered once.  (With
    PREFECT_CLIENT_MAX_RETRIES=0 the run fails at the restart and the retry
    finishes it: seen by hand; in the suite a busy server's passing 503
    would stop `sftmill serve` itself.)"""
    from prefect_homes import start_server

    home, port = tmp_path / "server-home", free_port()
    home.mkdir()
    server, api = start_server(home, port=port, timeout_s=240)
    llm = FakeOpenAI(delay_s=0.05)
    example_folder(tmp_path, ("quarks.md", "gluons.md", "experiments.md"))
    try:
        with contextlib.closing(llm), serving(api, tmp_path):
            def deployment():
                return api_call("GET", f"{api}/deployments/name/sftmill-pipeline/pipeline",
                                missing_ok=True)

            dep = wait_for(deployment, 120, "the served pipeline deployment")
            run = create_run(api, dep["id"], {"params": {
                "recipe_path": str(tmp_path / "recipe.yaml"), "generator_base_url": llm.url,
                "generator_model": "fake", "judge_base_url": llm.url, "judge_model": "fake",
                "target_prompts": 12}})
            wait_for(lambda: llm.requests >= 12, 300, "the run's first LLM calls")
            stop_group(server)
            sent_while_down = llm.requests
            time.sleep(5)
            server, api = start_server(home, port=port, timeout_s=240)
            ended = ("FAILED", "COMPLETED", "CRASHED")
            wait_for(lambda: flow_run_state(api, run["id"]) in ended, 600, "the run to end")
            retried = flow_run_state(api, run["id"]) != "COMPLETED"
            if retried:  # the UI's Retry
                api_call("POST", f"{api}/flow_runs/{run['id']}/set_state", json={
                    "state": {"type": "SCHEDULED", "message": "retry after restart"}, "force": True})
                wait_for(lambda: flow_run_state(api, run["id"]) in ended
                         and api_call("GET", f"{api}/flow_runs/{run['id']}").json()["run_count"] >= 2,
                         600, "the retried run to end")
            assert flow_run_state(api, run["id"]) == "COMPLETED", (retried, sent_while_down)
            assert llm.requests > sent_while_down  # the stop came in the middle of the run
            if retried:  # every stage's task runs, in order: those that had finished came back Cached
                subflows = api_call("POST", f"{api}/flow_runs/filter", json={"flow_runs": {
                    "parent_flow_run_id": {"any_": [run["id"]]}}}).json()
                states: dict[str, list[tuple[str, str]]] = {}
                for sub in subflows:
                    for tr in task_runs(api, sub["id"]):
                        states.setdefault(tr["name"].rsplit("-", 1)[0], []).append(
                            (tr["created"], tr["state"]["name"]))
                states = {name: [state for _, state in sorted(runs)] for name, runs in states.items()}
                assert states["collect"] == ["Completed", "Cached"], states
        con = read_only(tmp_path / "run" / "sftmill.duckdb")
        per_key = dict(con.execute(
            "SELECT key, count(*) FROM llm_calls WHERE status = 'ok' GROUP BY key").fetchall())
        records = con.execute("SELECT count(*) FROM dataset").fetchone()[0]
        con.close()
        assert all(n == 1 for n in per_key.values())
        resent = len(llm.keys) - len(set(llm.keys))
        assert resent <= 8, f"{resent} calls answered twice"  # at most those in flight (max_concurrency)
        assert records > 0 and (tmp_path / "run" / "dataset.jsonl").exists()
        print(f"retried from the UI: {retried}; calls answered twice: {resent}; records: {records}")
    finally:
        stop_group(server)
