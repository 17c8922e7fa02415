"""Shared by the benchmarks that run `sftmill run` as a user does against
`mock_openai.py`: generated physics-like text and a corpus of it, a recipe
whose generator, judge and embeddings all point at the mock, the server's
counters, one CLI run and its records."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.request
from pathlib import Path

WORDS = ("quark gluon hadron meson baryon proton neutron colour charge confinement lattice "
         "asymptotic freedom jet collider detector scattering parton flavour strange charm "
         "bottom top up down lepton boson coupling vacuum plasma nucleus spin isospin").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_corpus(folder: Path, target: int, seed: int = 3) -> Path:
    """Text files of generated physics-like sentences, about one per 40 prompts of `target`."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(max(1, target // 40)):
        (folder / f"notes_{f:03d}.txt").write_text("\n\n".join(
            "\n".join(sentence(rng, 14) for _ in range(9)) for _ in range(10)))
    return folder


def mock_recipe(url: str, corpus: Path, target: int, concurrency: int, **more) -> dict:
    """A recipe with every model on the mock at `url` (no web search, one round)."""
    endpoint = {"backend": "openai", "base_url": url, "model": "mock",
                "max_concurrency": concurrency, "adaptive_concurrency": False, "max_tokens": 200}
    return {"name": "mock-run", "inputs": [{"path": str(corpus)}],
            "domain": {"name": "Particle physics"}, "search": {"backend": "none"},
            "llm": {"generator": endpoint, "judge": {**endpoint, "temperature": 0.0}},
            "embedding": {"backend": "openai", "base_url": url, "model": "mock",
                          "batch_size": 64, "max_concurrency": 8},
            "sizes": {"target_prompts": target, "max_rounds": 0},
            "thresholds": {"prompt_quality": 0.5}, **more}


def server_stats(url: str) -> dict:
    """The mock's counters, with `chat` = chat requests answered."""
    stats = json.loads(urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/stats").read())
    return stats | {"chat": stats["requests"] - stats.get("embed_requests", 0)}


def run_cli(recipe: Path, env: dict, *args: str) -> dict:
    """`sftmill run RECIPE ARGS` to its end: exit code, console lines, tracebacks, last line."""
    proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "run", str(recipe), *args],
                          capture_output=True, text=True, env=env)
    console = (proc.stdout + proc.stderr).splitlines()
    return {"exit": proc.returncode, "console_lines": len(console),
            "tracebacks": sum("Traceback (most recent call last)" in line for line in console),
            "last_line": console[-1] if console else ""}


def records(run_dir: Path) -> list[str]:
    """The records' conversations, sorted (their metadata name the run's folder)."""
    path = run_dir / "dataset.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted(json.dumps(json.loads(line)["messages"]) for line in lines)
