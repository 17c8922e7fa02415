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
`NoveltyIndex` avoids the quadratic scan with two exact bounds: LCS is at
most the multiset token overlap, so a pool instruction can exceed the
threshold θ only if it shares more than θ|a|/(2−θ) of the candidate's token
occurrences; by pigeonhole it must then contain one of the candidate's
|a| − ⌊θ|a|/(2−θ)⌋ rarest occurrences.  Only instructions in those tokens'
posting lists are scored exactly (bit-parallel LCS), so decisions match the
brute-force check while most of the pool is never touched.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from typing import Iterable

ROUGE_THRESHOLD = 0.7
MIN_WORDS, MAX_WORDS = 3, 150
BLOCKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
             "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart",
             "diagram")
_BLOCK_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLOCKLIST) + r")\b", re.IGNORECASE)
_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


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


class NoveltyIndex:
    """Same decisions as BruteForceNovelty, without scanning the whole pool."""

    def __init__(self, threshold: float = ROUGE_THRESHOLD, pool: Iterable[str] = ()):
        self.threshold = threshold
        self.items: list[list[str]] = []
        self.counts: list[Counter[str]] = []
        self.postings: dict[str, set[int]] = defaultdict(set)
        self.df: Counter[str] = Counter()
        self.scored = 0  # exact ROUGE-L computations, for benchmarks
        for text in pool:
            self.add(text)

    def add(self, text: str) -> None:
        toks = tokens(text)
        idx = len(self.items)
        self.items.append(toks)
        self.counts.append(Counter(toks))
        for token in set(toks):
            self.postings[token].add(idx)
            self.df[token] += 1

    def _candidates(self, a: list[str]) -> set[int]:
        theta = self.threshold
        must_share = theta * len(a) / (2 - theta)  # overlap must exceed this
        prefix = len(a) - math.floor(must_share)
        rarest_first = sorted(a, key=lambda t: (self.df.get(t, 0), t))
        found: set[int] = set()
        for token in rarest_first[:prefix]:
            found |= self.postings.get(token, set())
        return found

    def most_similar(self, text: str) -> float:
        """The pool's highest ROUGE-L with `text` when it is above the
        threshold; otherwise some value at most the threshold."""
        a = tokens(text)
        if not a:
            return 0.0
        theta, best = self.threshold, 0.0
        lo, hi = theta * len(a) / (2 - theta), (2 - theta) * len(a) / theta
        counts = Counter(a)
        for idx in self._candidates(a):
            b = self.items[idx]
            if not lo < len(b) < hi:
                continue
            overlap = sum(min(n, self.counts[idx][t]) for t, n in counts.items())
            if 2 * overlap / (len(a) + len(b)) <= theta:
                continue
            self.scored += 1
            best = max(best, rouge_l(a, b))
        return best

    def is_novel(self, text: str) -> bool:
        return self.most_similar(text) <= self.threshold
