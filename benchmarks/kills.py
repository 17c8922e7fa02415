"""A run killed (SIGKILL of its process group) again and again, at every
phase, then let finish: is its dataset the uninterrupted run's, was a call
the server had answered sent again, was a file left half-written?

    python benchmarks/kills.py [--kills 30] [--target 600] [--latency 0.05]

Against `mock_openai.py` (its own process; chat and embeddings), on a
generated corpus, with curation and the prompt and answer review gates
(CSV sheets, every sampled item accepted by a script as a reviewer would):

1. an uninterrupted run, on a fresh server: its records and the chat calls
   it needs;
2. on another fresh server, the same recipe in another folder, run again
   and again: each run is killed at its next target — a stage's
   `<stage>: started` line on the console plus a random delay (the export
   and card get short ones; a phase answered from the cache, and so not
   started, passes its kill to the next that starts), or the moment a call-journal merge begins (its
   `.merging` file appears) — until `--kills` kills are spent, then runs
   to its end.  After each kill: every dataset.jsonl line parses, the
   Parquet file and card read whole, the DuckDB file opens.

Re-sent calls = chat requests the server had already answered (it keeps a
digest of every body); bound = the requests in flight on the server at the
kills.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import yaml
from http_clients import start_server
from mock_run import mock_recipe, records, server_stats, write_corpus

# Kill targets in pipeline order; (stage, the longest delay after its start line).
PHASES = [("collect", 1.0), ("relevance", 2.0), ("profile", 2.0), ("generate", 2.0),
          ("broaden", 2.0), ("rephrase", 2.0), ("prompt_filter", 2.0), ("dedup", 0.5),
          ("review_gate", 0.3), ("merge", 0.0), ("retrieve", 1.0), ("answer", 3.0),
          ("answer_checks", 2.0), ("curate", 1.0), ("export", 0.2), ("card", 0.3)]


def accept_sheets(run_dir: Path) -> int:
    """Fill every empty decision of the run's review sheets with accept."""
    filled = 0
    for sheet in (run_dir / "review").glob("*.csv"):
        with sheet.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        for row in rows:
            if not row["decision"]:
                row["decision"], filled = "accept", filled + 1
        with sheet.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return filled


def whole_files(run_dir: Path) -> list[str]:
    """The hand-off files that are not whole (empty list: all read)."""
    broken = []
    dataset = run_dir / "dataset.jsonl"
    if dataset.exists():
        try:
            for line in dataset.read_text().splitlines():
                json.loads(line)
        except ValueError:
            broken.append("dataset.jsonl")
    parquet = run_dir / "dataset.parquet"
    if parquet.exists():
        import pyarrow.parquet as pq

        try:
            pq.read_table(parquet)
        except Exception:  # noqa: BLE001 - any failure to read is the finding
            broken.append("dataset.parquet")
    card = run_dir / "card.md"
    if card.exists() and not card.read_text().rstrip():
        broken.append("card.md")
    db = run_dir / "sftmill.duckdb"
    if db.exists():
        try:
            duckdb.connect(str(db), read_only=True).close()
        except duckdb.Error:
            broken.append("sftmill.duckdb")
    return broken


def start(recipe: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sftmill.cli", "run", str(recipe)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def run_to_end(recipe: Path, env: dict, run_dir: Path) -> list[int]:
    """Run until exit 0, accepting at each review gate (exit 3); the exit codes."""
    codes = []
    while True:
        proc = start(recipe, env)
        proc.communicate()
        codes.append(proc.returncode)
        if proc.returncode == 3 and accept_sheets(run_dir):
            continue
        return codes


def kill_plan(kills: int, rng: random.Random) -> list[tuple[str, float]]:
    """`kills` targets spread evenly over the phases, in pipeline order."""
    plan = [PHASES[i * len(PHASES) // kills] for i in range(kills)] if kills <= len(PHASES) else (
        PHASES * (kills // len(PHASES)) + rng.sample(PHASES, kills % len(PHASES)))
    return sorted(plan, key=PHASES.index)


def killed_run(recipe: Path, env: dict, run_dir: Path, url: str, kills: int,
               rng: random.Random) -> dict:
    """Runs killed at their targets until the plan is spent (a target left
    when a run ends on its own is missed), accepting at the review gates."""
    plan = kill_plan(kills, rng)
    names = [name for name, _ in PHASES]
    merging = Path(str(run_dir / "sftmill.duckdb") + ".calls.merging.jsonl")
    done, in_flight_at_kills, broken, codes, missed = [], 0, [], [], []
    while True:
        target = plan[0] if plan else None
        proc = start(recipe, env)
        fire = threading.Event()
        seen, current = [-1], [""]  # the furthest phase this run started; the latest

        def read() -> None:  # drains the console; fires on the start line of the target or a later phase
            for line in proc.stdout:
                stage = line.strip().rsplit(" ", 2)
                if len(stage) == 3 and stage[2] == "started" and stage[1].rstrip(":") in names:
                    name = stage[1].rstrip(":")
                    seen[0], current[0] = max(seen[0], names.index(name)), name
                    if (target is not None and target[0] != "merge" and not fire.is_set()
                            and names.index(name) >= names.index(target[0])):
                        time.sleep(rng.uniform(0, target[1]))
                        fire.set()
        threading.Thread(target=read, daemon=True).start()

        def watch() -> None:  # fires as a journal merge begins
            while proc.poll() is None and not fire.is_set():
                if merging.exists():
                    fire.set()
                time.sleep(0.002)
        if target is not None and target[0] == "merge":
            threading.Thread(target=watch, daemon=True).start()
        while proc.poll() is None and not fire.wait(0.01):
            pass
        if fire.is_set() and proc.poll() is None:
            in_flight_at_kills += server_stats(url)["in_flight"]
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            where = target[0] if target[0] in ("merge", current[0]) else f"{target[0]}→{current[0]}"
            done.append(where)  # (a stage that ended before its delay: the kill came in the next)
            plan.pop(0)
            broken += [f"after kill {len(done)} ({where}): {b}" for b in whole_files(run_dir)]
            continue
        codes.append(proc.wait())

        def passed(phase: str) -> bool:  # (a merge can come in any later LLM stage)
            return proc.returncode != 3 or (phase != "merge" and names.index(phase) <= seen[0])
        while plan and passed(plan[0][0]):
            missed.append(plan.pop(0)[0])
        if proc.returncode == 3 and accept_sheets(run_dir):
            continue
        if proc.returncode != 3:
            break
    return {"kills": len(done), "killed_in": done, "missed_targets": missed,
            "exit_codes_of_unkilled_runs": codes, "in_flight_at_kills": in_flight_at_kills,
            "half_written": broken}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--target", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=8014)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        url = f"http://127.0.0.1:{args.port}/v1"
        base = mock_recipe(url, write_corpus(tmp / "corpus", args.target), args.target,
                           args.concurrency, name="kills",
                           review={"gates": ["prompts", "answers"], "sample": 10, "tool": "csv"})
        figures = {"kills_asked": args.kills, "target": args.target, "latency_s": args.latency,
                   "concurrency": args.concurrency}
        for name in ("whole", "killed"):
            recipe = tmp / f"{name}.yaml"
            recipe.write_text(yaml.safe_dump({**base, "output_dir": str(tmp / name)}))
            env = {**os.environ, "PREFECT_HOME": str(tmp / f"prefect-{name}"),
                   "PREFECT_LOGGING_LEVEL": "WARNING"}
            server = start_server(args.port, args.latency, args.concurrency)  # a fresh one: no digests
            started = time.monotonic()
            try:
                if name == "whole":
                    figures["uninterrupted_exit_codes"] = run_to_end(recipe, env, tmp / name)
                else:
                    figures |= killed_run(recipe, env, tmp / name, url, args.kills, rng)
                stats = server_stats(url)
            finally:
                server.terminate()
                server.wait()
            figures[f"{name}_chat_calls"] = stats["chat"]
            figures[f"{name}_repeats"] = stats["repeats"]
            figures[f"{name}_seconds"] = round(time.monotonic() - started, 1)
        whole, killed = records(tmp / "whole"), records(tmp / "killed")
        figures |= {"records": len(whole), "records_same": whole == killed,
                    "resent_beyond_in_flight": max(0, figures["killed_repeats"]
                                                   - figures["whole_repeats"]
                                                   - figures["in_flight_at_kills"]),
                    "leftover_partial_files": [p.name for p in (tmp / "killed").rglob("*.partial")]}
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
