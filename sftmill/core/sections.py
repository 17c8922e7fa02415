"""The recipe's sections: pydantic models that forbid unknown keys, so a typo fails before
any work starts.  Endpoints and curation have modules of their own."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Subdomain(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    share: float | None = Field(
        default=None, ge=0, le=1, description="Target share of prompts for this subdomain."
    )


class Domain(Strict):
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


class InputSource(Strict):
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


class Sizes(Strict):
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


class Generation(Strict):
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


class Persona(Strict):
    name: str = Field(min_length=3, description="Who writes the prompts, e.g. 'an undergraduate "
                      "preparing for an exam'.")
    share: float | None = Field(default=None, ge=0, le=1,
                                description="Target share of prompts (none: an equal part of "
                                "what the others leave).")


class Personas(Strict):
    """Who the prompts are written as: each generation call is told to write
    as one persona, spread to the target shares; the persona travels in the
    records' metadata.  None given and `generate: 0`: no personas."""

    given: list[Persona] = Field(
        default_factory=list, description="The personas; in YAML `personas:` may also be the "
        "list itself, of names or {name, share}.")
    generate: int = Field(
        default=0, ge=0, le=50,
        description="Personas the generator drafts from the domain's and the profiles' use "
        "cases (one call), in equal shares, when none are given.")
    answer_register: bool = Field(
        default=False, description="Also tell the answer who asks, so it is written for them.")

    @model_validator(mode="before")
    @classmethod
    def _a_list_is_given(cls, data):
        if isinstance(data, list):
            data = {"given": data}
        if isinstance(data, dict) and isinstance(data.get("given"), list):
            data = {**data, "given": [{"name": p} if isinstance(p, str) else p
                                      for p in data["given"]]}
        return data

    @model_validator(mode="after")
    def _shares_fit(self) -> "Personas":
        if self.given and self.generate:
            raise ValueError("give personas or generate: N, not both")
        names = [p.name for p in self.given]
        if len(set(names)) != len(names):
            raise ValueError("a persona is listed twice")
        if sum(p.share or 0 for p in self.given) > 1.0001:
            raise ValueError("persona shares add up to more than 1")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.given or self.generate)


# The difficulty levels a prompt is written (and judged) at, easiest first.
DifficultyLevel = Literal["recall", "explain", "multi_step"]
DIFFICULTY_LEVELS = get_args(DifficultyLevel)

# Evol-Instruct's operations (Xu et al., 2023): the in-depth ones make an
# instruction harder, `breadth` writes a new one on a rarer topic.
DepthOperation = Literal["add_constraints", "deepen", "concretize", "increase_reasoning",
                         "complicate_input"]
DEPTH_OPERATIONS = get_args(DepthOperation)
EvolOperation = Literal[DepthOperation, "breadth"]
EVOL_OPERATIONS = get_args(EvolOperation)


class Difficulty(Strict):
    """How hard the prompts are: each generation call is told a level, spread
    to the target shares; the judge then says which level each prompt is
    (`judge`), and the card and the quality report show target against actual."""

    levels: dict[DifficultyLevel, float] = Field(
        default_factory=dict,
        description="Target share per level: recall (one fact the text states), explain (why or "
        "how something works), multi_step (reasoning over several facts: combine, compare, "
        "work out a consequence).  Empty: no difficulty.")
    judge: bool = Field(default=True, description="The judge says each kept prompt's level "
                        "(a call per prompt); the record's difficulty is the judged one.")
    evolve_share: float = Field(
        default=0.0, ge=0, le=1, description="Share of the prompts rewritten harder by one of "
        "Evol-Instruct's in-depth operations before the filter (easiest asked level first); "
        "a rewrite replaces its original.  0: none.")
    evolve_operations: tuple[DepthOperation, ...] = Field(
        default=("add_constraints", "deepen", "concretize", "increase_reasoning"), min_length=1,
        description="The operations drawn from, one per prompt (complicate_input adds an input "
        "such as a table, which the corpus cannot ground: not drawn unless listed).")

    @model_validator(mode="after")
    def _shares(self) -> "Difficulty":
        if self.levels and not 0.999 <= sum(self.levels.values()) <= 1.001:
            raise ValueError(f"difficulty shares add up to {sum(self.levels.values()):g}, not 1")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.levels)


# How a conversation's user may follow up an answer.
FollowUpKind = Literal["deeper", "example", "challenge", "neighbour"]
FOLLOW_UP_KINDS = get_args(FollowUpKind)


class Conversations(Strict):
    """Grounded multi-turn conversations: after a record's answer passes its
    checks, the user follows up, and each follow-up gets its own retrieval,
    grounded answer with citations and checks."""

    share: float = Field(default=0.0, ge=0, le=1,
                         description="Share of the kept records that become conversations (0: none).")
    turns: tuple[int, int] = Field(
        default=(2, 3), description="[min, max] user turns a conversation aims for, its first "
        "included; each draws its length in the range.  A conversation is exported up to its "
        "last turn that passed its checks.")
    follow_ups: list[FollowUpKind] = Field(
        default_factory=lambda: list(FOLLOW_UP_KINDS),
        description="Kinds of follow-up, spread equally: deeper (into what was just said), "
        "example (asks for one), challenge (doubts a claim), neighbour (a nearby topic).")
    max_similarity: float = Field(
        default=0.85, gt=0, le=1,
        description="A follow-up whose embedding cosine with an earlier user turn of its "
        "conversation reaches this repeats it (repeated_turn).")
    consistency_judge: bool = Field(
        default=False, description="The judge also checks each follow-up's answer against "
        "the conversation's earlier answers (contradicts_earlier); a call per turn.")

    @model_validator(mode="after")
    def _turns(self) -> "Conversations":
        low, high = self.turns
        if not 2 <= low <= high <= 8:
            raise ValueError(f"turns [{low}, {high}]: need 2 <= min <= max <= 8")
        if not self.follow_ups:
            raise ValueError("follow_ups is empty")
        return self

    @property
    def enabled(self) -> bool:
        return self.share > 0


class Chunking(Strict):
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


class Thresholds(Strict):
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


class Limits(Strict):
    max_file_bytes: int = Field(default=20_000_000, ge=1)
    max_page_bytes: int = Field(default=5_000_000, ge=1)


class Search(Strict):
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


class ReasoningChecks(Strict):
    """Checks on a reasoning model's trace (kept apart from its answer; the
    answer checks never see it)."""

    required: bool = Field(
        default=False, description="An answer must come with a trace: one without is dropped "
        "(missing_reasoning).  Set it for a reasoning model whose traces you want to train on.")
    min_chars: int = Field(default=0, ge=0, description="A shorter trace is dropped "
                           "(reasoning_length).")
    max_chars: int = Field(default=30000, ge=1, description="A longer trace is dropped "
                           "(reasoning_length).")


class Answers(Strict):
    """The answer half: extended queries, chop-n-RAG, grounded answers, checks."""

    temperature: float | None = Field(
        default=None, ge=0, le=2,
        description="Sampling temperature for answers (default: the generator's).  Prompts "
        "gain from a high temperature, answers from a low one.")
    frequency_penalty: float = Field(
        default=0.0, ge=-2, le=2,
        description="OpenAI's frequency_penalty for answers (llama.cpp, vLLM and hosted APIs "
        "take it): 0.5 keeps a small model from looping on one phrase.")
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
    max_copied_share: float = Field(
        default=0.8, gt=0, le=1,
        description="Share of an answer's words inside 5-word runs found verbatim in its cited "
        "passages, at or above which it is dropped (copies_passage): a copy teaches the model "
        "to recite, not to answer.")
    reasoning: ReasoningChecks = Field(
        default_factory=ReasoningChecks,
        description="A reasoning model's trace: kept per answer, checked here.  An output that "
        "is all trace (the tokens ran out while the model reasoned) is dropped as "
        "llm_invalid_output.")


class Export(Strict):
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
    reasoning: Literal["field", "inline", "drop"] = Field(
        default="field", description="Where a reasoning model's trace goes: 'field' (a "
        "reasoning_content field of the assistant message in OpenAI messages, thinking in "
        "ShareGPT and Alpaca), 'inline' (<think>…</think> before the answer, for trainers that "
        "want it in the text), 'drop' (not exported; it stays in the run database).")
    license: str = Field(
        default="other", description="The dataset's license in its card, as the Hugging Face "
        "Hub names them (apache-2.0, cc-by-4.0, mit …); 'other' until you choose one that "
        "your sources and your generator's terms allow.")
    language: list[str] = Field(default_factory=lambda: ["en"], min_length=1,
                                description="ISO 639-1 codes of the records' language, for the card.")


class Schedule(Strict):
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


class LabelStudio(Strict):
    """Where the review projects live.  The URL and the token are read from
    the environment (never from the recipe, the store or the logs)."""

    url_env: str = Field(default="LABEL_STUDIO_URL",
                         description="Environment variable holding Label Studio's URL.")
    token_env: str = Field(
        default="LABEL_STUDIO_API_KEY", description="Environment variable holding an access "
        "token: a personal access token (JWT, exchanged for short-lived access tokens) or "
        "a legacy token.")


class Review(Strict):
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


class Price(Strict):
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


class Budget(Strict):
    """Caps on what a run's LLM calls may spend; the run stops cleanly before
    a batch of calls could pass one, and goes on when rerun with a higher cap."""

    max_cost: float | None = Field(
        default=None, gt=0, description="Most the run's LLM calls may cost (needs a price "
        "for every model under prices).")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens (prompt + answer) the run's LLM calls may use.")
