"""One interface for every LLM backend.

A backend implements only `_raw_complete` (one chat completion, transport
retries included).  This base class adds what every backend shares:

* the call cache: every finished call is appended to the run's call journal
  (`journal.py`) and moved into the `llm_calls` table in bulk, keyed by
  (model, messages, schema, sampling parameters, seed); a batch looks up all
  its keys in one query, and a call whose key already succeeded is answered
  from the table (counted in `llm_cache_hits`) and never sent again;
* structured output: the answer is parsed as JSON, repaired if needed,
  validated against the schema, and on failure re-prompted once;
* batches with bounded concurrency, where one record's bad answer becomes a
  `LLMOutputError` for that record while the others go on.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import orjson

from sftmill.core.files import space_problem
from sftmill.core.store import Store
from sftmill.core.warmup import start_waiting_work
from sftmill.llm.budget import Reservation, budget_of
from sftmill.llm.errors import (
    CallNotRecorded,
    DiskSpaceShort,
    LLMError,
    LLMOutputError,
    LLMUnavailableError,
    PromptTooLong,
)
from sftmill.llm.journal import CallJournal
from sftmill.llm.loop import heap_set_aside, run_sync, submit, wait_for
from sftmill.llm.request import (
    ChatRequest,
    ChatResult,
    RawCompletion,
    cut_at_stop,
    estimate_tokens,
    next_call_id,
    parse_structured,
)

CHUNK = 500  # requests rendered, looked up in the cache and sent together
# The room a call's record can take on the run folder's disk: the request
# and its longest answer, written three times (the journal's line, the
# llm_calls row, DuckDB's write-ahead log), plus room for the database's
# checkpoint and a stage's own rows.
COPIES_PER_CALL = 3
BYTES_PER_TOKEN = 6  # an answer token's worst case in UTF-8 JSON
DISK_RESERVE = 8 * 2**20
TRACE_ONLY = ("the output ended inside the model's reasoning trace: give the endpoint "
              "reasoning: true (stop sequences are then applied after the trace) and room for "
              "the trace in max_tokens")


def _releasing(reserved: Reservation, report: Callable[[int, Any], None] | None,
               ) -> Callable[[int, Any], None]:
    """`report`, first freeing request i's reserved budget (its call has ended and is journaled)."""
    def done(i: int, result: Any) -> None:
        reserved.release(i)
        if report is not None:
            report(i, result)
    return done


def worst_case_bytes(prompt_chars: int, max_tokens: int) -> int:
    """What recording a call could take on disk, at its longest answer."""
    return COPIES_PER_CALL * (prompt_chars + BYTES_PER_TOKEN * max_tokens + 512)


class LLM:
    """Base class; see module docstring.  Subclasses set `backend` and
    implement `_raw_complete`."""

    backend = "base"
    max_concurrency = 1
    # Tokens the model takes, prompt and answer together; None: not known
    # (prompts are then sent as they are and the server decides).
    context_window: int | None = None
    batched = False  # stages go through a Batch API (priced at the batch rate)

    def __init__(self, model: str, store: Store | None = None):
        self.model = model
        self.store = store
        self.in_flight = 0  # requests sent and not yet answered
        self._slots: asyncio.Semaphore | None = None  # max_concurrency, across chunks

    @property
    def overlaps(self) -> bool:
        """Its calls wait on a server: other work can go on while they are in
        flight (not the in-process model, which takes the CPU, nor a Batch
        API, whose answers come hours later)."""
        return self.max_concurrency > 1 and not self.batched

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens `messages` take in the prompt; backends with a tokenizer
        count exactly."""
        return estimate_tokens(messages)

    def prompt_too_long(self, request: ChatRequest) -> str | None:
        """Why `request` cannot be answered whole in the model's context (None: it can)."""
        if self.context_window is None:
            return None
        need = self.count_tokens(request.message_dicts())
        if need + request.max_tokens > self.context_window:
            return (f"prompt_too_long: {need} prompt tokens + max_tokens {request.max_tokens} "
                    f"> context {self.context_window}")
        return None

    # -- backend hook -------------------------------------------------------
    async def _raw_complete(self, request: ChatRequest) -> RawCompletion:
        raise NotImplementedError

    # -- cache and journal -------------------------------------------------
    @property
    def journal(self):
        """The run's call journal (None without a store); kept while it is
        the store's (an import and a lock per call showed in profiles)."""
        if self.store is None:
            return None
        journal = self.__dict__.get("_journal")
        if journal is None or type(journal)._registry.get(self.store.path) is not journal:
            journal = self._journal = CallJournal.for_store(self.store)
        return journal

    def cached(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The completed calls among `keys` — one query for a whole batch,
        plus this process's calls still in the journal."""
        if self.store is None or not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        journal = self.journal  # first: a killed run's journal is replayed on first use
        found = {r["key"]: r for r in self.store.query_dicts(
            "SELECT DISTINCT ON (key) key, response_text, tokens_in, tokens_out, reasoning "
            "FROM llm_calls "
            "WHERE status = 'ok' AND key IN (SELECT unnest(?::VARCHAR[]))", [unique])}
        found.update(journal.unmerged(unique))
        return found

    def _record(self, key: str, request: ChatRequest, status: str, *, text: str = "",
                error: str = "", attempts: int = 0, tokens_in: int = 0,
                tokens_out: int = 0, latency_s: float = 0.0, batch: bool = False,
                reasoning: str = "") -> None:
        """Journal a finished call (a file append, no database work); a call
        answered through a Batch API is recorded with backend `<backend>-batch`."""
        if self.store is None:
            return
        request_json = orjson.dumps(
            {"messages": request.message_dicts(), "schema": request.schema,
             "temperature": request.temperature, "top_p": request.top_p,
             "max_tokens": request.max_tokens, "seed": request.seed,
             **({"stop": list(request.stop)} if request.stop else {}),
             **({"frequency_penalty": request.frequency_penalty} if request.frequency_penalty else {})},
        ).decode()
        try:
            self.journal.append({
                "call_id": next_call_id(), "key": key, "model": self.model,
                "backend": self.backend + ("-batch" if batch else ""), "stage": request.stage,
                "status": status,
                "request_json": request_json, "response_text": text, "reasoning": reasoning,
                "error": error[:2000],
                "attempts": attempts, "tokens_in": tokens_in, "tokens_out": tokens_out,
                "latency_s": latency_s, "created_at": datetime.datetime.now().isoformat(),
            })
        except OSError as err:
            raise CallNotRecorded(f"could not write a finished call to {self.journal.path} "
                                  f"({err.strerror or err}); no more calls are sent") from err

    def _from_cache(self, key: str, request: ChatRequest, hit: dict[str, Any]) -> ChatResult:
        if self.store is not None:
            self.journal.count_hit(request.stage, self.model)
        try:
            data = parse_structured(hit["response_text"], request.schema) if request.schema else None
        except ValueError as err:  # a cached answer that no longer parses
            raise LLMOutputError(f"cached answer unusable: {err}") from None
        return ChatResult(hit["response_text"], data, key, True,
                          hit["tokens_in"] or 0, hit["tokens_out"] or 0,
                          reasoning=hit.get("reasoning") or "")

    # -- one call -----------------------------------------------------------
    async def achat(self, request: ChatRequest) -> ChatResult:
        """One call: from the cache when its key already succeeded, else sent."""
        key = request.key(self.model)
        hit = self.cached([key]).get(key)
        if hit is not None:
            return self._from_cache(key, request, hit)
        return await self._send(key, request)

    async def _send(self, key: str, request: ChatRequest) -> ChatResult:
        """Send a call that is not in the cache, and journal how it ended."""
        too_long = self.prompt_too_long(request)
        if too_long:
            raise PromptTooLong(too_long)
        started = time.perf_counter()
        self.in_flight += 1
        try:
            raw = await self._raw_complete(request)
            if request.stop:  # a reasoning model's server was not sent them (its trace has them)
                raw.text = cut_at_stop(raw.text, request.stop)
            if raw.reasoning and not raw.text.strip():
                raise LLMOutputError(TRACE_ONLY)
            text, data = raw.text, None
            if request.schema is not None:
                text, data, raw = await self._structured(request, raw)
        except LLMError as err:
            self._record(key, request, "error", error=f"{type(err).__name__}: {err}",
                         latency_s=time.perf_counter() - started)
            raise
        finally:
            self.in_flight -= 1
        latency = raw.latency_s if raw.latency_s is not None else time.perf_counter() - started
        self._record(key, request, "ok", text=text, attempts=raw.attempts,
                     tokens_in=raw.tokens_in, tokens_out=raw.tokens_out, latency_s=latency,
                     batch=raw.batch, reasoning=raw.reasoning)
        return ChatResult(text, data, key, False, raw.tokens_in, raw.tokens_out, latency,
                          raw.reasoning)

    async def _structured(self, request: ChatRequest, raw: RawCompletion):
        try:
            return raw.text, parse_structured(raw.text, request.schema), raw
        except ValueError as first_problem:
            problem = first_problem
        retry = ChatRequest(
            messages=request.messages + (
                ("assistant", raw.text),
                ("user", f"That answer was not valid ({problem}). Reply again with only "
                         "a JSON object that follows the schema."),
            ),
            schema=request.schema, temperature=request.temperature, top_p=request.top_p,
            max_tokens=request.max_tokens, seed=request.seed + 1, stop=request.stop,
            frequency_penalty=request.frequency_penalty, stage=request.stage,
        )
        second = await self._raw_complete(retry)
        merged = RawCompletion(second.text, raw.tokens_in + second.tokens_in,
                               raw.tokens_out + second.tokens_out, raw.attempts + second.attempts,
                               None if raw.latency_s is None or second.latency_s is None
                               else raw.latency_s + second.latency_s,
                               reasoning=second.reasoning)
        try:
            return second.text, parse_structured(second.text, request.schema), merged
        except ValueError as err:
            raise LLMOutputError(f"invalid structured answer after re-prompt: {err}") from None

    # -- batches ------------------------------------------------------------
    async def achat_many(self, requests: Sequence[ChatRequest],
                         on_result: Callable[[int, ChatResult | Exception], None] | None = None,
                         looked_up: tuple[list[str], dict[str, dict[str, Any]]] | None = None,
                         ) -> list[ChatResult | LLMOutputError]:
        """`looked_up`: the requests' keys and cache hits, when the caller
        (`chat_chunks`) worked them out off the loop."""
        if self._slots is None:  # created on the LLM loop, shared by every chunk
            self._slots = asyncio.Semaphore(self.max_concurrency)
        limit = self._slots
        down: list[LLMUnavailableError] = []  # once the endpoint is gone, stop sending
        keys, hits = looked_up or self.look_up(requests)

        async def one(i: int, req: ChatRequest):
            hit = hits.get(keys[i])
            if hit is not None:  # answered from the cache without waiting for a slot
                try:
                    result: ChatResult | Exception = self._from_cache(keys[i], req, hit)
                except LLMOutputError as err:
                    result = err
                if on_result is not None:
                    on_result(i, result)
                return result
            async with limit:
                if down:
                    result = down[0]
                else:
                    try:
                        result = await self._send(keys[i], req)
                    except LLMUnavailableError as err:
                        down.append(err)
                        result = err
                    except LLMError as err:
                        result = err
            if on_result is not None:
                on_result(i, result)
            return result

        results = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        # (The calls reach llm_calls from the journal by the waiting thread:
        # `chat_chunks`.)  Every call has finished (and the successful ones are cached) before an
        # unavailable endpoint fails the batch: a retry pays only for the rest.
        for result in results:
            if isinstance(result, LLMUnavailableError):
                raise result
        return list(results)

    def chat(self, request: ChatRequest) -> ChatResult:
        try:
            return run_sync(self.achat(request))
        finally:
            if self.store is not None:
                self.journal.merge()

    def chat_many(self, requests: Sequence[ChatRequest],
                  on_result: Callable[[int, ChatResult | Exception], None] | None = None,
                  ) -> list[ChatResult | LLMOutputError]:
        """Run a batch; a record whose answer is unusable comes back as its
        `LLMOutputError`; an unreachable endpoint raises `LLMUnavailableError`."""
        return self.chat_chunks([requests], on_result)

    def look_up(self, requests: Sequence[ChatRequest]) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """The requests' cache keys and the completed calls among them."""
        keys = [r.key(self.model) for r in requests]
        return keys, self.cached(keys)

    def _before_sending(self, budget, chunk: Sequence[ChatRequest], in_flight: int = 0,
                        ) -> tuple[tuple[list[str], dict[str, dict[str, Any]]], Reservation | None, int]:
        """The chunk's `look_up`, once its uncached requests, at their worst
        (longest answers), are known to fit: on the run folder's disk beside
        the `in_flight` bytes that earlier chunks may still write
        (`DiskSpaceShort` if not; else the chunk's own worst bytes are
        returned last) and, with a budget, within what is left
        of it with what is spent and in flight (`BudgetExceeded` if not; else
        that worst case is reserved and returned)."""
        if self.store is None:
            return self.look_up(chunk), None, 0
        if budget is not None:
            self.journal.merge()  # what was spent so far, all of it in llm_calls
        keys, hits = looked_up = self.look_up(chunk)
        todo = [i for i, key in enumerate(keys) if key not in hits]
        if not todo:
            return looked_up, None, 0
        stage = chunk[todo[0]].stage
        worst = sum(worst_case_bytes(len(orjson.dumps(chunk[i].message_dicts())), chunk[i].max_tokens)
                    for i in todo)
        problem = space_problem(Path(self.store.path).parent, DISK_RESERVE + in_flight + worst,
                                f"the next {len(todo)} {stage or 'LLM'} calls"
                                + (" (with calls in flight)" if in_flight else ""))
        if problem:
            raise DiskSpaceShort(problem)
        if budget is None:
            return looked_up, None, worst
        return looked_up, budget.reserve(
            self.store, self.model, stage,
            {i: (self.count_tokens(chunk[i].message_dicts()), chunk[i].max_tokens) for i in todo},
            batch=self.batched), worst

    def chat_chunks(self, chunks: Iterable[Sequence[ChatRequest]],
                    on_result: Callable[[int, ChatResult | Exception], None] | None = None,
                    ) -> list[ChatResult | LLMOutputError]:
        """`chat_many` over the chunks' requests, in order, each chunk sent as
        soon as it is taken from `chunks` — a generator that renders prompts
        builds the next chunk while the earlier ones are in flight, so a
        stage's first requests leave before its last prompt is rendered.
        While it waits, this thread moves finished calls from the journal
        into `llm_calls` every few seconds, and the rest at the end."""
        with heap_set_aside():
            return self._chat_chunks(chunks, on_result, budget_of(self.store))

    def _chat_chunks(self, chunks, on_result, budget) -> list[ChatResult | LLMOutputError]:
        def tick() -> None:
            gc.freeze()  # what the batch kept since the last tick is set aside too
            if self.store is not None:
                self.journal.merge()
        futures, offset, stopped = [], 0, None
        worst_bytes: list[int] = []  # each chunk's, while it may still be writing
        reservations: list[Reservation] = []
        for chunk in chunks:
            in_flight = sum(b for b, f in zip(worst_bytes, futures) if not f.done())
            try:
                looked_up, reserved, worst = self._before_sending(budget, chunk, in_flight)
            except LLMError as err:  # what is in flight finishes and is kept
                stopped = err
                break
            report = on_result and (lambda i, r, base=offset: on_result(base + i, r))
            if reserved is not None:  # each request's worst case is freed as it ends
                reservations.append(reserved)
                report = _releasing(reserved, report)
            # keys and cache look-up here, not on the loop, where they would hold up every call
            futures.append(submit(self.achat_many(chunk, report, looked_up)))
            worst_bytes.append(worst)
            gc.freeze()  # the chunk's requests, as the next is rendered
            if offset == 0:
                start_waiting_work()  # (sftmill.core.warmup) loading what later stages need
            offset += len(chunk)
        try:
            wait_for(futures, tick)
        finally:
            for reserved in reservations:
                reserved.release_all()
            tick()
        if stopped is not None:
            raise stopped
        results: list[ChatResult | LLMOutputError] = []
        for future in futures:  # every chunk finished: now the first failure
            results += future.result()
        return results
