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
import atexit
import concurrent.futures
import contextlib
import contextvars
import datetime
import functools
import gc
import hashlib
import itertools
import logging
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import jsonschema
import orjson

from sftmill.store import Store, content_id
from sftmill.warmup import start_waiting_work


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


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    schema: dict[str, Any] | None = None
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0
    stop: tuple[str, ...] = ()  # stop sequences (OpenAI `stop`); the text ends before them
    stage: str = ""  # for statistics only; not part of the cache key

    @classmethod
    def build(cls, messages: Sequence[dict[str, str]], **kwargs: Any) -> "ChatRequest":
        return cls(messages=tuple((m["role"], m["content"]) for m in messages), **kwargs)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def key(self, model: str) -> str:
        """`content_id(model, messages, schema, sampling, seed)`, the same
        digest built faster (`_key_blob`): a stage computes one per call."""
        sampling = {"temperature": self.temperature, "top_p": self.top_p,
                    "max_tokens": self.max_tokens}
        if self.stop:  # only when set, so keys of earlier calls stay valid
            sampling["stop"] = list(self.stop)
        blob = _key_blob(model, self.messages, self.schema, sampling, self.seed)
        if blob is None:
            return content_id(model, self.messages, self.schema, sampling, self.seed)
        return hashlib.sha256(blob).hexdigest()[:16]


def _per_schema(table: dict[int, tuple[Any, Any]], schema: dict[str, Any], make: Callable[[Any], Any]):
    """`make(schema)`, kept in `table` per schema object (no dump of the
    schema per call); the schema is kept beside it, so its id stays its own."""
    known = table.get(id(schema))
    if known is None or known[0] is not schema:
        if len(table) >= 1024:  # a stage that builds a schema per item
            table.clear()
        known = table[id(schema)] = (schema, make(schema))
    return known[1]


def _schema_text(schema: dict[str, Any]) -> bytes:
    return json.dumps(schema, sort_keys=True, ensure_ascii=False, default=str).encode()


_SCHEMA_JSON: dict[int, tuple[Any, bytes]] = {}  # id(schema) → (schema, its JSON)
_SAMPLING_JSON: dict[tuple, bytes] = {}  # the sampling parameters' JSON


def _key_blob(model, messages, schema, sampling, seed) -> bytes | None:
    """The bytes `content_id` hashes for a request key, byte for byte: the
    json module's text (", " and ": " between items, keys sorted, no ASCII
    escaping), with each string encoded by orjson — identical to the json
    module for every code point (a test checks them all) and several times
    faster on prompts of a few KB, which `content_id` spent ~30 µs on.  The
    schema's text is kept per schema object.  None when a part is not of
    the usual types (the caller uses `content_id`)."""
    if type(model) is not str or type(seed) is not int:
        return None
    parts = [b"[", orjson.dumps(model), b", ["]
    first = True
    for message in messages:
        if len(message) != 2 or type(message[0]) is not str or type(message[1]) is not str:
            return None
        parts += [b"[" if first else b", [", orjson.dumps(message[0]), b", ",
                  orjson.dumps(message[1]), b"]"]
        first = False
    schema_json = b"null" if schema is None else _per_schema(_SCHEMA_JSON, schema, _schema_text)
    # (types in the key: 1 and 1.0 are one dictionary key but not one JSON text)
    at = tuple((k, v.__class__, tuple(v) if type(v) is list else v) for k, v in sampling.items())
    sampling_json = _SAMPLING_JSON.get(at)
    if sampling_json is None:
        if len(_SAMPLING_JSON) >= 1024:
            _SAMPLING_JSON.clear()
        sampling_json = _SAMPLING_JSON[at] = json.dumps(
            sampling, sort_keys=True, ensure_ascii=False, default=str).encode()
    parts += [b"], ", schema_json, b", ", sampling_json, b", ", str(seed).encode(), b"]"]
    return b"".join(parts)


@dataclass
class RawCompletion:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    attempts: int = 1
    # The server's time for the answer (the last attempt's round trip), when
    # the backend knows it; else the call's whole time, waits included.
    latency_s: float | None = None
    batch: bool = False  # answered through a Batch API (recorded as such, priced as such)


@dataclass
class ChatResult:
    text: str
    data: Any = None  # the parsed, schema-valid JSON when a schema was given
    key: str = ""
    cached: bool = False
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0


_CALL_IDS = itertools.count()
_CALL_PREFIX = uuid.uuid4().hex[:20]  # this process's


def next_call_id() -> str:
    """A unique ID for a call row: 20 random hex digits per process and a
    counter (32 characters, like the uuid4 hex it replaced at a fraction of
    the cost: `uuid4` was 4.5 % of the LLM loop's samples at 256 in flight)."""
    return f"{_CALL_PREFIX}{next(_CALL_IDS):012x}"


@functools.lru_cache(maxsize=256)
def _validator(schema_json: bytes):
    """A checked validator per schema, built once (`jsonschema.validate`
    checks the schema itself on every call: most of a structured call's
    CPU), and the fast check of `schema_check` for it."""
    from sftmill.llm.schema_check import compile_check

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema), compile_check(schema)


_BY_SCHEMA: dict[int, tuple[Any, Any]] = {}  # id(schema) → (schema, validators)


def _validators(schema: dict[str, Any]):
    return _per_schema(_BY_SCHEMA, schema, _validators_of)


def _validators_of(schema: dict[str, Any]):
    return _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))


def parse_structured(text: str, schema: dict[str, Any]) -> Any:
    """Parse `text` as JSON (repairing it if needed) and validate it.

    Raises ValueError with a short explanation when that is impossible.
    """
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        import json_repair

        data = json_repair.loads(text)
        if data in ("", None) or (data == [] and not text.strip().startswith("[")):
            raise ValueError("answer is not JSON") from None
    validator, fast = _validators(schema)
    if fast is not None and fast(data):
        return data
    try:
        validator.validate(data)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "answer"
        raise ValueError(f"{where}: {err.message}") from None
    return data


def estimate_tokens(messages: Sequence[dict[str, str]]) -> int:
    """Prompt tokens without a tokenizer: a cautious estimate (3 characters a
    token, 8 tokens of chat framing a message)."""
    return sum(len(m["content"]) // 3 + 8 for m in messages)


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
            from sftmill.llm.journal import CallJournal

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
            "SELECT DISTINCT ON (key) key, response_text, tokens_in, tokens_out FROM llm_calls "
            "WHERE status = 'ok' AND key IN (SELECT unnest(?::VARCHAR[]))", [unique])}
        found.update(journal.unmerged(unique))
        return found

    def _record(self, key: str, request: ChatRequest, status: str, *, text: str = "",
                error: str = "", attempts: int = 0, tokens_in: int = 0,
                tokens_out: int = 0, latency_s: float = 0.0, batch: bool = False) -> None:
        """Journal a finished call (a file append, no database work); a call
        answered through a Batch API is recorded with backend `<backend>-batch`."""
        if self.store is None:
            return
        request_json = orjson.dumps(
            {"messages": request.message_dicts(), "schema": request.schema,
             "temperature": request.temperature, "top_p": request.top_p,
             "max_tokens": request.max_tokens, "seed": request.seed,
             **({"stop": list(request.stop)} if request.stop else {})},
        ).decode()
        self.journal.append({
            "call_id": next_call_id(), "key": key, "model": self.model,
            "backend": self.backend + ("-batch" if batch else ""), "stage": request.stage,
            "status": status,
            "request_json": request_json, "response_text": text, "error": error[:2000],
            "attempts": attempts, "tokens_in": tokens_in, "tokens_out": tokens_out,
            "latency_s": latency_s, "created_at": datetime.datetime.now().isoformat(),
        })

    def _from_cache(self, key: str, request: ChatRequest, hit: dict[str, Any]) -> ChatResult:
        if self.store is not None:
            self.journal.count_hit(request.stage, self.model)
        try:
            data = parse_structured(hit["response_text"], request.schema) if request.schema else None
        except ValueError as err:  # a cached answer that no longer parses
            raise LLMOutputError(f"cached answer unusable: {err}") from None
        return ChatResult(hit["response_text"], data, key, True,
                          hit["tokens_in"] or 0, hit["tokens_out"] or 0)

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
                     batch=raw.batch)
        return ChatResult(text, data, key, False, raw.tokens_in, raw.tokens_out, latency)

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
            stage=request.stage,
        )
        second = await self._raw_complete(retry)
        merged = RawCompletion(second.text, raw.tokens_in + second.tokens_in,
                               raw.tokens_out + second.tokens_out, raw.attempts + second.attempts,
                               None if raw.latency_s is None or second.latency_s is None
                               else raw.latency_s + second.latency_s)
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

    def _within(self, budget, chunk: Sequence[ChatRequest],
                ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """Raise `BudgetExceeded` when the chunk's uncached requests, at their
        worst (estimated prompt + max_tokens), could pass the run's budget;
        else return the chunk's `look_up`, made after the journal's merge."""
        self.journal.merge()  # what was spent so far, all of it in llm_calls
        keys, hits = looked_up = self.look_up(chunk)
        todo = [r for r, key in zip(chunk, keys) if key not in hits]
        if todo:
            budget.check(self.store, self.model, todo[0].stage, len(todo),
                         sum(self.count_tokens(r.message_dicts()) for r in todo),
                         sum(r.max_tokens for r in todo), batch=self.batched)
        return looked_up

    def chat_chunks(self, chunks: Iterable[Sequence[ChatRequest]],
                    on_result: Callable[[int, ChatResult | Exception], None] | None = None,
                    ) -> list[ChatResult | LLMOutputError]:
        """`chat_many` over the chunks' requests, in order, each chunk sent as
        soon as it is taken from `chunks` — a generator that renders prompts
        builds the next chunk while the earlier ones are in flight, so a
        stage's first requests leave before its last prompt is rendered.
        While it waits, this thread moves finished calls from the journal
        into `llm_calls` every few seconds, and the rest at the end."""
        from sftmill.llm.budget import budget_of

        with heap_set_aside():
            return self._chat_chunks(chunks, on_result, budget_of(self.store))

    def _chat_chunks(self, chunks, on_result, budget) -> list[ChatResult | LLMOutputError]:
        def tick() -> None:
            gc.freeze()  # what the batch kept since the last tick is set aside too
            if self.store is not None:
                self.journal.merge()
        futures, offset, stopped = [], 0, None
        for chunk in chunks:
            looked_up = None
            if budget is not None:
                try:
                    looked_up = self._within(budget, chunk)
                except LLMError as err:  # what is in flight finishes and is kept
                    stopped = err
                    break
            report = on_result and (lambda i, r, base=offset: on_result(base + i, r))
            # keys and cache look-up here, not on the loop, where they would hold up every call
            futures.append(submit(self.achat_many(chunk, report, looked_up or self.look_up(chunk))))
            gc.freeze()  # the chunk's requests, as the next is rendered
            if offset == 0:
                start_waiting_work()  # (sftmill.warmup) loading what later stages need
            offset += len(chunk)
        try:
            wait_for(futures, tick)
        finally:
            tick()
        if stopped is not None:
            raise stopped
        results: list[ChatResult | LLMOutputError] = []
        for future in futures:  # every chunk finished: now the first failure
            results += future.result()
        return results


_SET_ASIDE = 0  # batches in flight that set the heap aside
_SET_ASIDE_LOCK = threading.Lock()


@contextlib.contextmanager
def heap_set_aside():
    """While a batch's calls are in flight, the objects alive when it began
    are out of the cyclic garbage collector's reach (`gc.freeze`), and what
    the batch keeps joins them with every chunk sent and every few seconds
    after (`chat_chunks`): a full collection walks only what was allocated
    since.  A full collection holds the interpreter lock, and the LLM loop
    waits on it with every answer: in a 20k-prompt run they took 150–590 ms
    each, 7 s in all, each a dip in the requests sent (almost none found
    anything to free).  When the last batch in flight ends, the objects go
    back (`gc.unfreeze`)."""
    global _SET_ASIDE
    with _SET_ASIDE_LOCK:
        gc.freeze()  # a nested batch (the answer stage's judge) sets aside what came since
        _SET_ASIDE += 1
    try:
        yield
    finally:
        with _SET_ASIDE_LOCK:
            _SET_ASIDE -= 1
            if _SET_ASIDE == 0:
                gc.unfreeze()


MERGE_EVERY_S = 2.0  # journal → llm_calls while a batch runs
_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def llm_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for LLM I/O, running in a daemon thread:
    connections, concurrency limits and what they learned live across the
    stages of a run instead of being rebuilt for every batch."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="sftmill-llm", daemon=True).start()
            _LOOP = loop
            atexit.register(_close_loop, loop)
        return _LOOP


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """At exit: close the loop's HTTP session (its connections), then stop it."""
    transport = sys.modules.get("sftmill.llm.transport")
    if transport is not None and loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(transport.close_shared(loop), loop).result(timeout=5)
        except Exception:  # exiting anyway
            pass
    loop.call_soon_threadsafe(loop.stop)


def submit(coro) -> concurrent.futures.Future:
    """Start a coroutine on the LLM loop from sync code; it sees the caller's
    context variables (Prefect's run context, say)."""
    loop = llm_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("called on the LLM loop itself: await the coroutine")
    done: concurrent.futures.Future = concurrent.futures.Future()
    context = contextvars.copy_context()

    def start() -> None:
        task = loop.create_task(coro, context=context)

        def finish(t: asyncio.Task) -> None:
            if t.cancelled():
                done.cancel()
            elif t.exception() is not None:
                done.set_exception(t.exception())
            else:
                done.set_result(t.result())

        task.add_done_callback(finish)

    loop.call_soon_threadsafe(start)
    return done


def wait_for(futures: Sequence[concurrent.futures.Future],
             tick: Callable[[], Any] | None = None, every_s: float | None = None) -> None:
    """Wait until every future is done, calling `tick` on this thread every
    `every_s` meanwhile."""
    while True:
        _, pending = concurrent.futures.wait(futures, timeout=every_s or MERGE_EVERY_S)
        if not pending:
            return
        if tick is not None:
            try:
                tick()
            except Exception as err:  # the final tick reports a real problem
                logging.getLogger(__name__).warning("periodic work while waiting failed: %s", err)


def run_sync(coro, tick: Callable[[], Any] | None = None):
    """Run a coroutine on the LLM loop from sync code and wait for it."""
    done = submit(coro)
    wait_for([done], tick)
    return done.result()
