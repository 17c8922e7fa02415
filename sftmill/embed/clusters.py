"""Topics of a set of passages: k-means over their unit embeddings, and each
cluster's distinctive words (class-based TF-IDF, as BERTopic weighs them:
a word's share in the cluster against its share everywhere)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from sftmill.core.text import STOPWORDS, tokens


def _kmeans_once(vectors: np.ndarray, k: int, rng: np.random.Generator, rounds: int,
                 ) -> tuple[np.ndarray, float]:
    n = len(vectors)
    centres = [vectors[rng.integers(n)]]
    for _ in range(1, k):
        distance = np.clip(1 - np.max(vectors @ np.asarray(centres).T, axis=1), 0, None) ** 2
        weights = distance / distance.sum() if distance.sum() > 0 else np.full(n, 1 / n)
        centres.append(vectors[rng.choice(n, p=weights)])
    centres = np.asarray(centres)
    labels = np.full(n, -1)
    for _ in range(rounds):
        new = np.argmax(vectors @ centres.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = vectors[labels == j]
            if len(members):
                mean = members.mean(axis=0)
                centres[j] = mean / (np.linalg.norm(mean) or 1.0)
    return labels, float(np.sum(np.max(vectors @ centres.T, axis=1)))


def kmeans(vectors: np.ndarray, k: int, seed: int = 0, rounds: int = 50, starts: int = 10,
           ) -> np.ndarray:
    """Cluster labels of unit `vectors`: cosine k-means from `starts`
    k-means++ starts, the tightest kept (deterministic for a seed)."""
    k = max(1, min(k, len(vectors)))
    rng = np.random.default_rng(seed)
    runs = [_kmeans_once(vectors, k, rng, rounds) for _ in range(starts)]
    return max(runs, key=lambda run: run[1])[0]


def distinctive_words(texts: list[str], labels: np.ndarray, top: int = 6,
                      ignore: frozenset[str] = frozenset()) -> dict[int, list[str]]:
    """Per cluster, the words that mark it out (c-TF-IDF), best first."""
    per_cluster: dict[int, Counter] = {}
    for text, label in zip(texts, labels):
        words = [w for w in tokens(text) if len(w) > 2 and not w.isdigit()
                 and w not in STOPWORDS and w not in ignore]
        per_cluster.setdefault(int(label), Counter()).update(words)
    overall = Counter()
    for counts in per_cluster.values():
        overall.update(counts)
    mean_words = sum(overall.values()) / max(len(per_cluster), 1)
    out = {}
    for label, counts in per_cluster.items():
        size = sum(counts.values()) or 1
        score = {w: (c / size) * math.log(1 + mean_words / overall[w]) for w, c in counts.items() if c > 1}
        out[label] = sorted(score, key=lambda w: (-score[w], w))[:top]
    return out
