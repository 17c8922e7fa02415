"""Embeddings from an OpenAI-compatible /embeddings server: batches, order
by `index`, normalisation, the cache, a failed batch that loses nothing, and
preflight."""

import numpy as np
import pytest
from fake_openai import FakeOpenAI

from sftmill.core.endpoints import Embedding
from sftmill.core.errors import RecipeError
from sftmill.core.store import Store
from sftmill.embed.embedder import Embedder, EmbeddingError

TEXTS = ["gluons carry colour charge", "quarks are confined in hadrons",
         "gluons carry colour charge", "the proton holds three valence quarks",
         "sourdough bread needs a long proof", "colour charge of gluons"]


def served(url, **extra) -> Embedding:
    return Embedding(backend="openai", base_url=url, model="fake", batch_size=2, max_retries=1,
                     **extra)


@pytest.fixture
def server():
    fake = FakeOpenAI(delay_s=0.02)
    yield fake
    fake.close()


def test_server_vectors_are_batched_ordered_normalised_and_cached(tmp_path, server, monkeypatch):
    monkeypatch.setattr("sftmill.embed.models._load",
                        lambda *a: pytest.fail("a served model must not load a local one"))
    store = Store.open(tmp_path / "run.duckdb")
    vectors = Embedder(served(server.url), store).embed(TEXTS)
    # 5 distinct texts, 2 per request: 3 requests, each text sent once
    assert sorted(len(batch) for batch in server.embedded) == [1, 2, 2]
    assert sorted(t for batch in server.embedded for t in batch) == sorted(set(TEXTS))
    assert vectors.shape == (6, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.allclose(vectors[0], vectors[2])
    # the reply listed each batch backwards: rows must still follow `index`
    assert vectors[0] @ vectors[5] > 0.6 > vectors[0] @ vectors[4]
    assert store.execute("SELECT DISTINCT model FROM embeddings") == [("openai:fake",)]

    again = Embedder(served(server.url), store).embed(list(reversed(TEXTS)))
    assert len(server.embedded) == 3  # all from the cache
    assert np.allclose(again, vectors[::-1])


def test_numbers_from_a_server_that_ignores_base64(tmp_path, server):
    packed = Embedder(served(server.url)).embed(TEXTS[:2])
    server.embedding_base64 = False
    plain = Embedder(served(server.url)).embed(TEXTS[:2])
    assert np.allclose(packed, plain) and len(server.embedded) == 2


def test_a_failed_batch_keeps_the_others_and_the_retry_pays_only_for_it(tmp_path, server):
    store = Store.open(tmp_path / "run.duckdb")
    server.down_after = 2  # the third request gets 503s
    with pytest.raises(EmbeddingError, match="1 of 3 embedding requests failed"):
        Embedder(served(server.url), store).embed(TEXTS)
    kept = store.count("embeddings")  # the two batches that were answered
    assert kept in (3, 4)  # which batch came third depends on timing
    server.down_after = None
    sent_before = sum(len(b) for b in server.embedded)
    Embedder(served(server.url), store).embed(TEXTS)
    assert sum(len(b) for b in server.embedded) - sent_before == 5 - kept


def test_served_embeddings_need_a_reachable_server(tmp_path):
    from examples import example_recipe

    from sftmill.core.recipe import load_recipe
    from sftmill.tasks.preflight import preflight

    with pytest.raises(ValueError, match="needs base_url"):
        Embedding(backend="openai")
    recipe = load_recipe(example_recipe(tmp_path, embedding={
        "backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "bge"}))
    with pytest.raises(RecipeError, match=r"^embedding: cannot reach http://127.0.0.1:9/v1/models"):
        preflight(recipe)
