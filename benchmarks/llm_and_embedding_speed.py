"""Speed of the embedded defaults on this machine.

Measures
  1. SmolLM2-135M (llama.cpp, in-process) on the relevance template with its
     JSON-schema grammar: generated tokens/s and seconds per call;
  2. all-MiniLM-L6-v2 (sentence-transformers, CPU): sentences/s.

Run:  .venv/bin/python benchmarks/llm_and_embedding_speed.py
Nothing here is asserted in the test suite; the figures go in benchmarks/README.md.
"""

from __future__ import annotations

import time

from sftmill.core.endpoints import Embedding, LLMEndpoint
from sftmill.embed.embedder import Embedder
from sftmill.llm.request import ChatRequest
from sftmill.llm.backends import make_llm
from sftmill.prompts import load_template

PASSAGE = ("Gluons are the carriers of the strong interaction. Unlike photons they carry "
           "colour charge themselves, so they interact with each other. ")


def bench_llm(n: int = 12) -> None:
    endpoint = LLMEndpoint(temperature=0.7, max_tokens=120)
    llm = make_llm(endpoint)  # no store: nothing is cached
    template = load_template("relevance")
    requests = [
        ChatRequest.build(template.messages(domain="Particle physics", description="",
                                            relevant="", subdomains=[], heading="",
                                            text=PASSAGE * (1 + i % 3)),
                          schema=template.schema, max_tokens=120, seed=i)
        for i in range(n)
    ]
    llm.chat(requests[0])  # load the model outside the timing
    started = time.perf_counter()
    results = llm.chat_many(requests[1:])
    seconds = time.perf_counter() - started
    out = sum(r.tokens_out for r in results if hasattr(r, "tokens_out"))
    inp = sum(r.tokens_in for r in results if hasattr(r, "tokens_in"))
    print(f"llm: {len(results)} calls in {seconds:.1f} s = {seconds / len(results):.2f} s/call; "
          f"{inp} prompt tokens, {out} generated = {out / seconds:.0f} generated tokens/s "
          f"(threads={llm.n_threads})")


def bench_embeddings(n: int = 2000) -> None:
    emb = Embedder(Embedding())
    sentences = [f"Question {i}: how do quarks and gluons form hadron number {i}?" for i in range(n)]
    emb.embed(sentences[:10])
    started = time.perf_counter()
    emb.embed(sentences)
    seconds = time.perf_counter() - started
    print(f"embeddings: {n} sentences in {seconds:.1f} s = {n / seconds:.0f} sentences/s")


if __name__ == "__main__":
    bench_llm()
    bench_embeddings()
