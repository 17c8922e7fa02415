"""The LLM layer's errors: one record's bad answer (LLMOutputError) against a server that is not
there (LLMUnavailableError)."""

from __future__ import annotations


class LLMError(Exception):
    """Base of LLM-layer errors."""


class LLMOutputError(LLMError):
    """The answer for one record could not be used (invalid JSON after repair
    and one re-prompt, or the server rejected this one request).  The caller
    skips the record with reason `llm_invalid_output`."""

    reason = "llm_invalid_output"


class PromptTooLong(LLMOutputError):
    """The rendered prompt and its answer budget do not fit the model's
    context: nothing is sent, the record is skipped as `prompt_too_long`."""

    reason = "prompt_too_long"


class LLMUnavailableError(LLMError):
    """The endpoint could not be reached after all retries, or refused us
    (401/403/404).  Raised out of the task so Prefect's retry takes over;
    calls that succeeded before it are already cached."""


class CallNotRecorded(LLMUnavailableError):
    """A finished call could not be written to the run's call journal (a
    full disk, say).  Like an endpoint that is gone, it stops the batch:
    nothing more is sent whose answer could not be kept; what was written
    before it is cached, so the rerun pays only for the rest."""
