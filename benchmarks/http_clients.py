"""httpx against aiohttp as the LLM layer's HTTP client: requests/s and the
client's CPU seconds per 1,000 requests at a given number in flight, against
`mock_openai.py` (started here in its own process, latency 0.2 s, as many
slots as requests in flight) on the same machine.

    python benchmarks/http_clients.py [--n 4000] [--inflight 64 256]

Each client sends the same chat-completions body (a ~1 kB prompt) with one
pooled session for the whole run, as sftmill does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BODY = {"model": "mock", "temperature": 0.0, "max_tokens": 60,
        "messages": [{"role": "system", "content": "You judge relevance."},
                     {"role": "user", "content": "Passage: " + "quarks and gluons " * 60}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5},
                                             "reason": {"type": "string"}},
            "required": ["score", "reason"]}}}}


def start_server(port: int, latency: float, slots: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HERE / "mock_openai.py"), "--port", str(port),
                             "--latency", str(latency), "--slots", str(slots)])
    import httpx

    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("mock server did not start")


async def run_httpx(url: str, n: int, inflight: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(inflight)

        async def one():
            async with gate:
                r = await client.post(url, json=BODY)
                r.json()

        await asyncio.gather(*(one() for _ in range(n)))


async def run_aiohttp(url: str, n: int, inflight: int) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        gate = asyncio.Semaphore(inflight)

        async def one():
            async with gate:
                async with session.post(url, json=BODY) as r:
                    await r.json()

        await asyncio.gather(*(one() for _ in range(n)))


def measure(client: str, url: str, n: int, inflight: int) -> dict:
    run = {"httpx": run_httpx, "aiohttp": run_aiohttp}[client]
    asyncio.run(run(url, min(n, 2 * inflight), inflight))  # warm up: connections open
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    asyncio.run(run(url, n, inflight))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"client": client, "inflight": inflight, "requests": n,
            "requests_per_s": round(n / wall, 1), "client_cpu_s_per_1000": round(1000 * cpu / n, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--inflight", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    for inflight in args.inflight:
        server = start_server(args.port, args.latency, inflight)
        try:
            url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
            for client in ("httpx", "aiohttp"):
                print(json.dumps(measure(client, url, args.n, inflight)), flush=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
