"""The backend an endpoint names: the embedded model (llama.cpp in-process) or an
OpenAI-compatible server, and the name its calls are recorded (and priced) under."""

from __future__ import annotations

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.store import Store
from sftmill.llm.base import LLM
from sftmill.llm.embedded import EmbeddedLLM, EmbeddedModelMissing, model_label, resolve_gguf
from sftmill.llm.openai_http import OpenAIChatLLM, check_reachable


def make_llm(endpoint: LLMEndpoint, store: Store | None = None) -> LLM:
    """The backend the endpoint names, recording its calls in `store`."""
    if endpoint.backend == "embedded":
        return EmbeddedLLM(endpoint, store)
    return OpenAIChatLLM(endpoint, store)


def preflight_endpoint(endpoint: LLMEndpoint) -> str | None:
    """None when the endpoint can serve; otherwise a short description of why not."""
    if endpoint.backend == "embedded":
        try:
            resolve_gguf(endpoint.model)
        except EmbeddedModelMissing as err:
            return str(err)
        return None
    return check_reachable(endpoint)


def model_name(endpoint: LLMEndpoint) -> str:
    """The name calls are recorded under in `llm_calls` (and priced by)."""
    if endpoint.backend == "embedded":
        try:
            return model_label(resolve_gguf(endpoint.model))
        except EmbeddedModelMissing:  # preflight says so
            return endpoint.model
    return endpoint.model
