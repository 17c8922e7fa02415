"""Decontamination: word n-gram overlap between a record and the evaluation
sets the user names (JSONL or Parquet files of benchmark questions).

Texts are lower-cased and split into words (letters and digits); every run
of `n` words (13 by default, as in GPT-3's and Llama's decontamination) of a
benchmark item is indexed by hash.  A record's score is how many of its own
n-grams — instruction and response — are in a benchmark; the detail names
the benchmark and quotes the first matched span.  A near-copy of a question
(a word changed, a clause added) is still caught while it keeps one run of
`n` words intact; a benchmark item shorter than `n` words is indexed whole
(at least `MIN_WORDS` words), so short questions are caught when copied.

A benchmark file is JSONL, a JSON array or Parquet; the question is read
from the usual fields (`TEXT_FIELDS`) or those the config names, dotted for
nested ones (`question.stem`, as ARC nests it; a field holding an object
with a `stem` or `text` is read there too).  Answers and passages are read
only when named (`fields`): a benchmark's reading passage shared with a
record is not a leaked question.  A file from which no question can be
read stops the run before any work (`check_benchmarks`), naming the file
and the fields tried.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sftmill.core.curation import Decontamination
from sftmill.core.errors import RecipeError
from sftmill.tasks.curation.checks import Record, Score

WORD = re.compile(r"[^\W_]+")
MIN_WORDS = 8  # a benchmark item shorter than this is not indexed (too common to mean a copy)
TEXT_FIELDS = ("question", "prompt", "instruction", "input", "query", "problem", "text")
NESTED_TEXT = ("stem", "text")  # where an object-valued field keeps its text (ARC: question.stem)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _gram_hash(gram: list[str]) -> bytes:
    return hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest()


def grams(tokens: list[str], n: int) -> list[tuple[int, bytes]]:
    """(start, hash) of every n-gram of `tokens` (the whole list when shorter)."""
    if len(tokens) < n:
        return [(0, _gram_hash(tokens))] if len(tokens) >= MIN_WORDS else []
    return [(i, _gram_hash(tokens[i:i + n])) for i in range(len(tokens) - n + 1)]


def _rows(path: Path) -> list:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):  # a JSON array of rows
        try:
            rows = json.loads(text)
            return rows if isinstance(rows, list) else []
        except json.JSONDecodeError:
            pass
    rows = []
    for line in text.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _field(row: dict, name: str) -> str | None:
    value: object = row
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, dict):
        value = next((value[k] for k in NESTED_TEXT if isinstance(value.get(k), str)), None)
    if isinstance(value, (str, int, float)) and str(value).strip():
        return str(value)
    return None


def benchmark_texts(path: Path, fields: list[str] | None = None) -> list[str]:
    """The texts of a benchmark file: the named fields of every row, or the
    usual ones (question, prompt, …) when none is named."""
    texts = []
    for row in _rows(path):
        if isinstance(row, str):
            texts.append(row)
        elif isinstance(row, dict):
            texts += [t for k in (fields or TEXT_FIELDS) if (t := _field(row, k)) is not None]
    return texts


def check_benchmarks(cfg: Decontamination, where: str = "curation") -> None:
    """RecipeError naming the first benchmark file no question can be read from."""
    for i, name in enumerate(cfg.benchmarks):
        path = Path(name)
        try:
            found = benchmark_texts(path, cfg.fields or None)
        except (OSError, ValueError) as err:
            raise RecipeError(f"{where}.decontamination.benchmarks[{i}]: cannot read {path}: "
                              f"{err}") from None
        if not found:
            tried = ", ".join(cfg.fields or TEXT_FIELDS)
            raise RecipeError(
                f"{where}.decontamination.benchmarks[{i}]: no question could be read from {path} "
                f"(fields tried: {tried}; name yours in decontamination.fields, dotted if nested)")


@dataclass
class BenchmarkIndex:
    """Hashed n-grams of the named benchmarks; the benchmark of each."""

    n: int
    owner: dict[bytes, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # items per benchmark
    shorter: set[int] = field(default_factory=set)  # lengths of items indexed whole

    @classmethod
    def build(cls, paths: list[str], n: int, fields: list[str] | None = None) -> "BenchmarkIndex":
        index = cls(n)
        for p in paths:
            path = Path(p)
            texts = benchmark_texts(path, fields)
            index.sizes[path.stem] = len(texts)
            for text in texts:
                tokens = words(text)
                if MIN_WORDS <= len(tokens) < n:
                    index.shorter.add(len(tokens))
                for _start, h in grams(tokens, n):
                    index.owner.setdefault(h, path.stem)
        return index

    def match(self, text: str) -> tuple[int, str, str]:
        """(matched n-grams, first benchmark hit, the matched span) of `text`."""
        tokens = words(text)
        hits: list[tuple[int, int, str]] = []  # (start, length, benchmark)
        for length in [self.n, *sorted(self.shorter)]:
            if len(tokens) < length:
                continue
            for i in range(len(tokens) - length + 1):
                owner = self.owner.get(_gram_hash(tokens[i:i + length]))
                if owner is not None:
                    hits.append((i, length, owner))
        if not hits:
            return 0, "", ""
        start, length, owner = min(hits)
        return len(hits), owner, " ".join(tokens[start:start + length])


def contamination_scores(records: list[Record], index: BenchmarkIndex) -> list[Score]:
    out = []
    for r in records:
        count, owner, span = index.match(f"{r.instruction}\n{r.response}")
        out.append(Score(r.record_id, "contamination", float(count),
                         f"{owner}: \"{span}\"" if count else ""))
    return out
