"""A scripted LLM for unit tests of logic (the real model has its own tests)."""

from __future__ import annotations

import json
from typing import Callable

from sftmill.llm.base import ChatRequest, LLM, LLMUnavailableError, RawCompletion


class ScriptedLLM(LLM):
    """Answers with `respond(request)`; records every request it receives.

    `respond` returns a string (sent as the answer text) or a dict/list
    (sent as JSON), or raises.
    """

    backend = "scripted"
    max_concurrency = 4

    def __init__(self, respond: Callable[[ChatRequest], object], store=None, model="scripted"):
        super().__init__(model, store)
        self.respond = respond
        self.requests: list[ChatRequest] = []

    async def _raw_complete(self, request: ChatRequest) -> RawCompletion:
        self.requests.append(request)
        answer = self.respond(request)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return RawCompletion(text, tokens_in=10, tokens_out=5)


def down(_request):
    raise LLMUnavailableError("endpoint down")


def user_text(request: ChatRequest) -> str:
    return next(c for r, c in reversed(request.messages) if r == "user")
