"""Stage cache keys: a deleted output folder never lets a cached stage claim
tables that are gone (`sftmill curate` rerun after its output folder was deleted must not fail
with "Table input_items does not exist")."""

import shutil

from sftmill.core.store import Store
from sftmill.tasks.generators.evol import EvolConfig, evolve_round
from sftmill.tasks.sources.pairs import load_inputs
from sftmill.tasks.stage_task import cache_key


def keys_before_and_after_deleting(out, key):
    first, again = key(), key()
    Store.close_all()  # a new process, as the rerun is
    shutil.rmtree(out)
    return first, again, key()


def test_a_stage_keyed_by_its_run_database_path_reruns_after_the_folder_is_deleted(tmp_path):
    params = {"input_path": str(tmp_path / "pairs.jsonl"), "db_path": str(tmp_path / "out" / "x.duckdb"),
              "fingerprint": "same file"}
    first, again, after = keys_before_and_after_deleting(
        tmp_path / "out", lambda: cache_key(load_inputs.fn, (), (), params))
    assert first == again != after


def test_a_generator_config_keys_its_run_database(tmp_path):
    cfg = EvolConfig(input_path=str(tmp_path / "seeds.txt"), output_dir=str(tmp_path / "out"))
    key = lambda: cache_key(evolve_round.fn, (), (), {"cfg": cfg, "previous": None, "round_no": 1})  # noqa: E731
    first, again, after = keys_before_and_after_deleting(tmp_path / "out", key)
    assert first == again != after


def test_stages_in_subflows_record_the_root_run_asking_prefect_once_per_flow_run(prefect_harness,
                                                                                monkeypatch):
    """`stage_stats.run_id` is the top-level run (the summary reads it so);
    Prefect works the root out through several API calls each time it is
    asked, so it is asked once per flow run, not once per stage."""
    from prefect import flow, task
    from prefect.runtime import flow_run

    from sftmill.tasks.stage_task import current_run_id

    asked = []
    real = flow_run.FIELDS["root_flow_run_id"]
    monkeypatch.setitem(flow_run.FIELDS, "root_flow_run_id", lambda: asked.append(1) or real())

    @task
    def stage_run_id(stage: int) -> str:
        return current_run_id()

    @flow
    def half() -> list[str]:
        return [stage_run_id(stage) for stage in range(3)]

    @flow
    def whole() -> tuple[str, list[str]]:
        return str(flow_run.id), half() + half()

    root, seen = whole()
    assert seen == [root] * 6
    assert len(asked) == 2  # one per subflow run
