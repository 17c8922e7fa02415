"""What the commands print: a run's summary tables and sample records, the plan, and a
flow run with progress bars and its closing lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.table import Table

from sftmill.cli.common import claim, console, fail, showing_progress, tracebacks_to
from sftmill.core.errors import RecipeError
from sftmill.core.recipe import DB_FILE
from sftmill.core.schema import KEPT_DATASET
from sftmill.core.store import Store
from sftmill.embed.models import preload
from sftmill.tasks.curation.curate import kept_count
from sftmill.tasks.preflight import check_templates_fit
from sftmill.tasks.report.plan import plan_recipe
from sftmill.tasks.report.quality import QUALITY_FILE, quality_markdown, read_quality
from sftmill.tasks.report.summary import empty_run_hint, or_dash, sample_records, summarize


def print_summary(store, run_id: str | None, elapsed: float | None = None,
                  targets: dict[str, float] | None = None, recipe=None) -> None:
    s = summarize(store, targets, recipe)
    stages = Table(title="Stages", title_justify="left")
    for col in ("stage", "in", "out", "seconds", ""):
        stages.add_column(col, justify="right" if col in ("in", "out", "seconds") else "left")
    for row in s.stages:
        reused = "reused from cache" if run_id and row["run_id"] != run_id else ""
        stages.add_row(row["stage"], str(row["n_in"]), str(row["n_out"]),
                       f"{row['seconds']:.1f}", reused)
    console.print(stages)
    if s.rejects:
        rejects = Table(title="Dropped, by reason", title_justify="left")
        for col in ("stage", "reason", "count"):
            rejects.add_column(col)
        for stage, reason, n in s.rejects:
            rejects.add_row(stage, reason, str(n))
        console.print(rejects)
    if s.llm:
        planned = recipe is not None
        llm = Table(title="LLM calls", title_justify="left")
        for col in ("stage", "model", *(["plan"] if planned else []), "sent", "hits",
                    "errors", "tokens in", "tokens out", "s", *(["cost"] if planned else [])):
            llm.add_column(col, no_wrap=col == "stage",  # stage names whole; on a terminal
                           max_width=14 if col == "model" and console.is_terminal else None)
        for r in s.llm:
            llm.add_row(r["stage"], r["model"], *([or_dash(r["planned"])] if planned else []),
                        str(r["sent"]), str(r["cache_hits"]), str(r["errors"]),
                        str(r["tokens_in"]), str(r["tokens_out"]), f"{r['seconds']:.1f}",
                        *([or_dash(r["cost"], "{:,.4f}")] if planned else []))
        console.print(llm)
    if s.tables.get("prompts"):
        shares = Table(title="Prompts per subdomain", title_justify="left")
        for col in ("subdomain", "target", "actual", "prompts"):
            shares.add_column(col)
        for r in s.shares:
            target = "-" if r["target"] is None else f"{r['target']:.0%}"
            shares.add_row(r["subdomain"], target, f"{r['actual']:.0%}", str(r["count"]))
        console.print(shares)
    if s.openings:
        (w0, s0), (w1, s1) = s.openings["before"], s.openings["after"]
        console.print(f'Most common opening: "{w0}" {s0:.0%} of prompts before rephrasing, '
                      f'"{w1}" {s1:.0%} after')
    filled = {k: v for k, v in s.tables.items() if v}
    if filled:
        console.print("Rows: " + ", ".join(f"{k} {v}" for k, v in filled.items()))
    print_samples(store)
    if elapsed is not None:
        console.print(f"Run database: {store.path}  ({elapsed:.0f} s)")


def clip(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def print_samples(store, n: int = 3) -> None:
    """A few finished records: prompt, answer and the passage it cites."""
    samples = sample_records(store, 1, per_subdomain=True)[:n]  # one per subdomain first
    if len(samples) < n:
        seen = {r["prompt"] for r in samples}
        samples += [r for r in sample_records(store, n) if r["prompt"] not in seen][:n - len(samples)]
    if not samples:
        return

    console.print(f"[bold]Sample records[/] ({len(samples)} of {kept_count(store)}):")
    for r in samples:
        console.print(f"• [bold]prompt[/] ({r['subdomain']}): {clip(r['prompt'], 200)}",
                      highlight=False, soft_wrap=True)
        console.print(f"  [bold]answer[/]: {clip(r['answer'], 300)}", highlight=False,
                      soft_wrap=True)
        if r["passage"]:
            source = (r["source"] or "").rsplit("/", 1)[-1]
            console.print(f"  [bold]cites[/] {source}: {clip(r['passage'], 200)}",
                          highlight=False, soft_wrap=True)


def print_preview(store, run_dir: Path, wanted: int, elapsed: float) -> None:
    """A preview's records with their scores, the drops, and the quality figures."""
    records = store.query_dicts(f"SELECT prompt, answer, metadata FROM {KEPT_DATASET} ORDER BY record_id")
    console.print(f"[bold]Preview[/]: {len(records)} records (asked for {wanted}) in {elapsed:.0f} s, "
                  f"in {run_dir}", highlight=False, soft_wrap=True)
    for r in records[:wanted]:
        meta = json.loads(r["metadata"] or "{}")
        scores = {k: v for k, v in (meta.get("scores") or {}).items() if v is not None}
        console.print(f"• [bold]prompt[/] ({(meta.get('profile') or {}).get('subdomain') or '-'}): "
                      f"{clip(r['prompt'], 200)}", highlight=False, soft_wrap=True)
        console.print(f"  [bold]answer[/]: {clip(r['answer'], 400)}", highlight=False, soft_wrap=True)
        console.print("  [bold]scores[/]: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()),
                      highlight=False, soft_wrap=True)
    drops = store.reject_counts()
    if drops:
        console.print("Dropped: " + ", ".join(f"{n} {reason} ({stage})" for stage, reason, n in drops),
                      highlight=False, soft_wrap=True)
    if not records:
        console.print(empty_run_hint(store), highlight=False, soft_wrap=True)
    quality = read_quality(run_dir / QUALITY_FILE)
    if quality:
        console.print("Quality (card.md has the full report):", highlight=False)
        print("\n\n".join(quality_markdown(quality)))


def print_plan(recipe) -> None:
    """Per LLM stage: expected calls, tokens and cost (tasks/report/plan.py)."""
    plans, chunks, rates = plan_recipe(recipe)
    table = Table(title=f"Plan for {recipe.name}: {chunks} chunks, target "
                        f"{recipe.sizes.target_prompts} prompts", title_justify="left")
    for col in ("stage", "model", "calls", "tokens in", "tokens out", "cost"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    priced = [p.cost for p in plans if p.cost is not None]
    for p in plans:
        table.add_row(p.stage, p.model + (" (batch)" if p.batch else ""), f"{p.calls:,}",
                      f"{p.tokens_in:,}", f"{p.tokens_out:,}", or_dash(p.cost, "{:,.2f}"))
    table.add_row("total", "", f"{sum(p.calls for p in plans):,}",
                  f"{sum(p.tokens_in for p in plans):,}", f"{sum(p.tokens_out for p in plans):,}",
                  f"{sum(priced):,.2f}" if priced else "-", style="bold")
    console.print(table)
    console.print(f"Rates: {rates}."
                  + ("  (batch): through the Batch API, at the batch price where `prices` "
                     "gives one." if any(p.batch for p in plans) else ""))
    if len(priced) < len(plans):
        console.print("No price for some models: add them under `prices:` "
                      "(per million input and output tokens) to see the cost.")


def run_flow(kind: str, out: Path, start, templates=(), embeddings=()) -> None:
    """Run a flow (`start()` returns its final state) whose run folder is
    `out`, with progress bars and the closing summary; `templates`: its LLM
    steps, checked against the model's context first; `embeddings`: the
    embedding models it uses (loaded in the background meanwhile)."""
    store = claim(out.resolve() / DB_FILE)
    try:
        check_templates_fit(templates)
    except RecipeError as err:
        fail(str(err))
    store.execute("DELETE FROM meta WHERE key = 'stopped_early'")
    preload(embeddings)
    started = time.perf_counter()
    with showing_progress(), tracebacks_to(out) as log:
        state = start()
    print_summary(store, str(state.state_details.flow_run_id))
    if not state.is_completed():
        fail(f"run failed: {state.message}. Rerun the same command to resume (details in {log}).",
             code=1)

    records = kept_count(store)
    stopped = store.get_meta("stopped_early")
    if stopped:
        console.print(stopped, highlight=False)
    console.print(f"{kind}: {records} records in {out / 'dataset.jsonl'} "
                  f"({time.perf_counter() - started:.0f} s); card: {out / 'card.md'}")
    if not records:
        judged = store.scalar("SELECT count(*) FROM rejects WHERE reason = 'no_information_gain' "
                              "AND detail LIKE '%judge found it equal%'")
        console.print(empty_run_hint(store, "model (--base-url and --model: the embedded 135M "
                                            "model is for trying the tool out)")
                      + (" The judge found many evolutions equal to their parent (a small "
                         "judge model often does: try --no-judge or a stronger --base-url)."
                         if judged else ""), highlight=False, soft_wrap=True)
    Store.close_all()
