"""Answer step 6 — the dataset card: `card.md` in the run folder (and the same
as `README.md`, with the YAML header the Hugging Face Hub reads: `core.hub`),
with PNG plots it embeds (`plots/subdomains.png`, `plots/lengths.png`).

Contents: counts in/out per stage with reject reasons, subdomain
distribution against the recipe's targets, prompt and answer length
statistics, near-duplicate rate, grounded share, tokens and time per stage
and model.  Everything is read back from the run database.  The classic
generators get a card of their own (`write_generator_card`): the same
tables without subdomains, plus their records counted by origin (round and
operation, method and field, template).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext

from sftmill.core.endpoints import Embedding
from sftmill.core.hub import write_card_files
from sftmill.core.markdown import markdown_table
from sftmill.core.recipe import Recipe
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store
from sftmill.tasks.curation.curate import META_KEY
from sftmill.tasks.curation.mix import mix_section
from sftmill.tasks.report.quality import quality_section
from sftmill.tasks.report.summary import (
    RECORDS_BY_SUBDOMAIN,
    empty_run_hint,
    or_dash,
    sample_records,
    subdomain_shares,
    summarize,
)
from sftmill.tasks.review.annotations import review_section
from sftmill.tasks.stage_task import StageResult, StageTimer, stage_task
from sftmill.tasks.stages.conditions import condition_targets
from sftmill.tasks.stages.conversation import conversation_section
from sftmill.tasks.stages.sizing import target_shares

STAGE = "card"


def length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0, "min": 0, "median": 0, "mean": 0, "max": 0}
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "mean": round(statistics.fmean(values), 1), "max": max(values)}


def pyplot():
    """matplotlib's pyplot, drawing to files (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plots(folder: Path, shares: list[dict], prompt_lengths: list[int],
           answer_lengths: list[int]) -> list[str]:
    plt = pyplot()

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    if shares:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = [s["subdomain"] for s in shares]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [100 * (s["target"] or 0) for s in shares], 0.4, label="target")
        ax.bar([x + 0.2 for x in xs], [100 * s["actual"] for s in shares], 0.4, label="actual")
        ax.set_xticks(list(xs), names, rotation=20, ha="right")
        ax.set_ylabel("% of records")
        ax.set_title("Records per subdomain")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "subdomains.png", dpi=100)
        plt.close(fig)
        made.append("subdomains.png")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist([prompt_lengths or [0], answer_lengths or [0]], bins=20, label=["prompts", "answers"])
    ax.set_xlabel("characters")
    ax.set_ylabel("records")
    ax.set_title("Lengths")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "lengths.png", dpi=100)
    plt.close(fig)
    made.append("lengths.png")
    return made


def subdomain_section(shares: list[dict]) -> list[str]:
    """The card's section on target vs actual subdomain shares (`shares_of`)."""
    return ["## Subdomains: target vs actual",
            markdown_table(["subdomain", "target", "actual", "records"],
                   [[s["subdomain"], "-" if s["target"] is None else f"{s['target']:.0%}",
                     f"{s['actual']:.0%}", s["count"]] for s in shares])]


def _stages_table(summary) -> str:
    return markdown_table(["stage", "in", "out", "seconds"],
                  [[s["stage"], s["n_in"], s["n_out"], f"{s['seconds']:.1f}"] for s in summary.stages])


def _drops_table(summary) -> str:
    if not summary.rejects:
        return "Nothing was dropped."
    return markdown_table(["stage", "reason", "count"], [list(r) for r in summary.rejects])


def _lengths_table(prompt_lengths: list[int], answer_lengths: list[int]) -> str:
    return markdown_table(["", "n", "min", "median", "mean", "max"],
                  [["prompts", *length_stats(prompt_lengths).values()],
                   ["answers", *length_stats(answer_lengths).values()]])


def _llm_table(summary) -> str:
    planned = any("planned" in r for r in summary.llm)
    return markdown_table(["stage", "model", *(["planned"] if planned else []), "calls sent", "cache hits",
                   "errors", "tokens in", "tokens out", "seconds", *(["cost"] if planned else [])],
                  [[r["stage"], r["model"], *([or_dash(r["planned"])] if planned else []),
                    r["sent"], r["cache_hits"], r["errors"], r["tokens_in"], r["tokens_out"],
                    f"{r['seconds']:.1f}",
                    *([or_dash(r["cost"], "{:,.4f}")] if planned else [])] for r in summary.llm])


PLOTTED = ("instruction_perplexity", "response_perplexity", "offensive", "safety", "adherence",
           "response_chars", "instruction_chars")


def curation_section(store: Store, folder: Path) -> list[str]:
    """Per check of the last curation: its threshold, the spread of its
    scores (and a plot with the threshold drawn), how many records it
    removed; near duplicates; contamination hits by benchmark."""
    raw = store.get_meta(META_KEY)
    if not raw:
        return []
    decided = json.loads(raw)
    scores: dict[str, list[float]] = {}
    unscored: Counter[str] = Counter()
    for check, score in store.execute(
            'SELECT "check", score FROM curation_scores WHERE record_id IN '
            "(SELECT record_id FROM dataset)"):
        if score is None:
            unscored[check] += 1
        else:
            scores.setdefault(check, []).append(score)
    removed = sum(r["removed"] for r in decided["rules"]) + (
        (decided["near_duplicates"] or {}).get("removed", 0))
    sign = {"min": "≥", "max": "≤", "at_least": "<"}
    rows = []
    for rule in decided["rules"]:
        values = sorted(scores.get(rule["check"], []))
        spread = ([f"{values[0]:,.3g}", f"{statistics.median(values):,.3g}", f"{values[-1]:,.3g}"]
                  if values else ["-", "-", "-"])
        keep = (f"{sign[rule['kind']]} {rule['bound']:,.6g}" if rule["kind"] != "unscored"
                else "scored")
        rows.append([rule["check"], f"{keep} (`{rule['setting']}`)", len(values),
                     unscored[rule["check"]], *spread, rule["removed"]])
    parts = ["## Curation",
             f"{decided['records']} records checked, {decided['records'] - removed} kept. Each row "
             "is a threshold a record must meet (checked in this order; a record is counted "
             "under the first it fails). Scores stay in `curation_scores`: change a threshold "
             "and rerun, and only the decision is made again.",
             markdown_table(["check", "keep when", "scored", "not scored (asked again next run)",
                             "min", "median", "max", "removed"], rows)]
    near = decided.get("near_duplicates")
    if near:
        parts.append(f"Near duplicates (instructions at cosine ≥ {near['cosine']:g}; the "
                     f"better-scored record kept): {near['removed']} removed.")
    hits = store.execute(
        "SELECT split_part(detail, ':', 1) AS benchmark, count(*) FROM curation_scores "
        "WHERE \"check\" = 'contamination' AND score > 0 GROUP BY ALL ORDER BY 1")
    if any(r["check"] == "contamination" for r in decided["rules"]):
        parts += ["### Contamination by benchmark",
                  markdown_table(["benchmark", "records sharing an n-gram"], [list(h) for h in hits])
                  if hits else "No record shares an n-gram with the benchmarks."]
    plots = _curation_plots(folder, decided["rules"], scores)
    parts += [f"![{name}](plots/{name})" for name in plots]
    return parts


def _curation_plots(folder: Path, checked: list[dict], scores: dict[str, list[float]]) -> list[str]:
    """A histogram per scored check, its threshold drawn: where to set it."""
    plt = pyplot()

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for check in PLOTTED:
        values = scores.get(check)
        if not values:
            continue
        fig, ax = plt.subplots(figsize=(6, 3))
        log = check.endswith("perplexity") and min(values) > 0
        if log:
            bins = np.logspace(np.log10(min(values)), np.log10(max(values) * 1.01 + 1e-9), 25)
            ax.set_xscale("log")
        else:
            bins = 20
        ax.hist(values, bins=bins)
        for rule in checked:
            if rule["check"] == check:
                ax.axvline(rule["bound"], color="red", linestyle="--", label=rule["setting"])
        ax.set_xlabel(check)
        ax.set_ylabel("records")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        name = f"curation_{check}.png"
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        made.append(name)
    return made


# What each classic generator's records are counted by in its card.
BREAKDOWN = {"evol-instruct": ("round", "operation"), "augment": ("method", "field"),
             "mix": ("generator",),
             "template": ("template",), "self-instruct": ("round",)}


def write_generator_card(store: Store, run_dir: Path, fmt: str) -> Path:
    """`card.md` for a run of a classic generator (Self-Instruct,
    Evol-Instruct, templates, augmentations): stages, drops, records by
    origin, lengths, LLM usage and a length plot."""
    summary = summarize(store)
    records = store.query_dicts(f"SELECT prompt, answer, metadata FROM {KEPT_DATASET}")
    metas = [json.loads(r["metadata"]) for r in records]
    generator = metas[0].get("generator", "generator") if metas else "generator"
    if metas and all("mix" in m for m in metas):
        generator = "mix"
    keys = BREAKDOWN.get(generator, ())
    by_origin = Counter(tuple(m.get(k) for k in keys) for m in metas)
    prompt_lengths = [len(r["prompt"]) for r in records]
    answer_lengths = [len(r["answer"]) for r in records]
    plots = _plots(run_dir / "plots", [], prompt_lengths, answer_lengths)
    parts = [
        f"# Dataset card: {generator} run",
        f"{len(records)} instruction–response pairs made by sftmill's {generator} generator; "
        "each record's metadata carries its lineage.",
        f"Files: `dataset.jsonl` ({fmt} format), `dataset.parquet`, and `sftmill.duckdb` with "
        "every intermediate table.",
        "## Stages", _stages_table(summary),
        "## Dropped, by reason", _drops_table(summary),
    ]
    if keys:
        parts += ["## Records by " + " and ".join(keys),
                  markdown_table([*keys, "records"], [[*k, n] for k, n in sorted(
                      by_origin.items(), key=lambda kn: [str(x) for x in kn[0]])])]

    parts += quality_section(store, run_dir, Embedding())
    parts += mix_section(store) + curation_section(store, run_dir / "plots") + review_section(store)
    parts += ["## Lengths (characters)", _lengths_table(prompt_lengths, answer_lengths),
              "## LLM usage (tokens and time per stage and model)", _llm_table(summary),
              "## Plots", *[f"![{name}](plots/{name})" for name in plots]]
    text = "\n\n".join(parts) + "\n"
    card = write_card_files(run_dir, text, f"sftmill {generator} run")
    publish_artifacts(summary, text)
    return card


def _samples_section(store: Store, per_subdomain: int = 3) -> list[str]:
    """A handful of records per subdomain, each with the passage it cites."""
    samples = sample_records(store, per_subdomain, per_subdomain=True)
    if not samples:
        return []
    out = ["## Samples (up to 3 per subdomain)"]
    for sub in dict.fromkeys(s["subdomain"] for s in samples):
        out.append(f"### {sub}")
        for s in (s for s in samples if s["subdomain"] == sub):
            lines = [f"**Prompt:** {s['prompt']}", f"**Answer:** {s['answer']}"]
            if s["passage"]:
                source = (s["source"] or "").rsplit("/", 1)[-1]
                lines.append(f"**Cited passage** (`{source}`): " + " ".join(s["passage"].split()))
            out.append("\n>\n".join("> " + line for line in lines))
    return out


def write_card(store: Store, recipe: Recipe) -> Path:
    run_dir = recipe.run_dir
    summary = summarize(store, target_shares(recipe), recipe)
    records = store.query_dicts(f"SELECT prompt, answer, grounded FROM {KEPT_DATASET}")
    prompt_lengths = [len(r["prompt"]) for r in records]
    answer_lengths = [len(r["answer"]) for r in records]
    shares = subdomain_shares(store, target_shares(recipe), RECORDS_BY_SUBDOMAIN)
    plots = _plots(run_dir / "plots", shares, prompt_lengths, answer_lengths)
    dedup = next((s for s in summary.stages if s["stage"] == "dedup"), None)
    dup_rate = (1 - dedup["n_out"] / dedup["n_in"]) if dedup and dedup["n_in"] else 0.0
    grounded = sum(1 for r in records if r["grounded"])
    parts = [
        f"# Dataset card: {recipe.name}",
        f"{len(records)} instruction–response pairs about **{recipe.domain.name}**, made by "
        f"sftmill (recipe fingerprint `{recipe.fingerprint()}`). {grounded} of them are grounded "
        "in retrieved passages with citations; the rest were answered without context "
        "(`grounded: false` in their metadata).",
        "Files: `dataset.jsonl` (" + recipe.export.format + " format), `dataset.parquet`, "
        "and `sftmill.duckdb` with every intermediate table.",
        "## Stages", _stages_table(summary),
        "## Dropped, by reason", _drops_table(summary),
        *quality_section(store, run_dir, recipe.embedding, condition_targets(store, recipe)),
        *subdomain_section(shares),
        *conversation_section(store),
        *curation_section(store, run_dir / "plots"),
        *review_section(store),
        "## Lengths (characters)", _lengths_table(prompt_lengths, answer_lengths),
        f"Near-duplicate rate among filtered prompts: {dup_rate:.1%}.",
        "## LLM usage (tokens and time per stage and model)", _llm_table(summary),
        "## Plots",
        *[f"![{name}](plots/{name})" for name in plots],
    ]
    if summary.openings:
        (w0, s0), (w1, s1) = summary.openings["before"], summary.openings["after"]
        parts.insert(-2, f'Most common opening: "{w0}" in {s0:.0%} of prompts before rephrasing, '
                         f'"{w1}" in {s1:.0%} after.')
    parts[3:3] = _samples_section(store) or ["## Samples", empty_run_hint(store)]
    text = "\n\n".join(parts) + "\n"
    card = write_card_files(run_dir, text, recipe.name, recipe.export.license, recipe.export.language)
    publish_artifacts(summary, text)
    return card


def publish_artifacts(summary, card_text: str) -> None:
    """In a Prefect run: the per-stage counts and reject reasons, and the LLM
    calls, tokens and cost per stage, as table artifacts; the card as a
    markdown artifact (outside a run: nothing)."""
    if TaskRunContext.get() is None:
        return
    rows = [{"stage": s["stage"], "in": s["n_in"], "out": s["n_out"],
             "seconds": round(s["seconds"], 1),
             "dropped": ", ".join(f"{reason} {n}" for st, reason, n in summary.rejects
                                  if st == s["stage"].split("#")[0])}
            for s in summary.stages]
    create_table_artifact(rows, key="sftmill-stages", description="Per-stage counts and drop reasons")
    if summary.llm:
        create_table_artifact(
            [{"stage": r["stage"], "model": r["model"], "planned calls": r.get("planned"),
              "calls sent": r["sent"], "cache hits": r["cache_hits"], "tokens in": r["tokens_in"],
              "tokens out": r["tokens_out"], "cost": r.get("cost")} for r in summary.llm],
            key="sftmill-llm-cost", description="LLM calls, tokens and cost per stage and model "
            "(cost from the recipe's prices), beside the plan")
    create_markdown_artifact(card_text, key="sftmill-dataset-card", description="Dataset card")


@stage_task("card", recipe=("domain", "sizes", "generation", "thresholds", "llm", "search", "answers", "embedding",
                            "curation", "export", "prices", "personas", "difficulty", "conversations"),
            cached=False, reads=("dataset",))
def dataset_card(recipe: Recipe, exported: StageResult) -> StageResult:
    store = Store.open(exported.out.db_path)
    timer = StageTimer(store, STAGE)
    card = write_card(store, recipe)
    return timer.done(exported.out, exported.n_out, exported.n_out, str(card))
