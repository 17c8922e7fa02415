"""Near-duplicate removal at a million vectors: seconds and recall of
sftmill's own `near_duplicates` (tasks/stages/dedup.py) on planted duplicates.

    python benchmarks/dedup_million.py [--n 1000000] [--dim 384] [--threshold 0.92]

The vectors imitate sentence embeddings of one domain: `n / 50` topic
centres, every vector a normalised mix of its topic's centre and its own
noise (cosine to other vectors of its topic ~0.5, to other topics ~0), and
5 % of them planted duplicates: a copy of another vector with noise, at a
cosine drawn from [threshold + 0.01, 0.99].  Recall is the share of planted
pairs that do not survive whole (at least one of the two removed: the
output holds no copy of the pair).  Prints one JSON line; RSS is the
process's peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(n: int, dim: int, threshold: float, seed: int = 0):
    """Vectors in a random order and the planted (original, duplicate) pairs."""
    rng = np.random.default_rng(seed)
    n_dup = n // 20
    base = n - n_dup
    centres = unit(rng.standard_normal((max(1, n // 50), dim), dtype=np.float32))
    topic = rng.integers(0, len(centres), base)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, base, 100_000):  # topic share 0.5 of the variance
        stop = min(base, start + 100_000)
        noise = unit(rng.standard_normal((stop - start, dim), dtype=np.float32))
        vectors[start:stop] = unit(centres[topic[start:stop]] + noise)
    originals = rng.integers(0, base, n_dup)
    cos = rng.uniform(threshold + 0.01, 0.99, n_dup).astype(np.float32)
    noise = rng.standard_normal((n_dup, dim), dtype=np.float32)
    src = vectors[originals]
    noise -= (noise * src).sum(1, keepdims=True) * src  # orthogonal to the original
    noise = unit(noise)
    vectors[base:] = cos[:, None] * src + np.sqrt(1 - cos[:, None] ** 2) * noise
    order = rng.permutation(n)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    pairs = np.stack([position[originals], position[np.arange(base, n)]], axis=1)
    return np.ascontiguousarray(vectors[order]), pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--threshold", type=float, default=0.92)
    args = parser.parse_args()
    from sftmill.tasks.stages.dedup import near_duplicates

    started = time.perf_counter()
    vectors, pairs = planted(args.n, args.dim, args.threshold)
    made = time.perf_counter() - started
    started = time.perf_counter()
    removed = near_duplicates(vectors, args.threshold)
    seconds = time.perf_counter() - started

    found = sum(int(a) in removed or int(b) in removed for a, b in pairs)
    print(json.dumps({"n": args.n, "dim": args.dim, "threshold": args.threshold,
                      "planted_pairs": len(pairs), "generate_s": round(made, 1),
                      "near_duplicates_s": round(seconds, 1), "removed": len(removed),
                      "recall": round(found / len(pairs), 4),
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


if __name__ == "__main__":
    main()
