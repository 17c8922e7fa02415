"""Self-Instruct (Wang et al., 2022) filters, faithful to the paper, and a
fast novelty check that takes the same keep/drop decisions as comparing a
candidate's ROUGE-L with every instruction in the pool.

Instruction filters (reason in brackets): fewer than 3 or more than 150
words [too_short, too_long]; a blocklisted keyword the model cannot act on
[blocklisted_keyword]; starting with punctuation [starts_with_punctuation] or
a non-ASCII character [starts_with_non_ascii]; starting with "Write a
program" [write_a_program]; ROUGE-L above 0.7 with an instruction already in
the pool [rouge_l_duplicate].

Instance filters: empty output [empty_output], output equal to input
[output_equals_input], one input with different outputs
[conflicting_outputs], output ending with a colon [trailing_colon].

Novelty: ROUGE-L F = 2·LCS/(|a|+|b|) over lowercase alphanumeric tokens.
`NoveltyIndex` avoids scoring the whole pool with one exact bound: LCS is at
most the multiset token overlap, so a pool instruction b can exceed the
threshold θ only if 2·overlap(a, b) > θ(|a|+|b|).  The overlaps of the
candidate with every pool instruction come from the posting lists of its
tokens in a few vectorised numpy additions; only instructions that pass the
bound are scored exactly (bit-parallel LCS), so decisions match the
brute-force check while almost none of the pool is scored.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from typing import Iterable

import numpy as np

from sftmill.core.text import tokens

ROUGE_THRESHOLD = 0.7
MIN_WORDS, MAX_WORDS = 3, 150
BLOCKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
             "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart",
             "diagram")
_BLOCK_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLOCKLIST) + r")\b", re.IGNORECASE)

def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (bit-parallel, Hyyrö 2004)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = defaultdict(int)
    for i, token in enumerate(a):
        masks[token] |= 1 << i
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    return 2 * lcs_length(a, b) / (len(a) + len(b))


def instruction_reject(instruction: str) -> str | None:
    """The reason a generated instruction is dropped by the textual filters
    (None: it passes; novelty is checked separately)."""
    text = instruction.strip()
    n_words = len(text.split())
    if n_words < MIN_WORDS:
        return "too_short"
    if n_words > MAX_WORDS:
        return "too_long"
    if _BLOCK_RE.search(text):
        return "blocklisted_keyword"
    if text[0] in string.punctuation:
        return "starts_with_punctuation"
    if not text[0].isascii():
        return "starts_with_non_ascii"
    if text.lower().startswith("write a program"):
        return "write_a_program"
    return None


def instance_rejects(instances: list[dict]) -> list[str | None]:
    """Per instance, the reason it is dropped (None: kept)."""
    outputs_by_input: dict[str, set[str]] = defaultdict(set)
    for inst in instances:
        if inst.get("output", "").strip():  # an empty output is dropped for its own reason
            outputs_by_input[inst.get("input", "").strip()].add(inst["output"].strip())
    reasons: list[str | None] = []
    for inst in instances:
        given, output = inst.get("input", "").strip(), inst.get("output", "").strip()
        if not output:
            reasons.append("empty_output")
        elif given and output == given:
            reasons.append("output_equals_input")
        elif len(outputs_by_input[given]) > 1:
            reasons.append("conflicting_outputs")
        elif output.endswith(":"):
            reasons.append("trailing_colon")
        else:
            reasons.append(None)
    return reasons


class BruteForceNovelty:
    """The original check: ROUGE-L against every instruction in the pool."""

    def __init__(self, threshold: float = ROUGE_THRESHOLD):
        self.threshold = threshold
        self.pool: list[list[str]] = []

    def most_similar(self, text: str) -> float:
        a = tokens(text)
        return max((rouge_l(a, b) for b in self.pool), default=0.0)

    def is_novel(self, text: str) -> bool:
        return self.most_similar(text) <= self.threshold

    def add(self, text: str) -> None:
        self.pool.append(tokens(text))


class _Postings:
    """One token's posting list as growable numpy arrays (pool index, count)."""

    __slots__ = ("ids", "counts", "size")

    def __init__(self):
        self.ids = np.empty(8, dtype=np.int32)
        self.counts = np.empty(8, dtype=np.int16)
        self.size = 0

    def append(self, idx: int, count: int) -> None:
        if self.size == len(self.ids):
            self.ids = np.resize(self.ids, 2 * self.size)
            self.counts = np.resize(self.counts, 2 * self.size)
        self.ids[self.size] = idx
        self.counts[self.size] = min(count, 32767)
        self.size += 1


class NoveltyIndex:
    """Same decisions as BruteForceNovelty, without scoring the whole pool."""

    def __init__(self, threshold: float = ROUGE_THRESHOLD, pool: Iterable[str] = ()):
        self.threshold = threshold
        self.items: list[list[str]] = []
        self.lengths = np.zeros(1024, dtype=np.int32)
        self.postings: dict[str, _Postings] = {}
        self.scored = 0  # exact ROUGE-L computations, for benchmarks
        for text in pool:
            self.add(text)

    def add(self, text: str) -> None:
        toks = tokens(text)
        idx = len(self.items)
        self.items.append(toks)
        if idx == len(self.lengths):
            self.lengths = np.resize(self.lengths, 2 * idx)
        self.lengths[idx] = len(toks)
        for token, count in Counter(toks).items():
            if token not in self.postings:
                self.postings[token] = _Postings()
            self.postings[token].append(idx, count)

    def _candidates(self, a: list[str]) -> np.ndarray:
        """Pool indexes whose overlap bound 2·overlap/(|a|+|b|) exceeds θ."""
        n = len(self.items)
        overlap = np.zeros(n, dtype=np.int32)
        for token, count in Counter(a).items():
            plist = self.postings.get(token)
            if plist is not None:
                ids = plist.ids[:plist.size]
                overlap[ids] += np.minimum(plist.counts[:plist.size], count)
        bound_ok = 2 * overlap > self.threshold * (len(a) + self.lengths[:n])
        return np.flatnonzero(bound_ok)

    def most_similar(self, text: str) -> float:
        """A ROUGE-L above the threshold when some pool instruction exceeds
        it (the first one found); otherwise a value at most the threshold."""
        a = tokens(text)
        if not a or not self.items:
            return 0.0
        best = 0.0
        for idx in self._candidates(a):
            self.scored += 1
            best = max(best, rouge_l(a, self.items[idx]))
            if best > self.threshold:
                break
        return best

    def is_novel(self, text: str) -> bool:
        return self.most_similar(text) <= self.threshold
