"""Budget caps: `sftmill run` stops before a batch of calls could
pass `budget.max_tokens`, exits non-zero with one line saying what was spent;
the same run with a higher cap finishes and sends no call twice."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest
import yaml
from fake_openai import FakeOpenAI
from fakes import ScriptedLLM
from prefect_homes import served_env

ROOT = Path(__file__).resolve().parents[2]


def run(recipe: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **served_env(home), "PREFECT_LOGGING_LEVEL": "WARNING",
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sftmill.cli", "run", str(recipe)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_budget_stops_the_run_and_a_higher_cap_goes_on_without_paying_twice(tmp_path):
    server = FakeOpenAI(delay_s=0.01)
    try:
        shutil.copytree(ROOT / "data" / "example" / "corpus", tmp_path / "corpus")
        data = yaml.safe_load((ROOT / "data" / "example" / "recipe.yaml").read_text())
        endpoint = {"backend": "openai", "base_url": server.url, "model": "fake"}
        data.update(output_dir="run", search={"backend": "none"},
                    llm={"generator": {**endpoint, "max_tokens": 200},
                         "judge": {**endpoint, "max_tokens": 60}},
                    budget={"max_tokens": 40_000})
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(data))
        home = tmp_path / "prefect-home"

        stopped = run(recipe, home)
        assert stopped.returncode == 1, stopped.stdout[-2000:] + stopped.stderr[-2000:]
        out = stopped.stdout + stopped.stderr
        last = [ln for ln in out.splitlines() if ln.startswith("error:")]
        assert last and last[-1].startswith("error: budget reached: stopped before ")
        assert "budget.max_tokens 40,000" in last[-1]
        assert "Traceback" not in out and "BudgetExceeded" not in out  # no Prefect ERROR lines
        db = tmp_path / "run" / "sftmill.duckdb"
        con = duckdb.connect(str(db), read_only=True)
        used = con.execute("SELECT sum(tokens_in + tokens_out) FROM llm_calls "
                           "WHERE status = 'ok'").fetchone()[0]
        con.close()
        assert 0 < used <= 40_000
        sent_before = len(server.keys)

        data["budget"] = {"max_tokens": 100_000_000}
        recipe.write_text(yaml.safe_dump(data))
        finished = run(recipe, home)
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-2000:]
        assert len(server.keys) > sent_before  # it went on
        assert len(server.keys) == len(set(server.keys))  # and paid for nothing twice
        assert (tmp_path / "run" / "dataset.jsonl").exists()
    finally:
        server.close()


def test_a_cost_cap_needs_prices_for_the_models(tmp_path):
    from examples import example_recipe

    from sftmill.core.errors import RecipeError
    from sftmill.core.recipe import load_recipe
    from sftmill.tasks.preflight import preflight

    recipe = load_recipe(example_recipe(tmp_path, budget={"max_cost": 5}))
    with pytest.raises(RecipeError, match=r"^budget.max_cost: no price for llm.generator's model"):
        preflight(recipe)


def test_the_check_counts_what_was_spent_and_the_worst_case_of_what_comes(tmp_path):
    from sftmill.core.sections import Price
    from sftmill.core.store import Store
    from sftmill.llm.budget import Budget, BudgetExceeded, held

    store = Store.open(tmp_path / "run.duckdb")
    store.insert("llm_calls", [{"call_id": "a", "key": "k", "model": "m", "status": "ok",
                                "tokens_in": 600_000, "tokens_out": 100_000}])
    budget = Budget(max_cost=1.0, max_tokens=None,
                    prices={"m": Price(input=1.0, output=2.0)})  # spent 0.80
    reserved = budget.reserve(store, "m", "answer", {i: (10_000, 0) for i in range(10)})  # 0.90: fine
    with pytest.raises(BudgetExceeded, match=r"before 10 more answer calls \(spent 0.9000 \(with calls "
                                             r"in flight\) of budget.max_cost 1; they could cost 0.3000\)"):
        budget.reserve(store, "m", "answer", {i: (10_000, 10_000) for i in range(10)})
    reserved.release(0)
    assert held(store.path)[1] == 90_000
    reserved.release_all()
    assert held(store.path) == (0.0, 0)
    budget.reserve(store, "m", "answer", {0: (50_000, 0)}).release_all()  # in flight no more: fine


class SlowLLM(ScriptedLLM):
    """A scripted LLM whose calls take a while, so chunks overlap."""

    async def _raw_complete(self, request):
        await asyncio.sleep(0.02)
        return await super()._raw_complete(request)


def test_the_cap_holds_with_chunks_in_flight_and_a_judge_beside_the_answers(tmp_path):
    """Two LLMs on one run database (answers and their judge), 600 requests
    each in chunks sent while the earlier ones are in flight: what they spend
    never passes the cap, because every chunk reserves its worst case."""
    from sftmill.core.store import Store
    from sftmill.llm.budget import BudgetExceeded, held
    from sftmill.llm.request import ChatRequest

    store = Store.open(tmp_path / "run.duckdb")
    store.set_meta("budget", json.dumps({"max_cost": None, "max_tokens": 5_000, "prices": {}}))
    stopped = []

    def stage(name: str) -> None:
        llm = SlowLLM(lambda r: "An answer.", store, model=name)
        requests = [ChatRequest.build([{"role": "user", "content": f"{name} question {i}"}],
                                      max_tokens=5, stage=name) for i in range(600)]
        try:
            llm.chat_chunks(requests[i:i + 50] for i in range(0, 600, 50))
        except BudgetExceeded as err:
            stopped.append(str(err))

    threads = [threading.Thread(target=stage, args=(name,)) for name in ("answer", "answer_checks")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent = store.scalar("SELECT sum(tokens_in + tokens_out) FROM llm_calls WHERE status = 'ok'")
    assert len(stopped) == 2 and all("budget reached" in s for s in stopped)
    assert 0 < spent <= 5_000
    assert held(store.path) == (0.0, 0)  # every reservation freed
