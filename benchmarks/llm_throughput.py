"""Does the LLM server or sftmill set the pace?  Requests/s of a bare
aiohttp client against `mock_openai.py`, then of sftmill's real relevance,
prompt-filter and answer stages (their plain functions on a generated
corpus in a fresh run database, with the call journal, cache look-ups,
limits and progress all on) at the same concurrency; prints each stage's
ratio to the bare client.

    python benchmarks/llm_throughput.py [--items 4000] [--concurrency 64 256]
                                        [--latency 0.2] [--adaptive]
    python benchmarks/llm_throughput.py --whole-run 20000 [--concurrency 64]
                                        [--default-embeddings | --served-embeddings]

`--whole-run N` instead runs `sftmill run` end to end against the mock on a
generated corpus with `target_prompts: N` and prints, per stage, the calls
sent, the wall time and the LLM time — what the server needs for those calls
at that concurrency (calls × latency ÷ concurrency) — and the whole run's
wall time over its LLM time.  It also measures the bare client against the
same mock first and prints the wall time over the bare client's time for the
same calls (calls ÷ the bare client's requests/s): the denominator the stage
ratios use, which folds in what this machine's 2 cores lose to the mock and
the client sharing them.  `--default-embeddings` (the default) keeps the
recipe's embedder, MiniLM in process on this CPU, as a user who sets
nothing has it; the output counts the texts it embedded.  With `--served-embeddings` the recipe's
embeddings come from the mock's `/v1/embeddings` (as from a TEI or vLLM
embedding server) instead of MiniLM on this machine's CPU, and their server
time counts in the LLM time (requests × 0.05 s ÷ concurrency).  With
`--prefect-server` the run reports to a Prefect server started beforehand
(`prefect server start`, on the same cores) instead of starting Prefect's
temporary one: how a team that schedules its runs on a server runs.

The mock server runs in its own process on the same machine (so on 2 cores
it competes with the client for CPU, as a server on the same box would), with
as many slots as the concurrency.  By default the endpoint's concurrency is
fixed at the level measured (`adaptive_concurrency: false`) so that both
sides hold the same number of requests in flight; `--adaptive` lets the
limiter find its own level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import urllib.request
from pathlib import Path

from http_clients import run_aiohttp, start_server
from mock_run import WORDS, sentence, server_stats

EMBED_LATENCY = 0.05  # mock_openai.py's default seconds per /v1/embeddings request

def recipe_for(url: str, concurrency: int, adaptive: bool, run_dir: Path):
    from sftmill.core.recipe import parse_recipe

    (run_dir / "in.txt").write_text("x")
    endpoint = {"backend": "openai", "base_url": url, "model": "mock",
                "max_concurrency": concurrency, "adaptive_concurrency": adaptive,
                "max_tokens": 200}
    return parse_recipe({
        "name": "throughput", "output_dir": "run", "inputs": [{"path": "in.txt"}],
        "domain": {"name": "Particle physics"}, "search": {"backend": "none"},
        "llm": {"generator": endpoint, "judge": {**endpoint, "temperature": 0.0, "max_tokens": 60}},
        # the answer stage embeds answers and prompts as they arrive: from the
        # mock, so that the stage measures the client, not MiniLM on this CPU
        "embedding": {"backend": "openai", "base_url": url, "model": "mock", "batch_size": 64,
                      "max_concurrency": 32},
        "thresholds": {"prompt_quality": 0.5},
        # a target every chunk is needed for: the relevance wave judges them all
        "sizes": {"target_prompts": 1_000_000}}, run_dir)


def fill(store, n: int, seed: int = 0) -> None:
    """n chunks, n candidate prompts, n prompts with 3 retrieved passages each."""
    rng = random.Random(seed)
    store.insert("documents", [{"doc_id": "d0", "uri": "gen", "source_kind": "file", "title": "gen",
                                "text": "", "n_chars": 0}])
    chunks = [{"chunk_id": f"c{i}", "doc_id": "d0", "idx": i, "char_start": 0, "char_end": 0,
               "heading": "", "text": " ".join(sentence(rng, 12) for _ in range(8)), "n_tokens": 200}
              for i in range(n)]
    store.insert("chunks", chunks)
    texts = [f"Why does the {rng.choice(WORDS)} {rng.choice(WORDS)} change {sentence(rng, 6)[:-1]}? ({i})"
             for i in range(n)]
    store.insert("candidate_prompts", [{"prompt_id": f"p{i}", "text": t, "origin": "generated",
                                        "parent_id": "", "profile_id": "", "task_type": "question"}
                                       for i, t in enumerate(texts)])
    store.insert("prompts", [{"prompt_id": f"p{i}", "text": t, "origin": "generated", "parent_id": "",
                              "profile_id": "", "chunk_id": f"c{i}", "doc_id": "d0",
                              "subdomain": "", "task_type": "question"} for i, t in enumerate(texts)])
    store.insert("retrievals", [{"prompt_id": f"p{i}", "rank": r, "chunk_id": f"c{(i + r) % n}",
                                 "similarity": 0.6} for i in range(n) for r in range(3)])


def stage_rates(url: str, n: int, concurrency: int, adaptive: bool) -> dict[str, float]:
    from sftmill.core.progress import LogReporter, set_reporter
    from sftmill.core.store import Store
    from sftmill.tasks.stages import answer, prompt_filter, relevance

    set_reporter(LogReporter())
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = recipe_for(url, concurrency, adaptive, Path(tmp))
        store = Store.open(Path(tmp) / "run" / "sftmill.duckdb")
        fill(store, n)
        for name, run in (("relevance", lambda: relevance.score_chunks(store, recipe)),
                          ("prompt_filter", lambda: prompt_filter.score_prompts(store, recipe)),
                          ("answer", lambda: answer.write_answers(store, recipe))):
            before = store.scalar("SELECT count(*) FROM llm_calls WHERE status = 'ok'")
            started = time.perf_counter()
            run()
            seconds = time.perf_counter() - started
            # every call the stage sent: the answer stage also sends the
            # groundedness judge's, one per answer, as the answers arrive
            sent = store.scalar("SELECT count(*) FROM llm_calls WHERE status = 'ok'") - before
            out[name] = round(sent / seconds, 1)
        Store.close_all()
    return out


def bare_rate(url: str, items: int, concurrency: int) -> float:
    """Requests/s of a bare aiohttp client holding `concurrency` in flight."""
    asyncio.run(run_aiohttp(url + "/chat/completions", 2 * concurrency, concurrency))  # warm up
    started = time.perf_counter()
    asyncio.run(run_aiohttp(url + "/chat/completions", items, concurrency))
    return items / (time.perf_counter() - started)


def prefect_server(env: dict, port: int = 4291):
    """`prefect server start` on this machine; its API URL once it answers."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)],
                            env={**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"
    for _ in range(360):
        try:
            urllib.request.urlopen(api + "/health", timeout=2).read()
            return proc, api
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("prefect server start exited")
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the Prefect server did not answer within 180 s")


def whole_run(url: str, target: int, concurrency: int, latency: float, adaptive: bool,
              served_embeddings: bool, warm_prefect: bool, keep: Path | None = None,
              bare_rps: float | None = None, on_server: bool = False) -> dict:
    import os
    import subprocess
    import sys

    import duckdb
    import yaml

    rng = random.Random(7)
    per_profile = 4
    n_chunks = int(target / per_profile * 1.1)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        per_file = 100
        for f in range(0, n_chunks, per_file):
            paragraphs = ["\n".join(sentence(rng, 14) for _ in range(9))
                          for _ in range(min(per_file, n_chunks - f))]
            (corpus / f"notes_{f // per_file:04d}.txt").write_text("\n\n".join(paragraphs))
        endpoint = {"backend": "openai", "base_url": url, "model": "mock",
                    "max_concurrency": concurrency, "adaptive_concurrency": adaptive,
                    "max_tokens": 200}
        recipe = {
            "name": "throughput", "output_dir": "run", "inputs": [{"path": "corpus"}],
            "domain": {"name": "Particle physics", "subdomains": [
                {"name": "Quarks"}, {"name": "Gluons"}]},
            "search": {"backend": "none"},
            "llm": {"generator": endpoint, "judge": {**endpoint, "temperature": 0.0, "max_tokens": 60}},
            "sizes": {"target_prompts": target, "prompts_per_profile": per_profile,
                      "broaden_per_profile": 0, "max_rounds": 0},
            "chunking": {"max_tokens": 256, "min_tokens": 24},
            "thresholds": {"prompt_quality": 0.5, "max_opening_share": 1.0},
            "answers": {"queries_per_prompt": 0, "min_similarity": 0.0}}
        if served_embeddings:  # the mock's /v1/embeddings instead of MiniLM on this CPU
            recipe["embedding"] = {"backend": "openai", "base_url": url, "model": "mock",
                                   "batch_size": 64, "max_concurrency": 32}
        (Path(tmp) / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "ph")}
        if warm_prefect:  # set up Prefect's database first, as any earlier run has
            warm = subprocess.run([sys.executable, "-c", "from prefect import flow; flow(lambda: 1)()"],
                                  env=env, capture_output=True, text=True)
            if warm.returncode != 0:
                raise SystemExit("warming Prefect's home failed:\n" + warm.stderr[-3000:])
        server = None
        if on_server:
            server, env["PREFECT_API_URL"] = prefect_server(env)
        try:
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "sftmill.cli", "run",
                                   str(Path(tmp) / "recipe.yaml")],
                                  capture_output=True, text=True, env=env)
            wall = time.perf_counter() - started
        finally:
            if server is not None:
                server.terminate()
                server.wait()
        if proc.returncode != 0:
            raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
        con = duckdb.connect(str(Path(tmp) / "run" / "sftmill.duckdb"), read_only=True)
        stages = {stage: round(seconds, 1) for stage, seconds in con.execute(
            "SELECT stage, seconds FROM stage_stats ORDER BY finished_at").fetchall()}
        calls = dict(con.execute("SELECT stage, count(*) FROM llm_calls WHERE status = 'ok' "
                                 "GROUP BY stage").fetchall())
        # Stragglers: the share of a stage's LLM span after its last request
        # was sent (fewer than `concurrency` in flight, the stage waiting on them).
        tails = {stage: round(tail, 4) for stage, tail in con.execute(
            "SELECT stage, (epoch(max(created_at)) - max(epoch(created_at) - latency_s)) / "
            "nullif(epoch(max(created_at)) - min(epoch(created_at) - latency_s), 0) "
            "FROM llm_calls WHERE status = 'ok' GROUP BY stage").fetchall()}
        # Around the LLM span: seconds of the stage before its first request
        # and after its last answer (reading, preparing, writing, checking).
        around = {stage: [round(before, 1), round(after, 1)] for stage, before, after in con.execute(
            "SELECT s.stage, min(epoch(c.created_at) - c.latency_s) - (epoch(s.finished_at) - s.seconds), "
            "epoch(s.finished_at) - max(epoch(c.created_at)) "
            "FROM stage_stats s JOIN llm_calls c ON c.stage = s.stage AND c.status = 'ok' "
            "GROUP BY s.stage, s.finished_at, s.seconds").fetchall()}
        records = con.execute("SELECT count(*) FROM dataset").fetchone()[0]
        embedded_here = con.execute("SELECT count(*) FROM embeddings WHERE model NOT LIKE "
                                    "'openai:%'").fetchone()[0]
        prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
        con.close()
        if keep is not None:  # the run folder and its recipe, to look into afterwards
            import shutil

            shutil.copytree(tmp, keep, dirs_exist_ok=True)
        served = server_stats(url)
    llm_time = {s: round(n * latency / concurrency, 1) for s, n in calls.items()}
    if served.get("embed_requests"):  # their server time counts as the server's
        llm_time["embeddings"] = round(served["embed_requests"] * EMBED_LATENCY / concurrency, 1)
    bare = {}
    if bare_rps:
        bare_time = sum(calls.values()) / bare_rps + llm_time.get("embeddings", 0.0)
        bare = {"bare_requests_per_s": round(bare_rps, 1), "bare_client_time_s": round(bare_time, 1),
                "wall_over_bare_client_time": round(wall / bare_time, 2)}
    return {"target_prompts": target, "chunks": n_chunks, "prompts": prompts, "records": records,
            "prefect": "server" if on_server else "temporary server",
            "prefect_home": "warm" if warm_prefect else "cold", "wall_s": round(wall, 1), "llm_time_s": round(sum(llm_time.values()), 1),
            "wall_over_llm_time": round(wall / max(1e-9, sum(llm_time.values())), 2), **bare,
            "stages_s": stages, "calls": calls, "stage_llm_time_s": llm_time,
            "straggler_share": tails, "before_after_llm_s": around, "texts_embedded_by_server": served.get("embedded", 0),
            "texts_embedded_on_this_cpu": embedded_here}


def main() -> None:
    import os

    # As the CLI does: a Prefect home being set up on 2 busy cores needs more than 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=4000, help="calls per stage")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--adaptive", action="store_true")
    parser.add_argument("--port", type=int, default=8012)
    parser.add_argument("--whole-run", type=int, metavar="TARGET_PROMPTS")
    embeddings = parser.add_mutually_exclusive_group()
    embeddings.add_argument("--default-embeddings", action="store_true",
                            help="whole run: the recipe's default embedder, MiniLM on this CPU "
                            "(the default case, named)")
    embeddings.add_argument("--served-embeddings", action="store_true",
                            help="whole run: embeddings from the mock's /v1/embeddings, not local MiniLM")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="whole run: copy the run (recipe, corpus, run folder) to DIR")
    parser.add_argument("--cold-prefect", action="store_true",
                        help="whole run: on a Prefect home never used before (the run also pays "
                        "for setting up Prefect's database)")
    parser.add_argument("--prefect-server", action="store_true",
                        help="whole run: report to a Prefect server started beforehand, not "
                        "Prefect's temporary one")
    args = parser.parse_args()
    if args.whole_run:
        c = args.concurrency[0]
        server = start_server(args.port, args.latency, c)
        try:
            url = f"http://127.0.0.1:{args.port}/v1"
            bare_rps = bare_rate(url, args.items, c)
            print(json.dumps(whole_run(url, args.whole_run, c,
                                       args.latency, args.adaptive, args.served_embeddings,
                                       not args.cold_prefect, args.keep, bare_rps,
                                       args.prefect_server)),
                  flush=True)
        finally:
            server.terminate()
            server.wait()
        return
    for c in args.concurrency:
        server = start_server(args.port, args.latency, c)
        try:
            url = f"http://127.0.0.1:{args.port}/v1"
            bare = bare_rate(url, args.items, c)
            stages = stage_rates(url, args.items, c, args.adaptive)
            print(json.dumps({"concurrency": c, "latency_s": args.latency, "items": args.items,
                              "bare_requests_per_s": round(bare, 1), "stages": stages,
                              "ratio": {k: round(v / bare, 2) for k, v in stages.items()}}),
                  flush=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
