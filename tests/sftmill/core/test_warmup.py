import threading

from sftmill.core.curation import Curation
from sftmill.core.warmup import warm_up
from sftmill.tasks.curation.checks import offensive
from sftmill.tasks.curation.curate import models_to_load


def test_warm_up_runs_every_loader_in_one_named_thread_past_a_failure():
    seen = []

    def fails():
        seen.append(("fails", threading.current_thread().name))
        raise RuntimeError("no model here")

    def loads():
        seen.append(("loads", threading.current_thread().name))

    thread = warm_up("warm-test", [fails, loads])
    thread.join(10)
    assert seen == [("fails", "warm-test"), ("loads", "warm-test")]
    assert warm_up("warm-test", []) is None  # nothing to load, no thread


def test_curation_warms_up_the_offensive_classifier_only_when_it_is_used():
    assert models_to_load(Curation()) == [offensive.model]
    assert models_to_load(Curation(offensive={"enabled": False})) == []
    assert models_to_load(Curation(enabled=False)) == []
    assert callable(offensive.model())  # the loader gives what offensive_scores calls


def test_work_for_when_the_run_waits_starts_with_the_first_calls_sent():
    from fakes import ScriptedLLM

    from sftmill.core.warmup import when_waiting
    from sftmill.llm.request import ChatRequest

    runs, done = [], threading.Event()
    when_waiting("warm-test-waiting", [lambda: runs.append("first")])
    when_waiting("warm-test-waiting", [lambda: (runs.append("again"), done.set())])  # replaces it
    assert not done.wait(0.3)  # nothing runs until calls are sent
    ScriptedLLM(lambda _request: "ok").chat_many([ChatRequest.build([{"role": "user", "content": "hi"}])])
    assert done.wait(10) and runs == ["again"]
