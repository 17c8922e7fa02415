import numpy as np
import pytest

import sftmill.tasks.dedup as dedup
from sftmill.config import Embedding
from sftmill.embeddings import Embedder

PAIRS = [
    ("What role do quarks and gluons play in particle physics?",
     "What is the role of quarks and gluons in particle physics?"),
    ("How many types of quarks are there, and what are their names?",
     "How many kinds of quarks exist and what are they called?"),
    ("Why can a single quark never be observed on its own?",
     "Why is it impossible to observe a single isolated quark?"),
]
DIFFERENT = [
    "Explain how lattice QCD computes the proton mass.",
    "Describe the experiment that first showed evidence for gluons.",
    "Compare mesons and baryons in terms of their quark content.",
    "What is the quark-gluon plasma and where was it created?",
]


@pytest.mark.real_model
def test_paraphrase_pairs_collapse_and_different_prompts_stay():
    texts = [a for a, _ in PAIRS] + [b for _, b in PAIRS] + DIFFERENT
    vectors = Embedder(Embedding()).embed(texts)
    removed = dedup.near_duplicates(vectors, threshold=0.85)
    assert set(removed) == {3, 4, 5}  # each paraphrase gives way to its earlier original
    assert {removed[3 + i][0] for i in range(3)} == {0, 1, 2}
    assert all(removed[3 + i][0] == i for i in range(3))


def test_representative_is_the_first_in_priority_order_and_chains_do_not_cascade():
    # a≈b (0.95), b≈c (0.95), a·c = 0.81 below threshold 0.9: c must stay.
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.3176), np.sin(0.3176)])
    c = np.array([np.cos(0.6352), np.sin(0.6352)])
    removed = dedup.near_duplicates(np.stack([a, b, c]).astype(np.float32), 0.9)
    assert set(removed) == {1}
    assert removed[1][0] == 0


def test_approximate_index_agrees_with_exact_search(monkeypatch):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 32)).astype(np.float32)
    noisy = base[:100] + rng.normal(scale=0.05, size=(100, 32)).astype(np.float32)
    vectors = np.vstack([base, noisy])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = dedup.near_duplicates(vectors, 0.95)
    monkeypatch.setattr(dedup, "EXACT_MAX", 10)  # force the HNSW path
    approx = dedup.near_duplicates(vectors, 0.95)
    assert len(exact) == 100
    assert set(approx) == set(exact)


def test_no_prompts():
    assert dedup.near_duplicates(np.zeros((0, 8), dtype=np.float32), 0.9) == {}


def test_new_near_duplicates_against_old_rows_earlier_new_rows_and_groups():
    from sftmill.tasks.dedup import new_near_duplicates

    def unit(*xs):
        v = np.array(xs, dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    old = unit([1, 0, 0], [0, 1, 0])
    new = unit([1, 0.01, 0],    # repeats old 0
               [0, 0, 1],       # new
               [0, 0.01, 1],    # repeats new 1
               [0.01, 1, 0])    # repeats old 1, but same group: kept
    removed = new_near_duplicates(old, new, 0.95, old_groups=["a", "b"],
                                  new_groups=["x", "y", "z", "b"])
    assert {k: v[:2] for k, v in removed.items()} == {0: ("old", 0), 2: ("new", 1)}
    assert new_near_duplicates(old[:0], new, 0.95) == {2: ("new", 1, pytest.approx(0.99995, abs=1e-3))}
