"""Self-Instruct's ROUGE-L novelty check at pool sizes of 50k+.

Measures: the time to decide keep/drop for N synthetic instructions (the
pool growing with every kept one) with `NoveltyIndex`, and, on the first
`BRUTE` of them, with the brute-force scan, plus how many exact ROUGE-L
computations each needed.  The two must take the same decisions (asserted
here as a sanity check; the test suite checks it on 2,000).

Run:  .venv/bin/python benchmarks/self_instruct_novelty.py [N]
"""

from __future__ import annotations

import sys
import time

import random  # noqa: E402

from sftmill.tasks.generators.self_instruct_filters import BruteForceNovelty, NoveltyIndex

BRUTE = 3000
COMMON = "the a of to and in for with how what why explain describe give list".split()


def synthetic_instructions(n: int, seed: int = 0) -> list[str]:
    """Diverse instructions (Zipf-distributed vocabulary of 20k words, 8-20
    words each), a fifth of them light edits of an earlier one."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20_000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < 0.2:
            words = rng.choice(out).split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
        else:
            length = rng.randint(8, 20)
            words = [rng.choice(COMMON) if rng.random() < 0.3 else w
                     for w in rng.choices(vocab, weights, k=length)]
        out.append(" ".join(words))
    return out


def run(checker, texts):
    started = time.perf_counter()
    decisions = []
    for text in texts:
        keep = checker.is_novel(text)
        decisions.append(keep)
        if keep:
            checker.add(text)
    return decisions, time.perf_counter() - started


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    texts = synthetic_instructions(n, seed=7)
    fast, fast_s = run(NoveltyIndex(), texts)
    slow, slow_s = run(BruteForceNovelty(), texts[:BRUTE])
    assert fast[:BRUTE] == slow
    print(f"index: {n} candidates, {sum(fast)} kept, {fast_s:.1f} s")
    print(f"brute force: first {BRUTE} candidates, {sum(slow)} kept, {slow_s:.1f} s "
          f"(the scan grows with the pool: quadratic in N)")
