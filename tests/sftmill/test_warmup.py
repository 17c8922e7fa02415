import threading

from sftmill.config import Curation
from sftmill.tasks.checks import offensive
from sftmill.tasks.curate import models_to_load
from sftmill.warmup import warm_up


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
