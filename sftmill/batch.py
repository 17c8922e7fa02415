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
            max_tokens: int | Callable[[T], int] | None = None,
            ) -> list[tuple[T, ChatResult | LLMOutputError]]:
    """Render `template` for every item and send the batch; each item comes
    back with its result or the `LLMOutputError` that makes it unusable.
    `max_tokens` (a number, or a function of the item) caps the endpoint's own
    limit for answers known to be short."""
    def limit(item: T) -> int:
        cap = max_tokens(item) if callable(max_tokens) else max_tokens
        return min(endpoint.max_tokens, cap or endpoint.max_tokens)

    requests = [
        ChatRequest.build(template.messages(**variables(item)), schema=template.schema,
                          temperature=endpoint.temperature, top_p=endpoint.top_p,
                          max_tokens=limit(item), seed=seed, stage=stage)
        for item in items
    ]
    with progress(stage, len(requests)) as bar:
        results = llm.chat_many(requests, on_result=lambda _i, _r: bar.advance())
        failed = sum(isinstance(r, LLMOutputError) for r in results)
        bar.note = f"{failed} unusable answers" if failed else ""
    return list(zip(items, results))


def answered(store, stage: str, pairs: Sequence[tuple[T, ChatResult | LLMOutputError]],
             item_id: Callable[[T], str]) -> list[tuple[T, ChatResult]]:
    """The (item, result) pairs of `llm_map` whose answer is usable; each
    unusable one becomes an `llm_invalid_output` reject of `stage`, under
    `item_id(item)`."""
    usable = []
    for item, result in pairs:
        if isinstance(result, LLMOutputError):
            store.reject(stage, item_id(item), "llm_invalid_output", str(result))
        else:
            usable.append((item, result))
    return usable


def normalise_score(score: int) -> float:
    """A judge's 1..5 → 0..1."""
    return (score - 1) / 4


def judge_into(store, recipe, template_name: str, items: Sequence[tuple[str, dict[str, Any]]],
               *, stage: str, table: str, id_column: str) -> int:
    """Score-first judging shared by the relevance and prompt filters: ask the
    judge LLM about each (id, template variables) item, store its 1–5 score
    (as 0–1) and reason in `table`; an unusable answer becomes an
    `llm_invalid_output` reject.  Returns how many items were asked."""
    from sftmill.llm import make_llm
    from sftmill.prompts import load_template

    template = load_template(template_name)
    endpoint = recipe.llm.judge
    llm = make_llm(endpoint, store)
    results = llm_map(llm, endpoint, template, items, lambda item: item[1],
                      stage=stage, seed=recipe.seed)
    rows = [{id_column: item_id, "score": normalise_score(result.data["score"]),
             "reason": result.data["reason"], "model": llm.model,
             "template_version": template.version, "call_key": result.key}
            for (item_id, _variables), result in answered(store, stage, results, lambda i: i[0])]
    store.insert(table, rows)
    return len(items)


def record_low_scores(store, stage: str, table: str, id_column: str, threshold: float,
                      reason: str) -> None:
    """Rejects (with the judge's reason and score) for rows under the
    threshold, replacing those of an earlier threshold."""
    store.execute("DELETE FROM rejects WHERE stage = ? AND reason = ?", [stage, reason])
    for item_id, score, why in store.execute(
            f"SELECT {id_column}, score, reason FROM {table} WHERE score < ?", [threshold]):
        store.reject(stage, item_id, reason, why, score)
