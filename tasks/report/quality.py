"""The quality report of a dataset: how varied, how balanced, how grounded
and how self-contained its records are — a section of `card.md`,
`quality.json` beside it, and `sftmill quality` (one dataset, or two side by
side).

Every figure comes with its spread (10th, 50th and 90th percentiles, or the
share of records past a line) and with what good looks like, so a number is
never read alone:

- lexical diversity: distinct-1/2 of prompts and answers; pairwise ROUGE-L
  of prompts on a sample (Self-Instruct's measure: a pair above 0.7 is a
  near-copy);
- semantic diversity, from the prompts' embeddings: distance to the nearest
  other prompt, and the Vendi score (Friedman & Dieng 2023: the effective
  number of distinct prompts, exp of the entropy of the similarity matrix's
  eigenvalues);
- opening concentration: the commonest first two words of prompts;
- spread over subdomains and task types against the recipe's targets, and
  lengths;
- extractiveness: the share of each answer copied word for word from the
  passages it cites (`text_rules.copied_share`);
- self-containedness: prompts that presuppose a text the user will not
  have, answers that talk about their sources;
- groundedness, lexical support and prompt-quality scores, where the
  records carry them;
- difficulty, when asked for (it costs two forward passes a record): IFD,
  the model's loss on the answer with its instruction over its loss
  without (`fluency.instruction_following_difficulty`), on a sample."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sftmill.core.endpoints import Embedding, LLMEndpoint
from sftmill.core.files import write_atomic
from sftmill.core.markdown import markdown_table
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store
from sftmill.core.text import tokens
from sftmill.core.text_rules import copied_share, presupposes_source
from sftmill.embed.embedder import Embedder
from sftmill.tasks.curation.checks import Record
from sftmill.tasks.curation.checks.fluency import instruction_following_difficulty
from sftmill.tasks.curation.curate import cited_passages
from sftmill.tasks.generators.self_instruct_filters import rouge_l
from sftmill.tasks.sources.pairs import read_items

SAMPLE = 2000  # records whose embeddings the semantic figures use
IFD_SAMPLE = 200  # records whose difficulty is measured
ROUGE_SAMPLE = 200  # prompts compared pairwise for ROUGE-L


@dataclass
class QualityRecord:
    prompt: str
    answer: str
    metadata: dict = field(default_factory=dict)
    passages: tuple[str, ...] = ()  # cited passages, when known (a run database)


def _get(meta: dict, path: str):
    for part in path.split("."):
        meta = meta.get(part) if isinstance(meta, dict) else None
    return meta


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p10, p50, p90 = np.percentile(np.asarray(values, dtype=float), [10, 50, 90])
    return {"p10": round(float(p10), 3), "p50": round(float(p50), 3), "p90": round(float(p90), 3)}


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the texts (Li et al. 2016)."""
    grams = [tuple(t[i:i + n]) for t in map(tokens, texts) for i in range(len(t) - n + 1)]
    return round(len(set(grams)) / len(grams), 3) if grams else 0.0


def pairwise_rouge(texts: list[str], seed: int = 0) -> list[float]:
    sample = random.Random(seed).sample(texts, min(len(texts), ROUGE_SAMPLE))
    toks = [tokens(t) for t in sample]
    return [rouge_l(toks[i], toks[j]) for i in range(len(toks)) for j in range(i + 1, len(toks))]


def vendi_score(vectors: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n), K the cosine similarity of
    unit vectors: 1 when all are alike, n when all are orthogonal."""
    n = len(vectors)
    if n == 0:
        return 0.0
    eig = np.linalg.eigvalsh((vectors @ vectors.T) / n)
    eig = eig[eig > 1e-12]
    return float(math.exp(-(eig * np.log(eig)).sum()))


def nearest_distances(vectors: np.ndarray) -> list[float]:
    """1 - cosine to the nearest other vector, for each."""
    if len(vectors) < 2:
        return []
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    return [round(float(1 - s), 4) for s in sim.max(axis=1)]


def _figure(key: str, label: str, value, good: str, spread: dict | None = None, note: str = "") -> dict:
    """A figure: `good` says what good looks like (the same for every
    dataset), `note` what this dataset's figure counts."""
    return {"key": key, "label": label, "value": value, "spread": spread, "good": good, "note": note}


def difficulty(records: list[QualityRecord], endpoint: LLMEndpoint, seed: int = 0) -> list[float]:
    """IFD of a sample of the records under `endpoint`'s model (the embedded
    one, or a server whose /completions returns prompt logprobs)."""
    sample = random.Random(seed).sample(records, min(len(records), IFD_SAMPLE))
    scores = instruction_following_difficulty(
        [Record(str(i), r.prompt, r.answer) for i, r in enumerate(sample)], endpoint)
    return [round(x, 4) for x in scores if x is not None]


# The ways records are spread, and where each record's metadata says which it is.
GROUPS = (("subdomain", "profile.subdomain"), ("task_type", "record.task_type"),
          ("persona", "record.persona"), ("difficulty", "record.difficulty"))


def group_targets(raw: dict | None) -> dict[str, dict[str, float]]:
    """Target shares by group (subdomain, persona, difficulty) as a report
    keeps them; a report that kept only subdomains' shares, flat, is read as such."""
    if not raw:
        return {}
    if any(isinstance(v, (int, float)) for v in raw.values()):
        return {"subdomain": dict(raw)}
    return {k: dict(v) for k, v in raw.items() if v}


def conversation_figures(records: list[QualityRecord]) -> list[dict]:
    """Turns per conversation and the judge's groundedness per follow-up turn
    (none when no record is a conversation)."""
    turns = [t for r in records if (t := _get(r.metadata, "conversation.turns"))]
    if not turns:
        return []
    out = [_figure("turns_per_conversation", "user turns per conversation", float(np.mean(turns)),
                   "the recipe's conversations.turns", percentiles(turns),
                   f"{len(turns)} of {len(records)} records are conversations")]
    by_turn: dict[int, list[float]] = {}
    for r in records:
        for f in _get(r.metadata, "conversation.follow_ups") or []:
            if f.get("groundedness") is not None:
                by_turn.setdefault(f["turn"], []).append(f["groundedness"])
    for turn, values in sorted(by_turn.items()):
        out.append(_figure(f"groundedness_turn_{turn}", f"judge's groundedness of turn {turn}'s answers",
                           float(np.median(values)), "0.75 or more, like the first turn's",
                           percentiles(values), f"{len(values)} scored"))
    return out


def quality_report(records: list[QualityRecord], targets: dict[str, dict[str, float]] | None = None,
                   embed: Callable[[list[str]], np.ndarray] | None = None, seed: int = 0,
                   ifd: list[float] | None = None) -> dict:
    """The report as a JSON-ready dict: `figures` (key, label, value, spread,
    what good looks like), `shares` (subdomains, task types, personas and
    difficulty levels, against their `targets` where the recipe set them)
    and `openings`."""
    targets = group_targets(targets)
    prompts = [r.prompt for r in records]
    answers = [r.answer for r in records]
    figures = [_figure("records", "records", len(records), "the recipe's target")]
    if not records:
        return {"figures": figures, "shares": {}, "openings": []}
    figures += [
        _figure("distinct_1_prompts", "distinct-1, prompts", distinct_n(prompts, 1),
                "higher is more varied (compare datasets of similar size)"),
        _figure("distinct_2_prompts", "distinct-2, prompts", distinct_n(prompts, 2),
                "higher is more varied; under 0.3 at a few hundred records means templated prompts"),
        _figure("distinct_2_answers", "distinct-2, answers", distinct_n(answers, 2),
                "higher is more varied; under 0.3 means answers repeat phrases"),
    ]
    rouge = pairwise_rouge(prompts, seed)
    if rouge:
        figures.append(_figure(
            "prompt_rouge_l", f"pairwise ROUGE-L of prompts (sample of {min(len(prompts), ROUGE_SAMPLE)})",
            round(float(np.mean(rouge)), 3), "mean under 0.3; pairs at 0.7 or more are near-copies",
            percentiles(rouge), f"{sum(x >= 0.7 for x in rouge)} of {len(rouge)} pairs at 0.7 or more"))
    if embed is not None and len(records) > 1:
        sample = random.Random(seed).sample(prompts, min(len(prompts), SAMPLE))
        vectors = np.asarray(embed(sample), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
        near = nearest_distances(vectors)
        figures.append(_figure("nearest_prompt_distance", "distance to the nearest other prompt "
                               "(1 - cosine)", round(float(np.median(near)), 3),
                               "higher: prompts cover more ground; near 0: paraphrases of each "
                               "other (dedup removes pairs above its cosine)", percentiles(near)))
        vendi = vendi_score(vectors)
        figures.append(_figure("vendi_prompts", "Vendi score of prompts (effective number of "
                               "distinct prompts)", round(vendi, 1),
                               "closer to the number of prompts measured is more diverse",
                               note=f"{vendi / len(sample):.0%} of the {len(sample)} measured"))
    openings = Counter(" ".join(tokens(p)[:2]) for p in prompts).most_common(5)
    top_share = openings[0][1] / len(prompts)
    figures.append(_figure("top_opening_share", "share of prompts with the commonest opening",
                           round(top_share, 3), "under 0.15 (the pipeline rephrases above "
                           "thresholds.max_opening_share)", note=repr(openings[0][0])))
    for part, texts in (("prompt", prompts), ("answer", answers)):
        lengths = [len(t) for t in texts]
        figures.append(_figure(f"{part}_chars", f"{part} length (characters, median)",
                               float(np.median(lengths)), "a spread, not one length: the 10th to "
                               "90th percentile should differ by a factor of 2 or more",
                               percentiles(lengths)))
    copied = [copied_share(r.answer, list(r.passages)) if r.passages
              else _get(r.metadata, "scores.copied_share") for r in records]
    copied = [c for c in copied if c is not None]
    if copied:
        figures.append(_figure(
            "copied_share", "extractiveness: share of an answer copied from its passages (median)",
            float(np.median(copied)), "under 0.5: answers in their own words; 0.8 or more is a copy",
            percentiles(copied), f"{sum(c >= 0.8 for c in copied)} of {len(copied)} at 0.8 or more"))
    presupposing = sum(bool(presupposes_source(p, "prompt")) for p in prompts)
    talking = sum(bool(presupposes_source(a, "answer")) for a in answers)
    figures += [
        _figure("prompts_not_self_contained", "prompts that presuppose a text the user lacks",
                round(presupposing / len(prompts), 3), "0", note=f"{presupposing} prompts"),
        _figure("answers_about_sources", "answers that talk about their sources",
                round(talking / len(answers), 3), "0", note=f"{talking} answers"),
    ]
    for key, label, good in (
            ("groundedness", "judge's groundedness (0-1)", "0.75 or more: supported by its passages"),
            ("lexical_support", "lexical support (share of answer words in its passages)",
             "0.5 or more; near 1 with high extractiveness is copying"),
            ("prompt_quality", "judge's prompt quality (0-1)", "0.75 or more")):
        values = [v for r in records if (v := _get(r.metadata, f"scores.{key}")) is not None]
        if values:
            figures.append(_figure(key, label, float(np.median(values)), good, percentiles(values),
                                   f"{len(values)} scored"))
    if ifd:
        figures.append(_figure("ifd", "difficulty: IFD, loss on the answer with / without its "
                               "instruction", float(np.median(ifd)),
                               "a spread of 0.5–0.95: near 1 the instruction barely helps (hard, "
                               "or loosely tied); above 1 it misleads", percentiles(ifd),
                               f"{len(ifd)} measured, {sum(x > 1 for x in ifd)} above 1"))
    figures += conversation_figures(records)
    shares = {}
    kinds = Counter(f.get("kind") for r in records for f in _get(r.metadata, "conversation.follow_ups") or [])
    if kinds:
        shares["follow_up_kind"] = [{"group": k, "records": n, "actual": round(n / sum(kinds.values()), 3),
                                     "target": None} for k, n in sorted(kinds.items())]
    for name, path in GROUPS:
        found = Counter(_get(r.metadata, path) for r in records)
        if set(found) != {None}:
            wanted = (targets or {}).get(name) or {}
            shares[name] = [{"group": g or "(none)", "records": n, "actual": round(n / len(records), 3),
                             "target": wanted.get(g)} for g, n in sorted(
                                 found.items(), key=lambda kv: str(kv[0]))]
            shares[name] += [{"group": g, "records": 0, "actual": 0.0, "target": t}
                             for g, t in wanted.items() if g not in found]
            if wanted:
                gap = max(abs(s["actual"] - (s["target"] or 0)) for s in shares[name])
                figures.append(_figure(f"{name}_gap", f"largest gap between a {name}'s share "
                                       "and its target", round(gap, 3), "under 0.1" + (
                                           "; a subdomain at 0 with relevant texts is a gap to fill"
                                           if name == "subdomain" else "")))
    return {"figures": figures, "shares": shares,
            "openings": [{"opening": o, "share": round(n / len(prompts), 3)} for o, n in openings]}


def _value(figure: dict | None) -> str:
    if figure is None:
        return "-"
    value = figure["value"]
    text = f"{value:,.3g}" if isinstance(value, float) else str(value)
    spread = figure.get("spread")
    return text + (f" ({spread['p10']:,.3g}–{spread['p90']:,.3g})" if spread else "")


def quality_markdown(report: dict, other: dict | None = None, names: tuple[str, str] = ("A", "B"),
                     ) -> list[str]:
    """The report as Markdown blocks: one table of figures (value, 10th–90th
    percentile, what good looks like), or two reports side by side."""
    if other is None:
        rows = [[f["label"], _value(f) + (f" — {f['note']}" if f.get("note") else ""), f["good"]]
                for f in report["figures"]]
        out = [markdown_table(["figure", "value (p10–p90)", "good"], rows)]
    else:
        mine = {f["key"]: f for f in report["figures"]}
        theirs = {f["key"]: f for f in other["figures"]}
        keys = list(dict.fromkeys([*mine, *theirs]))
        rows = [[(mine.get(k) or theirs[k])["label"], _value(mine.get(k)), _value(theirs.get(k)),
                 (mine.get(k) or theirs[k])["good"]] for k in keys]
        out = [markdown_table(["figure", names[0], names[1], "good"], rows)]
    for name, shares in report["shares"].items():
        if other is None:
            out.append(markdown_table([name, "records", "actual", "target"], [
                [s["group"], s["records"], f"{s['actual']:.0%}",
                 "-" if s["target"] is None else f"{s['target']:.0%}"] for s in shares]))
    return out


QUALITY_FILE = "quality.json"


def read_quality(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None

GOOD_LOOKS = ("Each figure with its 10th–90th percentile where it has a spread, and what good "
              "looks like; `sftmill quality RUN_DIR OTHER_RUN_DIR` compares two datasets.")


def run_records(store: Store) -> list[QualityRecord]:
    """The records a run keeps, with their metadata and cited passages."""
    passages = cited_passages(store)
    return [QualityRecord(r["prompt"], r["answer"] or "", json.loads(r["metadata"] or "{}"),
                          passages.get(r["answer_id"], ()))
            for r in store.query_dicts(f"SELECT prompt, answer, answer_id, metadata FROM {KEPT_DATASET} "
                                       "ORDER BY record_id")]


def quality_section(store: Store, run_dir: Path, embedding: Embedding,
                    targets: dict[str, dict[str, float]] | None = None) -> list[str]:
    """Write `quality.json` into the run folder; return the card's section."""
    report = quality_report(run_records(store), targets, Embedder(embedding, store).embed)
    report["targets"] = targets or {}
    write_atomic(run_dir / QUALITY_FILE, [json.dumps(report, indent=1).encode()])
    return ["## Quality", GOOD_LOOKS, *quality_markdown(report)]


def dataset_quality(path: Path, ifd_model: LLMEndpoint | None = None) -> dict:
    """The report of a run folder (its `dataset.jsonl`, against the targets
    its card recorded) or of a dataset file in any format sftmill reads;
    with `ifd_model`, the difficulty figure under that model.
    Raises RecipeError for a path that holds neither."""
    targets = None
    if path.is_dir():
        targets = group_targets((read_quality(path / QUALITY_FILE) or {}).get("targets"))
        path = path / "dataset.jsonl"
    items, _skipped = read_items(path)
    records = [QualityRecord(i.instruction, i.response, i.source.get("earlier") or {}) for i in items]
    report = quality_report(records, targets, Embedder(Embedding()).embed,
                            ifd=difficulty(records, ifd_model) if ifd_model and records else None)
    report["targets"] = targets or {}
    return report
