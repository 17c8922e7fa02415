"""An OpenAI-compatible chat-completions and embeddings server for throughput benchmarks:
a fixed latency per request, a fixed number of requests in service at once
(the rest queue, as on a vLLM server with full batch slots), and answers
that are valid for the request's JSON schema (the smallest instance that
satisfies it, its strings drawn from the request's words so that answers
differ) or, for free text, a sentence of passage [1] in other words, citing it.
`/v1/embeddings` answers a batch of texts with hashed bag-of-words vectors
(384 dimensions: texts sharing words are near, so retrieval and dedup have
something to find) after `--embed-latency` seconds in a slot.  With
`--reasoning field` it answers as a reasoning model behind a reasoning
parser (a trace of `--reasoning-words` words in `reasoning_content`), with
`--reasoning think` as one without (`<think>…</think>` before the answer in
`content`); either way the completion tokens count the trace and `stop`
cuts the whole output, as a server does.

    python benchmarks/mock_openai.py --port 8011 --latency 0.2 --slots 64

Runs on aiohttp's server in its own process, so the client under test does
not share its event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import time
import zlib


def schema_instance(schema: dict, words: list[str], rng: random.Random) -> object:
    """The smallest value that a (simple) JSON schema accepts, its strings
    made of words from the request (so that a whole run's prompts differ
    and retrieval finds their passages)."""
    if "enum" in schema:  # scores: the best (so that work flows on); labels: any
        values = schema["enum"]
        return max(values) if all(isinstance(v, int) for v in values) else rng.choice(values)
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties", {})
        return {k: schema_instance(props[k], words, rng) for k in schema.get("required", list(props))}
    if kind == "array":  # as many items as asked for (a list of n prompts: n)
        n = min(schema.get("maxItems", schema.get("minItems", 1)), max(8, schema.get("minItems", 1)))
        return [schema_instance(schema.get("items", {}), words, rng) for _ in range(n)]
    if kind == "integer":
        return max(schema.get("minimum", 4), min(4, schema.get("maximum", 4)))
    if kind == "number":
        return max(schema.get("minimum", 0.8), min(0.8, schema.get("maximum", 0.8)))
    if kind == "boolean":
        return True
    picked = " ".join(rng.choice(words) for _ in range(10)) if words else "quarks and gluons"
    text = f"Why does the {picked}?"
    while len(text) < schema.get("minLength", 0):
        text += " " + rng.choice(words or ["more"])
    return text[: schema.get("maxLength", 10_000)]


def free_text(user: str, rng: random.Random) -> str:
    """An answer citing passage [1] with one of its sentences, a word added
    every four (no five-word run copied), when the request lists passages;
    otherwise a sentence of the request's words."""
    if "[1]" in user:
        passage = user.split("[1]", 1)[1].split("\n", 1)[0]
        sentences = [s.strip() for s in passage.split(".") if len(s.split()) > 4]
        if sentences:
            words = rng.choice(sentences).split()
            return " ".join(f"{w} indeed" if i % 4 == 3 and i < len(words) - 1 else w
                            for i, w in enumerate(words)) + " [1]."
    words = user.split()
    return " ".join(rng.choice(words) for _ in range(20)) + "." if words else "A plain answer."


def bag_of_words(texts: list[str], dim: int = 384):
    """Unit float32 vectors, one row per text: each word adds ±1 at a bucket
    its hash picks.  One numpy pass per batch: this runs on the mock's only
    event loop, where the per-text Python version (~6 ms per batch of 64
    prompts) held back the chat answers queued behind it, which a server on
    another machine would not."""
    import numpy as np

    rows, hashes = [], []
    for row, text in enumerate(texts):
        for word in text.lower().split():
            rows.append(row)
            hashes.append(zlib.crc32(word.strip('.,;:?!"()[]').encode()))
    h = np.asarray(hashes, dtype=np.int64)
    vectors = np.zeros((len(texts), dim))
    np.add.at(vectors, (np.asarray(rows, dtype=np.int64), h % dim), np.where(h & 1 << 20, 1.0, -1.0))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def with_reasoning(content: str, body: dict, how: str | None, words: int, rng: random.Random,
                   ) -> tuple[dict, int]:
    """The message and its completion tokens (40 for the answer), with a
    trace placed as `how` says (None: no trace)."""
    if not how:
        return {"role": "assistant", "content": content}, 40
    vocabulary = [w for w in content.split() if w.isalpha()] or ["think"]
    trace = " ".join(rng.choice(vocabulary) for _ in range(words // 2)) + ".\n\n" + " ".join(
        rng.choice(vocabulary) for _ in range(words - words // 2)) + "."
    stop = body.get("stop") or []

    def cut(text: str) -> str:
        ends = [i for i in (text.find(s) for s in stop) if i >= 0]
        return text[:min(ends)] if ends else text
    if how == "think":
        return {"role": "assistant", "content": cut(f"<think>\n{trace}\n</think>\n\n{content}")}, 40 + words
    return {"role": "assistant", "content": cut(content), "reasoning_content": trace}, 40 + words


def make_app(latency_s: float, slots: int, embed_latency_s: float = 0.05,
             reasoning: str | None = None, reasoning_words: int = 200):
    from aiohttp import web

    slot = asyncio.Semaphore(slots)
    # requests: answered (chat and embeddings); in_flight: chat requests not
    # answered yet; repeats: chat requests whose body was answered before
    stats = {"requests": 0, "in_flight": 0, "repeats": 0, "started": time.monotonic()}
    answered: set[bytes] = set()  # digests of the chat bodies answered

    async def chat(request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema")
        stats["in_flight"] += 1
        try:
            async with slot:
                await asyncio.sleep(latency_s)
        finally:
            stats["in_flight"] -= 1
        stats["requests"] += 1
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        stats["repeats"] += digest in answered
        answered.add(digest)
        user = next((m["content"] for m in reversed(body.get("messages", []))
                     if m.get("role") == "user"), "")
        rng = random.Random(zlib.crc32(user.encode()) ^ int(body.get("seed") or 0))
        words = [w.strip('.,;:"()[]') for w in user.split() if len(w) > 3][:400]
        content = json.dumps(schema_instance(schema, words, rng)) if schema else free_text(user, rng)
        message, tokens_out = with_reasoning(content, body, reasoning, reasoning_words, rng)
        return web.json_response({
            "id": f"chatcmpl-{stats['requests']}", "object": "chat.completion",
            "model": body.get("model", "mock"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": message}],
            "usage": {"prompt_tokens": 200, "completion_tokens": tokens_out,
                      "total_tokens": 200 + tokens_out}})

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        as_base64 = body.get("encoding_format") == "base64"

        def encoded(vector) -> list[float] | str:  # as OpenAI's API does
            return base64.b64encode(vector.tobytes()).decode() if as_base64 else vector.tolist()

        async with slot:
            await asyncio.sleep(embed_latency_s)
        stats["requests"] += 1
        stats["embed_requests"] = stats.get("embed_requests", 0) + 1
        stats["embedded"] = stats.get("embedded", 0) + len(texts)
        return web.json_response({
            "object": "list", "model": body.get("model", "mock"),
            "data": [{"object": "embedding", "index": i, "embedding": encoded(vector)}
                     for i, vector in enumerate(bag_of_words(texts))],
            "usage": {"prompt_tokens": sum(len(t.split()) for t in texts),
                      "total_tokens": sum(len(t.split()) for t in texts)}})

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock", "object": "model"}]})

    async def served(_request: web.Request) -> web.Response:
        return web.json_response(stats | {"uptime_s": time.monotonic() - stats["started"]})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.add_routes([web.post("/v1/chat/completions", chat),
                    web.post("/v1/embeddings", embeddings), web.get("/v1/models", models),
                    web.get("/stats", served)])
    return app


def main() -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--slots", type=int, default=64, help="requests in service at once")
    parser.add_argument("--embed-latency", type=float, default=0.05,
                        help="seconds per /v1/embeddings request (a batch of texts)")
    parser.add_argument("--reasoning", choices=("field", "think"), default=None,
                        help="answer as a reasoning model: the trace in reasoning_content "
                        "(field) or as <think>…</think> before the answer (think)")
    parser.add_argument("--reasoning-words", type=int, default=200, help="words per trace")
    args = parser.parse_args()
    web.run_app(make_app(args.latency, args.slots, args.embed_latency, args.reasoning,
                         args.reasoning_words), host=args.host, port=args.port,
                access_log=None, print=None, backlog=2048)


if __name__ == "__main__":
    main()
