"""Run one prompt template over a batch of items through an LLM."""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

from sftmill.config import LLMEndpoint
from sftmill.llm import ChatRequest, ChatResult, LLM, LLMOutputError
from sftmill.progress import progress
from sftmill.prompts import PromptTemplate

T = TypeVar("T")


def llm_map(llm: LLM, endpoint: LLMEndpoint, template: PromptTemplate, items: Sequence[T],
            variables: Callable[[T], dict[str, Any]], *, stage: str, seed: int = 0,
            ) -> list[tuple[T, ChatResult | LLMOutputError]]:
    """Render `template` for every item and send the batch; each item comes
    back with its result or the `LLMOutputError` that makes it unusable."""
    requests = [
        ChatRequest.build(template.messages(**variables(item)), schema=template.schema,
                          temperature=endpoint.temperature, top_p=endpoint.top_p,
                          max_tokens=endpoint.max_tokens, seed=seed, stage=stage)
        for item in items
    ]
    with progress(stage, len(requests)) as bar:
        results = llm.chat_many(requests, on_result=lambda _i, _r: bar.advance())
        failed = sum(isinstance(r, LLMOutputError) for r in results)
        bar.note = f"{failed} unusable answers" if failed else ""
    return list(zip(items, results))
