"""The LLM layer's errors: one record's bad answer (LLMOutputError) against a server that is not
there (LLMUnavailableError)."""

from __future__ import annotations

import logging


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


class RunStop(LLMError):
    """The run stopped before sending more calls, for a reason a retry would
    meet again (the budget, the disk's free space).  The calls in flight
    finish and are kept; the message is one sentence for the console and
    begins with the subclass's `marker`."""

    marker = ""


class DiskSpaceShort(RunStop):
    """The run folder's disk has no room for the next chunk's worst case."""

    marker = "disk space:"


def run_stop_sentence(text: str | None) -> str | None:
    """A run stop's own sentence inside a failed run's message, if any."""
    for cls in RunStop.__subclasses__():
        if text and cls.marker and cls.marker in text:
            return text[text.index(cls.marker):].rstrip(".") + "."
    return None


def without_run_stops(record: logging.LogRecord) -> bool:
    """A logging filter for Prefect's run loggers under `sftmill run`: the
    failed task and flow runs of a run stop are not logged (no ERROR lines,
    no traceback: it is not a crash); the command ends with the stop's one
    line, and the runs' states in Prefect still say why."""
    if record.exc_info and isinstance(record.exc_info[1], RunStop):
        return False
    message = record.getMessage()
    return not any(cls.__name__ in message for cls in RunStop.__subclasses__())
