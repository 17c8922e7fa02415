"""The run's embeddings: batched, L2-normalised, cached by text hash in the
run's `embeddings` table.

`backend: local` runs the model in this process (`models.py`: MiniLM, or the
static model for near-duplicate removal at scale); with `runner: dask` it runs
on the workers of a Dask cluster instead (`dask_runner.py`), and the vectors
come back here and are cached alike.  `backend: openai` posts the texts to an
OpenAI-compatible `/embeddings` server through the LLM layer's client
(replicas, adaptive concurrency, retries); its vectors are cached under
"openai:<model>", apart from a local model of the same name.
"""

from __future__ import annotations

import hashlib

import numpy as np

from sftmill.core.endpoints import Embedding
from sftmill.core.store import Store
from sftmill.embed.dask_runner import embed_on_dask
from sftmill.embed.models import STATIC, encode, local_model, static_model
from sftmill.llm.loop import run_sync
from sftmill.llm.openai_http import embed_on_server


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class EmbeddingError(Exception):
    """The embedding server could not embed a batch (after its retries)."""


def embed_ahead(config: Embedding, store: Store, texts: list[str]) -> "np.ndarray | None":
    """Put the vectors of `texts` into the run's embedding cache now, for a
    later stage: work done `batch.beside` an earlier stage's calls.  Not for
    a model on a Dask cluster (its tasks belong to the stage that needs
    them): None then."""
    if config.runner == "dask":
        return None
    return Embedder(config, store).embed(texts)


class Embedder:
    def __init__(self, config: Embedding, store: Store | None = None):
        self.config = config
        self.store = store
        self.remote = config.backend == "openai"
        self.model_name = f"openai:{config.model}" if self.remote else config.model
        self._remote_dim = 0

    def _model(self):
        return local_model(self.config)

    @property
    def dim(self) -> int:
        if self.remote:
            return self._remote_dim  # known once a vector came back
        if self.model_name.startswith(STATIC):
            return static_model(self.model_name[len(STATIC):])[1].shape[1]
        model = self._model()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    def _from_cache(self, hashes: list[str]) -> dict[str, np.ndarray]:
        if self.store is None or not hashes:
            return {}
        table = self.store.arrow(
            "SELECT text_hash, vector FROM embeddings WHERE model = ? "
            "AND text_hash IN (SELECT unnest(?))",
            [self.model_name, hashes],
        )
        if table.num_rows == 0:
            return {}
        vectors = table.column("vector").combine_chunks()
        flat = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return dict(zip(table.column("text_hash").to_pylist(), flat.reshape(len(vectors), -1)))

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        hashes = [text_hash(t) for t in texts]
        known = self._from_cache(sorted(set(hashes)))
        missing = sorted({h: t for h, t in zip(hashes, texts) if h not in known}.items(),
                         key=lambda ht: len(ht[1]))  # similar lengths batch well
        if missing and self.remote:
            self._embed_remote(missing, known)
        elif missing:
            texts = [t for _, t in missing]
            if self.config.runner == "dask":
                vectors = embed_on_dask(self.config, texts)
            else:
                vectors = encode(self.config, texts)
            self._keep(list(zip((h for h, _ in missing), vectors)), known)
        return np.stack([known[h] for h in hashes])

    def _keep(self, pairs: list[tuple[str, np.ndarray]], known: dict[str, np.ndarray]) -> None:
        known.update(pairs)
        if self.store is None or not pairs:
            return
        import pyarrow as pa

        matrix = np.stack([v for _, v in pairs]).astype(np.float32, copy=False)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
        self.store.insert("embeddings", pa.table({
            "text_hash": [h for h, _ in pairs], "model": [self.model_name] * len(pairs),
            "vector": vectors.cast(pa.list_(pa.float32()))}))

    def _embed_remote(self, missing: list[tuple[str, str]], known: dict[str, np.ndarray]) -> None:
        """Embed on the server; the batches that came back are stored even
        when another failed (then `EmbeddingError`), so a retry pays only
        for the rest."""
        size = self.config.batch_size
        results = run_sync(embed_on_server(self.config, [t for _, t in missing]))
        pairs, problems = [], []
        for start, result in zip(range(0, len(missing), size), results):
            if isinstance(result, Exception):
                problems.append(result)
                continue
            vectors = np.asarray(result, dtype=np.float32)
            vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
            pairs += [(h, v) for (h, _), v in zip(missing[start:start + size], vectors)]
        self._keep(pairs, known)
        if pairs:
            self._remote_dim = len(pairs[0][1])
        if problems:
            raise EmbeddingError(f"{self.config.base_urls}: {len(problems)} of {len(results)} "
                                 f"embedding requests failed ({problems[0]})")
