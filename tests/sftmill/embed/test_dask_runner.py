"""Embedding on a real Dask LocalCluster (prefect-dask) gives the vectors
of in-process embedding, also from inside a Prefect task as the stages call it."""

import numpy as np
import pytest
from prefect import flow, task

import sftmill.embed.models as embeddings
from sftmill.core.endpoints import Embedding
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder

pytestmark = pytest.mark.real_model

TEXTS = [f"How does {what} change the {which} of a hadron?"
         for what in ("colour confinement", "the strong coupling", "gluon self-interaction",
                      "quark mass", "asymptotic freedom", "chiral symmetry breaking")
         for which in ("mass", "spin", "size", "lifetime", "charge radius", "decay width", "structure")]
TEXTS += [f"Passage {i}: " + "Gluons carry colour charge and bind quarks into hadrons. " * 400
          for i in range(30)]  # 690 KB in all: more than Prefect takes as a flow run's parameters


@task
def embed_as_a_stage(config: Embedding, db_path: str) -> np.ndarray:
    return Embedder(config, Store.open(db_path)).embed(TEXTS)


@flow
def run_stage(config: Embedding, db_path: str) -> np.ndarray:
    return embed_as_a_stage(config, db_path)


def test_dask_local_cluster_gives_the_in_process_vectors(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    embeddings._load.cache_clear()
    config = Embedding(runner="dask", dask_workers=2, dask_chunk=10)
    on_dask = run_stage(config, str(tmp_path / "dask.duckdb"))
    assert embeddings._load.cache_info().currsize == 0  # the model ran in the workers only

    in_process = Embedder(Embedding(), Store.open(tmp_path / "here.duckdb")).embed(TEXTS)
    assert on_dask.shape == in_process.shape == (len(TEXTS), 384)
    assert np.allclose(on_dask, in_process, atol=1e-5)

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_="encode-chunk")))
    assert len(runs) == 8 and all(r.state.is_completed() for r in runs)  # 72 texts, 10 per task

    store = Store.open(tmp_path / "dask.duckdb")  # cached like in-process vectors
    assert store.query_dicts("SELECT count(*) AS n FROM embeddings")[0]["n"] == len(TEXTS)
    again = Embedder(config, store).embed(TEXTS)  # all cached: no cluster started
    assert np.array_equal(again, on_dask)


def test_dask_runner_is_for_the_local_backend_only():
    with pytest.raises(ValueError, match="backend 'local' only"):
        Embedding(backend="openai", base_url="http://x/v1", runner="dask")
    with pytest.raises(ValueError, match="needs runner: dask"):
        Embedding(dask_address="tcp://127.0.0.1:8786")
