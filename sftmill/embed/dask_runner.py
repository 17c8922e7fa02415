"""Embedding on a Dask cluster (`embedding.runner: dask`): the texts an
Embedder is missing, cut into chunks of `dask_chunk`, each a Prefect task
submitted to prefect-dask's DaskTaskRunner — a LocalCluster of
`dask_workers` processes, or the scheduler at `dask_address`.  Texts travel
to the workers through Dask, never through Prefect's API (whose flow-run
parameters stop at 512 KB).  Workers load the model once per process; the
vectors come back to the caller, which caches them in the run's
`embeddings` table as ever.  Called from a stage, the chunks show in the UI
as task runs `encode-chunk` nested in that stage's task run.
"""

from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from sftmill.core.endpoints import Embedding
from sftmill.embed.models import encode


@task(name="encode-chunk", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_delay_seconds=2)
def encode_chunk(config: Embedding, texts: list[str]) -> np.ndarray:
    try:  # one torch thread per Dask worker thread: workers do not oversubscribe the cores
        import torch
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except (ImportError, ValueError):
        pass  # not on a Dask worker
    return encode(config, texts)


def task_runner(config: Embedding):
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": config.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def embed_on_dask(config: Embedding, texts: list[str]) -> np.ndarray:
    """(len(texts), dim) unit vectors computed on the Dask cluster."""
    size = config.dask_chunk
    with task_runner(config) as runner:
        futures = [runner.submit(encode_chunk, parameters={"config": config, "texts": texts[i:i + size]})
                   for i in range(0, len(texts), size)]
        return np.concatenate([f.result() for f in futures])
