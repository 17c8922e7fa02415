"""The last steps of a 20k-record run: answer decisions with their lineage
metadata (`tasks.answer.decide`) and the JSONL + Parquet export.

Measures: seconds for `decide` (thresholds, rejects, one metadata JSON per
kept answer, built with one query per table for the whole batch) and for
the export, on a synthetic run database of N prompts, each with a profile,
chunk, document, two answer queries, five retrievals and one answer (a
fifth of them too short, so they become rejects).

Run:  .venv/bin/python benchmarks/answer_decide_export.py [N] [DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sftmill.core.recipe import parse_recipe
from sftmill.core.store import Store
from sftmill.tasks.stages.answer import decide
from sftmill.tasks.report.export import export_run


def synthetic_run(store: Store, n: int) -> None:
    ids = [f"{i:08d}" for i in range(n)]
    store.insert("documents", [{"doc_id": f"d{i}", "uri": f"file:///corpus/{i}.md",
                                "source_kind": "file"} for i in ids])
    store.insert("chunks", [{"chunk_id": f"c{i}", "doc_id": f"d{i}", "text": "Quarks."} for i in ids])
    store.insert("relevance", [{"chunk_id": f"c{i}", "score": 0.9} for i in ids])
    store.insert("profiles", [{"profile_id": f"pr{i}", "chunk_id": f"c{i}", "domain": "Physics",
                               "subdomain": "QCD", "topic": "confinement", "use_case": "exam",
                               "model": "m", "template_version": "profile@x"} for i in ids])
    store.insert("candidate_prompts", [{"prompt_id": f"p{i}", "text": f"Why {i}?", "origin": "generated",
                                        "model": "m", "template_version": "generate@x"} for i in ids])
    store.insert("prompts", [{"prompt_id": f"p{i}", "text": f"Why {i}?", "origin": "generated",
                              "profile_id": f"pr{i}", "chunk_id": f"c{i}", "doc_id": f"d{i}",
                              "task_type": "question", "quality": 0.8} for i in ids])
    store.insert("answer_queries", [{"query_id": f"q{i}{k}", "prompt_id": f"p{i}", "query": f"q {k}"}
                                    for i in ids for k in range(2)])
    store.insert("retrievals", [{"prompt_id": f"p{i}", "rank": k + 1, "chunk_id": f"c{ids[(j + k) % n]}",
                                 "similarity": 0.8} for j, i in enumerate(ids) for k in range(5)])
    long_answer = "Quarks are confined by the strong force [1]. " * 4
    store.insert("answers", [{"answer_id": f"a{i}", "prompt_id": f"p{i}", "text": long_answer,
                              "grounded": True, "cited_numbers": [1], "model": "m",
                              "template_version": "answer@x"} for i in ids])
    store.insert("answer_checks", [{"answer_id": f"a{i}", "groundedness": 1.0, "judge_reason": "ok",
                                    "lexical_support": 0.9, "refusal": False, "citations_valid": True,
                                    "n_chars": 10 if j % 5 == 0 else len(long_answer), "model": "j"}
                                   for j, i in enumerate(ids)])


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    folder = Path(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp())
    (folder / "a.txt").write_text("x")
    recipe = parse_recipe({"name": "bench", "output_dir": "run", "inputs": [{"path": "a.txt"}],
                           "search": {"backend": "none"}, "domain": {"name": "Physics"}}, folder)
    store = Store.open(recipe.run_dir / "sftmill.duckdb")
    synthetic_run(store, n)
    started = time.perf_counter()
    kept = decide(store, recipe)
    decided = time.perf_counter() - started
    started = time.perf_counter()
    export_run(store, recipe)
    exported = time.perf_counter() - started
    print(f"{n} answers: decide {decided:.1f} s ({kept} kept, "
          f"{store.count('rejects')} rejects), export {exported:.1f} s")
