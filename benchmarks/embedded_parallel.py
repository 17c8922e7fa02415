"""Calls per second of the embedded model (SmolLM2-135M in llama.cpp, in
process) by how many sequences it decodes together (the endpoint's
`parallel`), on requests shaped like the example's: the profile template
(JSON schema, ~250 prompt tokens, ~100 generated), an answer (three
passages, ~450 prompt tokens, plain text) and an opening question (four
short questions per passage, adjacent, as generation sends them) over
paragraphs of the bundled corpus.  No cache: every request is computed.

    python benchmarks/embedded_parallel.py [--calls 24] [--parallel 1 2 4 8]

Prints, per setting, calls/s, generated tokens/s and the speed-up over
`parallel: 1`.  On 2 cores the model is compute-bound (prompt processing
about half of each call), so batching sequences helps the decoding half.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sftmill.core.endpoints import LLMEndpoint
from sftmill.llm.backends import make_llm
from sftmill.llm.request import ChatRequest
from sftmill.prompts import load_template

CORPUS = Path(__file__).resolve().parent.parent / "data" / "example" / "corpus"


def paragraphs(n: int) -> list[str]:
    found = [p.strip() for f in sorted(CORPUS.glob("*.md"))
             for p in f.read_text().split("\n\n") if len(p.split()) > 40]
    return [found[i % len(found)] for i in range(n)]


def requests(kind: str, texts: list[str]) -> list[ChatRequest]:
    if kind == "profile":
        template = load_template("profile")
        return [ChatRequest.build(template.messages(
            domain="Particle physics", subdomains=["Quarks and hadrons"], use_cases=["exam revision"],
            heading="", text=t), schema=template.schema, max_tokens=200, seed=i, temperature=0.7)
            for i, t in enumerate(texts)]
    if kind == "opening":  # four short questions per passage, adjacent (as generation sends them)
        return [ChatRequest.build([
            {"role": "system", "content": "You write one question a student would ask."},
            {"role": "user", "content": f"Passage:\n{texts[i // 4]}\n\nWrite one question about "
                                        f"the passage, beginning with \"{o}\"."}],
            max_tokens=40, seed=i, temperature=0.7, stop=("\n",))
            for i, o in enumerate(["What is", "Why do", "How does", "Explain"] * (len(texts) // 4))]
    passages = "\n\n".join(f"[{k}] {t}" for k, t in enumerate(texts[:3], 1))
    return [ChatRequest.build([
        {"role": "system", "content": "Answer from the passages; cite them as [n]."},
        {"role": "user", "content": f"Passages:\n{passages}\n\nQuestion {i}: what does passage "
                                    f"{i % 3 + 1} say about {t.split()[3]}?"}],
        max_tokens=200, seed=i, temperature=0.2) for i, t in enumerate(texts)]


def measure(kind: str, calls: int, parallel: int) -> dict:
    llm = make_llm(LLMEndpoint(parallel=parallel, max_tokens=200))
    llm.count_tokens([{"role": "user", "content": "warm"}])  # loads the model
    batch = requests(kind, paragraphs(calls))
    started = time.perf_counter()
    results = llm.chat_many(batch)
    wall = time.perf_counter() - started
    out = sum(getattr(r, "tokens_out", 0) for r in results)
    return {"kind": kind, "parallel": parallel, "calls": calls, "wall_s": round(wall, 1),
            "calls_per_s": round(calls / wall, 3), "generated_tokens_per_s": round(out / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=24)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--kinds", nargs="+", default=["profile", "answer", "opening"])
    args = parser.parse_args()
    for kind in args.kinds:
        base = None
        for parallel in args.parallel:
            row = measure(kind, args.calls, parallel)
            base = base or row["calls_per_s"]
            row["speed_up"] = round(row["calls_per_s"] / base, 2)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
