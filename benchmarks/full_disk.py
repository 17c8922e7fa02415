"""A run whose folder's disk fills up, then the same command again once
there is room: what the console shows, and how many calls the server
answered twice.

    python benchmarks/full_disk.py [--size-mb 12] [--target 1500] [--concurrency 16]

Needs root (it mounts a tmpfs of `--size-mb` for the run folder, then grows
it with `mount -o remount`).  Against `mock_openai.py` (0.2 s a request, its
own process; embeddings from it too, so that the run is quick), on a
generated corpus: 1. an uninterrupted run on the ordinary disk (the calls a
run needs, its records); 2. the same recipe with its run folder on the small
tmpfs: exit code, console lines, tracebacks on the console, the last line
(a disk too small for a first chunk of calls stops at the preflight; a
larger one at the chunk that cannot fit, or at the first failed write);
3. the tmpfs grown to 1 GB and the same command again.  Calls paid twice =
chat requests of 2. and 3. minus those of 1.; the records of 3. are compared
with those of 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import yaml
from http_clients import start_server
from llm_throughput import sentence


def chat_requests(url: str) -> int:
    stats = json.loads(urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/stats").read())
    return stats["requests"] - stats.get("embed_requests", 0)


def run(recipe: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "run", str(recipe)],
                          capture_output=True, text=True, env=env)
    console = (proc.stdout + proc.stderr).splitlines()
    return {"exit": proc.returncode, "console_lines": len(console),
            "tracebacks": sum("Traceback (most recent call last)" in line for line in console),
            "last_line": console[-1] if console else ""}


def records(run_dir: Path) -> list[str]:
    """The records' conversations (their metadata name the run's folder)."""
    path = run_dir / "dataset.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted(json.dumps(json.loads(line)["messages"]) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=12)
    parser.add_argument("--target", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=8013)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("full_disk.py mounts a tmpfs: run it as root")
    server = start_server(args.port, 0.2, args.concurrency)
    url = f"http://127.0.0.1:{args.port}/v1"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            rng = random.Random(3)
            corpus = tmp / "corpus"
            corpus.mkdir()
            for f in range(args.target // 40):
                (corpus / f"notes_{f:03d}.txt").write_text("\n\n".join(
                    "\n".join(sentence(rng, 14) for _ in range(9)) for _ in range(10)))
            endpoint = {"backend": "openai", "base_url": url, "model": "mock",
                        "max_concurrency": args.concurrency, "adaptive_concurrency": False,
                        "max_tokens": 200}
            base = {"name": "full-disk", "inputs": [{"path": str(corpus)}],
                    "domain": {"name": "Particle physics"}, "search": {"backend": "none"},
                    "llm": {"generator": endpoint, "judge": {**endpoint, "temperature": 0.0}},
                    "embedding": {"backend": "openai", "base_url": url, "model": "mock",
                                  "batch_size": 64, "max_concurrency": 8},
                    "sizes": {"target_prompts": args.target, "max_rounds": 0},
                    "thresholds": {"prompt_quality": 0.5}}
            env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"),
                   "PREFECT_LOGGING_LEVEL": "WARNING"}
            whole = tmp / "whole.yaml"
            whole.write_text(yaml.safe_dump({**base, "output_dir": str(tmp / "whole")}))
            before = chat_requests(url)
            uninterrupted = run(whole, env)
            needed = chat_requests(url) - before
            whole_mb = sum(f.stat().st_size for f in (tmp / "whole").rglob("*") if f.is_file()) / 2**20

            disk = tmp / "disk"
            disk.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size_mb}m", "tmpfs", str(disk)],
                           check=True)
            try:
                small = tmp / "small.yaml"
                small.write_text(yaml.safe_dump({**base, "output_dir": str(disk / "run")}))
                before = chat_requests(url)
                full = run(small, env)
                first = chat_requests(url) - before
                subprocess.run(["mount", "-o", "remount,size=1g", str(disk)], check=True)
                before = chat_requests(url)
                rerun = run(small, env)
                second = chat_requests(url) - before
                same = records(disk / "run") == records(tmp / "whole")
                n_records = len(records(disk / "run"))
            finally:
                subprocess.run(["umount", str(disk)], check=False)
    finally:
        server.terminate()
        server.wait()
    print(json.dumps({"size_mb": args.size_mb, "target": args.target,
                      "concurrency": args.concurrency, "uninterrupted": uninterrupted,
                      "uninterrupted_folder_mb": round(whole_mb, 1),
                      "calls_needed": needed, "full_disk_run": full, "calls_first": first,
                      "rerun": rerun, "calls_rerun": second,
                      "calls_paid_twice": first + second - needed,
                      "records": n_records, "records_same_as_uninterrupted": same}, indent=1))


if __name__ == "__main__":
    main()
