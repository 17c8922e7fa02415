"""Run one prompt template over a batch of items through an LLM."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, TypeVar

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.progress import progress
from sftmill.llm.backends import make_llm
from sftmill.llm.base import CHUNK, LLM
from sftmill.llm.errors import LLMOutputError
from sftmill.llm.request import ChatRequest, ChatResult
from sftmill.prompts import PromptTemplate, load_template

T = TypeVar("T")


def fit_to_context(llm: LLM, template: PromptTemplate, variables: dict[str, Any], key: str,
                   max_tokens: int) -> tuple[dict[str, Any], int]:
    """`variables` with the list `variables[key]` (best first) cut to its
    longest prefix whose prompt leaves `max_tokens` of answer room in the
    model's context, and how many items were kept (all when the context is
    unknown; 0 when even none fits, and the call is then refused)."""
    items = list(variables[key])

    def fits(n: int) -> bool:
        messages = template.messages(**{**variables, key: items[:n]})
        return llm.count_tokens(messages) + max_tokens <= llm.context_window

    if llm.context_window is None or fits(len(items)):
        return variables, len(items)
    lo, hi = 0, len(items) - 1  # the answer lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return {**variables, key: items[:lo]}, lo


def llm_map(llm: LLM, endpoint: LLMEndpoint, template: PromptTemplate | Callable[[T], PromptTemplate],
            items: Sequence[T] | Iterator[Sequence[T]],
            variables: Callable[[T], dict[str, Any]], *, stage: str, seed: int = 0,
            max_tokens: int | Callable[[T], int] | None = None, fit: str | None = None,
            store=None, temperature: float | None = None, stop: tuple[str, ...] = (),
            frequency_penalty: float = 0.0, total: int | None = None,
            on_item: Callable[[T, ChatResult | Exception], None] | None = None,
            ) -> list[tuple[T, ChatResult | LLMOutputError]]:
    """Render `template` for every item and send the batch; each item comes
    back with its result or the `LLMOutputError` that makes it unusable.
    `items` may also be an iterator of batches that arrive while the map runs
    (answers to judge as they are written, say): each batch is sent as it
    comes, and `total` sizes the progress bar.  `on_item(item, result)` sees
    every result as it lands, on the LLM loop: it must only hand it on.
    `max_tokens` (a number, or a function of the item) caps the endpoint's own
    limit for answers known to be short.  `fit` names a variable holding a
    best-first list of in-context examples, shortened per item to fit the
    model's context (`fit_to_context`); the counts used are recorded in the
    run's meta table as `context_fit:<stage>` when `store` is given.
    `temperature` overrides the endpoint's; `stop` ends answers at those strings;
    `frequency_penalty` (OpenAI's) discourages repeating the same tokens.
    `template` may be a function of the item (the same template with a schema
    narrowed per item, say): the items still go out as one batch."""
    def limit(item: T) -> int:
        cap = max_tokens(item) if callable(max_tokens) else max_tokens
        return min(endpoint.max_tokens, cap or endpoint.max_tokens)

    kept: list[tuple[int, int]] = []

    def request(item: T) -> ChatRequest:
        values = variables(item)
        chosen = template(item) if callable(template) else template
        if fit is not None:
            offered = len(values[fit])
            values, n = fit_to_context(llm, chosen, values, fit, limit(item))
            kept.append((n, offered))
        return ChatRequest.build(
            chosen.messages(**values), schema=chosen.schema,
            temperature=endpoint.temperature if temperature is None else temperature,
            top_p=endpoint.top_p, max_tokens=limit(item), seed=seed, stop=stop,
            frequency_penalty=frequency_penalty, stage=stage)

    batches = [items] if isinstance(items, Sequence) else items
    seen: list[T] = []  # every item taken from `batches`, in the order sent

    def chunks():  # rendered here while the chunks before are in flight
        for batch in batches:
            for start in range(0, len(batch), CHUNK):
                part = batch[start:start + CHUNK]
                rendered = [request(item) for item in part]
                seen.extend(part)
                yield rendered

    def landed(i: int, result) -> None:
        bar.advance()
        rates.add(result, bar)
        if on_item is not None:
            on_item(seen[i], result)

    with progress(stage, len(items) if total is None else total) as bar:
        rates = Rates(llm)
        results = llm.chat_chunks(chunks(), on_result=landed)
        failed = sum(isinstance(r, LLMOutputError) for r in results)
        bar.note = "; ".join(x for x in (f"{failed} unusable answers" if failed else "",
                                         rates.summary()) if x)
    if kept and store is not None:
        record_fit(store, stage, fit, kept)
    return list(zip(seen, results))


class Rates:
    """Requests in flight, requests/s and tokens/s of the calls sent (cache
    hits aside), for the progress line; refreshed at most twice a second."""

    def __init__(self, llm: LLM):
        self.llm, self.started = llm, time.monotonic()
        self.sent = self.tokens = 0
        self.shown = 0.0

    def add(self, result, bar) -> None:
        if isinstance(result, ChatResult) and not result.cached:
            self.sent += 1
            self.tokens += result.tokens_in + result.tokens_out
        now = time.monotonic()
        if self.sent and now - self.shown >= 0.5:
            self.shown = now
            bar.status(f"{self.llm.in_flight} in flight · {self.line(now)}")

    def line(self, now: float) -> str:
        elapsed = max(1e-6, now - self.started)
        rate = self.sent / elapsed
        return f"{rate:.{0 if rate >= 10 else 1}f} req/s · {self.tokens / elapsed:.0f} tok/s"

    def summary(self) -> str:
        return self.line(time.monotonic()) if self.sent else ""


def truncated(result: ChatResult, limit: int) -> bool:
    """The answer stopped because it reached the token budget."""
    return result.tokens_out >= limit


def whole_items(result: ChatResult, field: str, limit: int) -> tuple[list, Any]:
    """The list `field` of a structured answer without its last item when the
    answer ran into the token budget (that item was cut off and repaired),
    and that cut item (None when the answer ended by itself): a stage records
    it as a drop."""
    items = list(result.data[field])
    if truncated(result, limit) and items:
        return items[:-1], items[-1]
    return items, None


def record_fit(store, stage: str, key: str, kept: list[tuple[int, int]]) -> None:
    """How many in-context examples the prompts of `stage` kept of how many."""
    used = [n for n, _ in kept]
    store.set_meta(f"context_fit:{stage}", json.dumps({
        "variable": key, "offered": max(total for _, total in kept),
        "kept_min": min(used), "kept_max": max(used), "prompts": len(kept),
        "prompts_shortened": sum(n < total for n, total in kept)}))


def answered(store, stage: str, pairs: Sequence[tuple[T, ChatResult | LLMOutputError]],
             item_id: Callable[[T], str]) -> list[tuple[T, ChatResult]]:
    """The (item, result) pairs of `llm_map` whose answer is usable; each
    unusable one becomes a reject of `stage` under `item_id(item)`, with the
    error's reason (`llm_invalid_output`, `prompt_too_long`)."""
    usable = []
    for item, result in pairs:
        if isinstance(result, LLMOutputError):
            store.reject(stage, item_id(item), result.reason, str(result))
        else:
            usable.append((item, result))
    return usable


def normalise_score(score: int) -> float:
    """A judge's 1..5 → 0..1."""
    return (score - 1) / 4


def judge_into(store, recipe, template_name: str, items: Sequence[tuple[str, dict[str, Any]]],
               *, stage: str, table: str, id_column: str,
               meanwhile: Callable[[], Any] | None = None) -> int:
    """Score-first judging shared by the relevance and prompt filters: ask the
    judge LLM about each (id, template variables) item, store its 1–5 score
    (as 0–1) and reason in `table`; an unusable answer becomes an
    `llm_invalid_output` reject.  `meanwhile` is work for a later stage done
    `beside` the calls.  Returns how many items were asked."""
    template = load_template(template_name)
    endpoint = recipe.llm.judge
    llm = make_llm(endpoint, store)
    with beside(llm, meanwhile):
        results = llm_map(llm, endpoint, template, items, lambda item: item[1],
                          stage=stage, seed=recipe.seed)
    rows = [{id_column: item_id, "score": normalise_score(result.data["score"]),
             "reason": result.data["reason"], "model": llm.model,
             "template_version": template.version, "call_key": result.key}
            for (item_id, _variables), result in answered(store, stage, results, lambda i: i[0])]
    store.insert(table, rows)
    return len(items)


@contextlib.contextmanager
def beside(llm: LLM, work: Callable[[], Any] | None):
    """Run `work` — a later stage's, which decides nothing here — in a thread
    while the block's calls are in flight, when they wait on a server
    (`LLM.overlaps`): its time then hides behind theirs.  The block ends when
    both are done.  A failure of `work` is logged, not raised: the stage it
    was for does it again."""
    if work is None or not llm.overlaps:
        yield
        return

    with ThreadPoolExecutor(1, thread_name_prefix="beside-calls") as pool:
        done = pool.submit(work)
        try:
            yield
        finally:
            try:
                done.result()
            except Exception as err:  # noqa: BLE001 — only ahead of time
                logging.getLogger(__name__).info("work beside the calls failed (%s): "
                                                 "its stage does it again", err)


def record_low_scores(store, stage: str, table: str, id_column: str, threshold: float,
                      reason: str) -> None:
    """Rejects (with the judge's reason and score) for rows under the
    threshold, replacing those of an earlier threshold."""
    store.execute("DELETE FROM rejects WHERE stage = ? AND reason = ?", [stage, reason])
    for item_id, score, why in store.execute(
            f"SELECT {id_column}, score, reason FROM {table} WHERE score < ?", [threshold]):
        store.reject(stage, item_id, reason, why, score)
