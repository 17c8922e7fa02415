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


def declared_stage(**declaration):
    """A stage that reads `recipe.<section>` and returns what it is handed (or makes)."""
    from sftmill.tasks.stage_task import stage_task

    @stage_task("probe", **declaration)
    def probe(recipe, section: str, upstream=None):
        getattr(recipe, section)
        return upstream() if callable(upstream) else upstream

    return probe.fn


def test_a_stage_sees_only_the_recipe_sections_it_declares(tmp_path):
    import pytest

    from examples import example_recipe
    from sftmill.core.errors import UndeclaredRecipeRead
    from sftmill.core.recipe import load_recipe

    recipe = load_recipe(example_recipe(tmp_path))
    probe = declared_stage(recipe=("sizes",))
    assert probe(recipe, "sizes") is None
    for always in ("name", "run_dir", "db_path"):  # its identity and its run folder
        assert probe(recipe, always) is None
    with pytest.raises(UndeclaredRecipeRead, match=r"stage 'probe' reads recipe.answers but does "
                                                   r"not declare it \(declared: sizes\)"):
        probe(recipe, "answers")


def test_a_stage_declaring_a_section_the_recipe_has_not_fails_at_import():
    import pytest

    with pytest.raises(ValueError, match="stage 'probe' declares no recipe section 'answer'"):
        declared_stage(recipe=("answer",))


def test_tables_in_and_out_of_a_stage_are_declared(tmp_path):
    import pytest

    from examples import example_recipe
    from sftmill.core.recipe import load_recipe
    from sftmill.core.store import TableRef
    from sftmill.tasks.stage_task import StageResult, UndeclaredTable

    recipe = load_recipe(example_recipe(tmp_path))
    chunks = StageResult("chunk", TableRef(str(tmp_path / "x.duckdb"), "chunks", "f", 1), 1, 1, 0.0)
    probe = declared_stage(recipe=("sizes",), reads=("chunks",))
    assert probe(recipe, "sizes", chunks) is chunks  # a stage may hand on what it read
    with pytest.raises(UndeclaredTable, match="stage 'probe' is handed table 'chunks'"):
        declared_stage(recipe=("sizes",), reads=("documents",))(recipe, "sizes", chunks)
    with pytest.raises(UndeclaredTable, match="stage 'probe' hands on table 'chunks' but neither"):
        declared_stage(recipe=("sizes",), writes=("documents",))(recipe, "sizes", lambda: chunks)


def test_the_cache_key_follows_the_declared_sections_only(tmp_path):
    from examples import example_recipe
    from sftmill.core.recipe import load_recipe
    from sftmill.tasks.stages.chunk import chunk

    recipe = load_recipe(example_recipe(tmp_path))
    key = lambda r: cache_key(chunk.fn, ("chunking",), (), {"recipe": r, "documents": None})  # noqa: E731
    other_sizes = recipe.model_copy(update={"sizes": recipe.sizes.model_copy(update={"target_prompts": 7})})
    other_chunks = recipe.model_copy(update={"chunking": recipe.chunking.model_copy(update={"max_tokens": 99})})
    assert key(recipe) == key(other_sizes) != key(other_chunks)


def test_a_recipe_file_is_parsed_once_until_it_changes(tmp_path):
    from examples import example_recipe
    from sftmill.core.recipe import load_recipe

    recipe_file = example_recipe(tmp_path)
    first = load_recipe(recipe_file)
    assert load_recipe(recipe_file) is first  # the flows and subflows of a run share it
    recipe_file.write_text(recipe_file.read_text().replace("target_prompts: 160", "target_prompts: 64"))
    changed = load_recipe(recipe_file)
    assert changed is not first and changed.sizes.target_prompts != first.sizes.target_prompts
