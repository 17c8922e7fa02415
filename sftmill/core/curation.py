"""Curation settings: the checks a dataset passes before export and their thresholds
(the recipe's `curation` section, and `sftmill curate`'s config file)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from sftmill.core.endpoints import Embedding, LLMEndpoint
from sftmill.core.sections import Strict
from sftmill.core.text_rules import REFUSAL_PATTERNS


class LengthBounds(Strict):
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


class Keywords(Strict):
    block: list[str] = Field(
        default_factory=list, description="Regular expressions (case-insensitive): a record "
        "whose instruction or response matches one is dropped (blocked_keyword).")
    allow: list[str] = Field(
        default_factory=list, description="When given, a record must match one of these "
        "(no_allowed_keyword otherwise).")

    @model_validator(mode="after")
    def _patterns_compile(self) -> "Keywords":
        _compiles(self.block + self.allow)
        return self


def _compiles(patterns: list[str]) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"bad regular expression {pattern!r}: {err}") from None


class Refusals(Strict):
    enabled: bool = Field(default=True, description="Drop records whose instruction or response "
                          "holds a refusal or assistant boilerplate phrase (refusal).")
    patterns: list[str] = Field(
        default_factory=lambda: list(REFUSAL_PATTERNS),
        description="Regular expressions (case-insensitive); the default lists \"as an AI\", "
        "\"I cannot help\", \"I'm sorry, but I\", \"I hope this helps\" and their kin.  A list "
        "given here replaces it.")

    @model_validator(mode="after")
    def _patterns_compile(self) -> "Refusals":
        _compiles(self.patterns)
        return self


class TextRule(Strict):
    enabled: bool = Field(default=True, description="Apply this rule (a regular-expression "
                          "check: no model, no call).")


class CopiesPassage(Strict):
    enabled: bool = Field(default=True, description="Drop answers copied from the passages "
                          "they cite (records with passages: the pipeline's).")
    max_share: float = Field(
        default=0.8, gt=0, le=1, description="Share of the answer's words inside a 5-word run "
        "found verbatim in a passage, at or above which the record is dropped (copies_passage).")


class Fluency(Strict):
    enabled: bool = Field(default=False, description="Score perplexities: off by default, as "
                          "the embedded model needs ~4 ms a token on 2 cores (its 49k-word "
                          "vocabulary is scored at every position): ~0.4 s a record; at scale "
                          "point model at a server that returns prompt logprobs.")
    model: LLMEndpoint = Field(
        default_factory=LLMEndpoint,
        description="The language model whose perplexity is measured: the embedded model "
        "(default), or an 'openai' server whose /completions returns prompt logprobs "
        "(echo), as vLLM does (llama.cpp's server returns none).")
    max_instruction_perplexity: float = Field(
        default=3000, gt=1, description="Instructions above this are dropped (low_fluency); "
        "short ones run high, so this bound is loose.")
    max_response_perplexity: float = Field(
        default=300, gt=1, description="Responses (given their instruction) above this are "
        "dropped (low_fluency).")
    max_tokens: int = Field(default=512, ge=8, le=4096,
                            description="Tokens scored of each text (the rest is cut).")


class Offensive(Strict):
    enabled: bool = Field(default=True, description="Score offensive language (a linear classifier: fast).")
    max_probability: float = Field(
        default=0.9, gt=0, le=1, description="alt-profanity-check's probability that "
        "instruction or response is offensive, at or above which the record is dropped.")


class JudgeCheck(Strict):
    enabled: bool = Field(default=False, description="An LLM call per record: off by default.")
    min_score: float = Field(default=0.5, ge=0, le=1,
                             description="The judge's 1-5 as 0-1; records below are dropped.")
    unjudged: Literal["keep", "drop"] = Field(
        default="keep", description="A record whose judge answer could not be used (it is "
        "asked again on the next run): keep it, or drop it (llm_invalid_output) until judged.")


class SafetyCheck(JudgeCheck):
    unjudged: Literal["keep", "drop"] = Field(
        default="drop", description="A record the safety judge could not judge (asked again on "
        "the next run): dropped (llm_invalid_output) until judged, or kept.")


class NearDuplicates(Strict):
    enabled: bool = Field(default=True, description="Remove near-duplicate instructions across the dataset.")
    cosine: float = Field(
        default=0.95, gt=0, le=1, description="Instructions at least this similar are near "
        "duplicates: the better-scored record is kept (adherence, then fluency).")


class Decontamination(Strict):
    benchmarks: list[str] = Field(
        default_factory=list, description="JSONL or Parquet files of evaluation questions "
        "(relative to the config file): a record sharing an n-gram with one is dropped.")
    ngram: int = Field(default=13, ge=4, le=50, description="Words per n-gram.")
    fields: list[str] = Field(
        default_factory=list, description="Fields of the benchmark rows to read, dotted when "
        "nested (question.stem); default: question, prompt, instruction, input, query, problem, "
        "text.  Answers and passages (answer, context, passage) are read only when named here.")


class Curation(Strict):
    """The curation step at the end of every flow (and `sftmill curate`):
    each check scores every record, the thresholds here decide; changing a
    threshold re-decides without computing a score again."""

    enabled: bool = Field(default=True, description="Curate before export (false: export "
                          "every record the flow made).")
    length: LengthBounds = Field(default_factory=LengthBounds,
                                 description="Length bounds of instruction and response.")
    keywords: Keywords = Field(default_factory=Keywords,
                               description="Regular-expression block- and allowlists.")
    refusals: Refusals = Field(default_factory=Refusals,
                               description="Refusal and boilerplate phrases (on by default).")
    degenerate: TextRule = Field(
        default_factory=TextRule, description="Degenerate text: runs of one word, repeated "
        "lines and n-grams, digit or letter soup (Gopher's and C4's rules, fitted to short texts).")
    self_contained: TextRule = Field(
        default_factory=TextRule, description="Instructions that presuppose a text the user will "
        "not have (\"the passage\", \"the author\") unless they include it, and responses "
        "that talk about their sources (not_self_contained).")
    malformed_prompts: TextRule = Field(
        default_factory=TextRule, description="Instructions with a doubled word, unbalanced "
        "quotes or brackets, a leftover list number, or cut off mid-sentence (malformed_prompt).")
    copies_passage: CopiesPassage = Field(default_factory=CopiesPassage,
                                          description="Answers copied from their passages.")
    fluency: Fluency = Field(default_factory=Fluency,
                             description="Perplexity of instruction and response under a language model.")
    offensive: Offensive = Field(default_factory=Offensive,
                                 description="Offensive language (alt-profanity-check).")
    safety: SafetyCheck = Field(default_factory=SafetyCheck,
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
