"""LLM layer: one interface (`LLM.chat`, `LLM.chat_many`), two real backends."""

from __future__ import annotations

from sftmill.config import LLMEndpoint
from sftmill.llm.base import (ChatRequest, ChatResult, LLM, LLMError, LLMOutputError,
                              LLMUnavailableError, parse_structured)
from sftmill.store import Store

__all__ = ["ChatRequest", "ChatResult", "LLM", "LLMError", "LLMOutputError",
           "LLMUnavailableError", "make_llm", "preflight_endpoint", "parse_structured"]


def make_llm(endpoint: LLMEndpoint, store: Store | None = None) -> LLM:
    """The backend the endpoint names, recording its calls in `store`."""
    if endpoint.backend == "embedded":
        from sftmill.llm.embedded import EmbeddedLLM

        return EmbeddedLLM(endpoint, store)
    from sftmill.llm.openai_http import OpenAIChatLLM

    return OpenAIChatLLM(endpoint, store)


def preflight_endpoint(endpoint: LLMEndpoint) -> str | None:
    """None when the endpoint can serve; otherwise a short description of why not."""
    if endpoint.backend == "embedded":
        from sftmill.llm.embedded import EmbeddedModelMissing, resolve_gguf

        try:
            resolve_gguf(endpoint.model)
        except EmbeddedModelMissing as err:
            return str(err)
        return None
    from sftmill.llm.openai_http import check_reachable

    return check_reachable(endpoint)
