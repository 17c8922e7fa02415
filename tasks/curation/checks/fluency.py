"""Fluency: per-token perplexity of the instruction, and of the response
given the instruction, under a language model — exp of the mean negative
log-probability of its tokens.  Gibberish, broken encodings and word salad
score in the hundreds or thousands; plain prose in the tens.

The embedded model computes it offline through llama-cpp-python (the
`fluency` extra: one forward pass per record over instruction + blank line +
response, with logits for every position); an OpenAI-compatible server that
returns a prompt's log-probs (the completions API with `echo: true,
logprobs: 0`, as vLLM does; llama.cpp's own server returns none) computes it
the same way.  Texts are cut to `max_tokens` tokens
each (for a server, to `CHARS_PER_TOKEN` characters a token before sending,
so a long record never passes its context); a record the server rejects is
left unscored with the reason, and the stage goes on."""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import math
import threading
from typing import TYPE_CHECKING

import numpy as np

from sftmill.core.progress import progress
from sftmill.llm.embedded import default_threads, model_label, resolve_gguf
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.loop import run_sync
from sftmill.llm.openai_http import ServerClient
from sftmill.tasks.curation.checks import Record, Score

if TYPE_CHECKING:
    import numpy as np

    from sftmill.core.endpoints import LLMEndpoint

SEPARATOR = "\n\n"
CHARS_PER_TOKEN = 4  # a server's text is cut to max_tokens * this many characters per part
_LOCK = threading.Lock()  # one forward pass at a time on the shared model
_MODELS: dict[tuple[str, int, int], object] = {}
MISSING = ("embedded perplexities need llama-cpp-python (pip install 'sftmill[fluency]'; it "
           "compiles llama.cpp, 5-8 min on 2 cores), or point curation.fluency.model at a "
           "server whose /completions returns prompt logprobs")


class FluencyModelMissing(Exception):
    pass


def fluency_unavailable(endpoint: "LLMEndpoint") -> str | None:
    """Why perplexities cannot be computed with this endpoint (None: they can)."""
    if endpoint.backend == "embedded" and importlib.util.find_spec("llama_cpp") is None:
        return MISSING
    return None


def scoring_model(path: str, n_ctx: int, n_threads: int):
    """llama-cpp-python's model with logits for every position (one per process)."""
    key = (path, n_ctx, n_threads)
    with _LOCK:
        if key not in _MODELS:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise FluencyModelMissing(MISSING) from None
            _MODELS[key] = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, verbose=False,
                                 logits_all=True)
            if len(_MODELS) == 1:
                atexit.register(_close_models)
        return _MODELS[key]


def _close_models() -> None:
    # Closing before interpreter teardown avoids llama.cpp's noisy __del__.
    for model in _MODELS.values():
        model.close()
    _MODELS.clear()


def basis(endpoint: "LLMEndpoint", max_tokens: int) -> str:
    """What a perplexity depends on besides the text: the model and the cut."""
    if endpoint.backend == "embedded":
        return f"{model_label(resolve_gguf(endpoint.model))}/{max_tokens}"
    return f"openai:{endpoint.model}/{max_tokens}"


def perplexity(logprobs: list[float]) -> float | None:
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else None


def token_logprobs(scores: "np.ndarray", tokens: list[int]) -> list[float]:
    """log p(token i | tokens before it) for i ≥ 1, from the logits of every position."""
    logits = np.asarray(scores[:len(tokens) - 1], dtype=np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
    chosen = logits[np.arange(len(tokens) - 1), tokens[1:]]
    return list(chosen - log_norm)


Perplexities = tuple[float | None, float | None, str]  # instruction, response, why unscored


def embedded_perplexities(endpoint: "LLMEndpoint", records: list[Record],
                          max_tokens: int) -> list[Perplexities]:
    llama = scoring_model(str(resolve_gguf(endpoint.model)), 2 * max_tokens + 8,
                          endpoint.n_threads or default_threads())
    out = []
    with progress("fluency", len(records)) as bar:
        for r in records:
            head = llama.tokenize(r.instruction.encode(), add_bos=True)[:max_tokens + 1]
            tail = llama.tokenize((SEPARATOR + r.response).encode(), add_bos=False)[:max_tokens]
            tokens = head + tail
            with _LOCK:
                llama.reset()
                llama.eval(tokens)
                logprobs = token_logprobs(llama.scores, tokens)
            cut = len(head) - 1  # logprobs[i] is token i + 1's
            out.append((perplexity(logprobs[:cut]),
                        perplexity(logprobs[cut:]) if r.response else None, ""))
            bar.advance()
    return out


def server_perplexities(endpoint: "LLMEndpoint", records: list[Record],
                        max_tokens: int) -> list[Perplexities]:
    """From `/completions` with `echo` and `logprobs`: the prompt's tokens
    come back with their log-probs and character offsets."""
    client = ServerClient(endpoint)
    cut = max_tokens * CHARS_PER_TOKEN

    async def one(r: Record) -> Perplexities:
        instruction, response = r.instruction[:cut], r.response[:cut]
        text = instruction + SEPARATOR + response
        try:
            sent = await client.post("/completions", {
                "model": endpoint.model, "prompt": text, "max_tokens": 1, "echo": True,
                "logprobs": 0, "temperature": 0}, estimate_tokens=len(text) // 3 + 1)
            lp = sent.reply.json()["choices"][0]["logprobs"]
            pairs = list(zip(lp["token_logprobs"], lp["text_offset"]))
        except (LLMOutputError, ValueError, KeyError, IndexError, TypeError) as err:
            return None, None, f"failed to score: {type(err).__name__}: {err}"[:300]
        head, tail = [], []
        for value, offset in pairs:
            if value is None or offset >= len(text):  # the first token; the generated one
                continue
            (head if offset < len(instruction) else tail).append(value)
        return (perplexity(head[:max_tokens]),
                perplexity(tail[:max_tokens]) if response else None, "")

    async def everything():
        return await asyncio.gather(*(one(r) for r in records))

    with progress("fluency", len(records)) as bar:
        result = run_sync(everything())
        bar.advance(len(records))
    return list(result)


def _compute(endpoint: "LLMEndpoint"):
    return embedded_perplexities if endpoint.backend == "embedded" else server_perplexities


def instruction_following_difficulty(records: list[Record], endpoint: "LLMEndpoint",
                                     max_tokens: int = 512) -> list[float | None]:
    """IFD per record (Li et al. 2024, "From Quantity to Quality"): the
    model's loss on the response given the instruction over its loss on the
    response alone.  Near 1: the instruction barely helps (a hard or loosely
    tied pair); well below 1: the response follows from the instruction;
    above 1: the instruction misleads.  None where a loss is missing."""
    compute = _compute(endpoint)
    given = compute(endpoint, records, max_tokens)
    alone = compute(endpoint, [Record(r.record_id, "", r.response) for r in records], max_tokens)
    out = []
    for (_i, with_instruction, _p), (_j, without, _q) in zip(given, alone):
        ok = with_instruction and without and without > 1
        out.append(math.log(with_instruction) / math.log(without) if ok else None)
    return out


def fluency_scores(records: list[Record], endpoint: "LLMEndpoint", max_tokens: int) -> list[Score]:
    compute = _compute(endpoint)
    out = []
    for r, (p_in, p_out, problem) in zip(records, compute(endpoint, records, max_tokens)):
        out.append(Score(r.record_id, "instruction_perplexity", p_in, problem))
        out.append(Score(r.record_id, "response_perplexity", p_out, problem))
    return out
