"""OpenAI-compatible chat completions and embeddings over HTTP (vLLM,
SGLang, Ollama, llama.cpp server, TEI, OpenAI): replicas, adaptive
concurrency, rate caps and retries.

Retried: timeouts, connection errors, 429 and 5xx, with exponential backoff
and jitter, honouring `Retry-After` (which also pauses the replica's other
sends).  Not retried: other 4xx.  A 400/413/422 concerns one request (it
becomes that record's `LLMOutputError`); 401, 403 and 404 mean the endpoint
or key is wrong for every request (`LLMUnavailableError`).

Each replica (`base_url` may list several) has its own `AdaptiveLimit`;
a request goes to the replica with the fewest in flight for its limit; a
replica whose connection is refused, or that times out or answers 5xx
three times in a row, is set aside for a growing while and then probed
with one request.  The replicas, their
limits and the HTTP session live on the process's LLM loop, so what a
stage learned about a server carries over to the next stage.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import email.utils
import os
import random
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import numpy as np

from sftmill.core.endpoints import Embedding, LLMEndpoint, ServerEndpoint
from sftmill.core.store import Store
from sftmill.llm.base import CHUNK, LLM
from sftmill.llm.batch_api import BatchRunner
from sftmill.llm.budget import budget_of
from sftmill.llm.embedded import grammar_schema
from sftmill.llm.errors import LLMOutputError, LLMUnavailableError
from sftmill.llm.limits import AdaptiveLimit, TokenBucket
from sftmill.llm.loop import run_sync
from sftmill.llm.request import ChatRequest, RawCompletion, completion_of
from sftmill.llm.transport import (
    PerLoop,
    Reply,
    Transport,
    TransportError,
    TransportTimeout,
    Upload,
    shared_transport,
)

if TYPE_CHECKING:
    import numpy as np

RETRY_STATUS = {408, 409, 425, 429}
FATAL_STATUS = {401, 403, 404}
SET_ASIDE_S = (2.0, 60.0)  # a failed replica rests 2 s, doubling per failure, at most 60 s
STRIKES = 3  # timeouts or 5xx in a row that set a replica aside


def auth_headers(endpoint: ServerEndpoint) -> dict[str, str]:
    """The Authorization header, with the key read from the environment at
    call time; it travels only here, never into the store, parameters or logs."""
    key = os.environ.get(endpoint.api_key_env, "") if endpoint.api_key_env else ""
    return {"Authorization": f"Bearer {key}"} if key else {}


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Replica:
    """One server of an endpoint: its URL, its limit, and whether it is set aside."""

    def __init__(self, url: str, endpoint: ServerEndpoint):
        self.url = url
        self.alone = len(endpoint.base_urls) == 1  # the endpoint's only server
        self.limit = AdaptiveLimit(endpoint.max_concurrency, endpoint.concurrency_ceiling,
                                   adaptive=endpoint.adaptive_concurrency)
        self.strikes = 0  # failed answers in a row
        self.failures = 0  # times set aside in a row
        self.back_at = 0.0

    @property
    def in_flight(self) -> int:
        return self.limit.in_flight

    def usable(self, now: float) -> bool:
        """Up, or back from being set aside and not already being probed."""
        return self.failures == 0 or (now >= self.back_at and self.in_flight == 0)

    def resting(self, now: float) -> bool:
        """Set aside, its rest not over (a probe in flight counts as not resting)."""
        return self.failures > 0 and now < self.back_at and self.in_flight == 0

    def failed(self, gone: bool) -> None:
        """No usable answer: a refused or reset connection (`gone`), or the
        third timeout / 5xx in a row, sets the replica aside for a while —
        unless it is the endpoint's only one (its requests' own backoff then
        paces the retries)."""
        self.strikes += 1
        if not self.alone and (gone or self.strikes >= STRIKES):
            self.failures += 1
            rest = min(SET_ASIDE_S[1], SET_ASIDE_S[0] * 2 ** (self.failures - 1))
            self.back_at = time.monotonic() + rest

    def answered(self) -> None:
        self.strikes = self.failures = 0


class NoReplica(Exception):
    """Every replica of the endpoint is set aside: the request's attempt fails."""


class Pool:
    """The replicas of one endpoint and its rate caps (per event loop).
    Requests wait here, first come, first served, for a slot on whichever
    replica has room — the one with the fewest in flight for its limit."""

    def __init__(self, endpoint: ServerEndpoint):
        self.replicas = [Replica(u, endpoint) for u in endpoint.base_urls]
        self.rpm = TokenBucket(endpoint.rpm) if endpoint.rpm else None
        self.tpm = TokenBucket(endpoint.tpm) if endpoint.tpm else None
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def _free(self, now: float) -> Replica | None:
        if len(self.replicas) == 1:  # (the usual case, per request: no list, no sort key)
            only = self.replicas[0]
            return only if only.usable(now) and only.limit.has_room(now) else None
        room = [r for r in self.replicas if r.usable(now) and r.limit.has_room(now)]
        return min(room, key=lambda r: (r.in_flight / max(1, r.limit.current), r.in_flight),
                   default=None)

    def all_resting(self, now: float) -> bool:
        for r in self.replicas:  # (a loop, not all(): it runs twice per request)
            if not r.resting(now):
                return False
        return True

    def _no_replica(self) -> NoReplica:
        return NoReplica(f"every replica is set aside ({len(self.replicas)})")

    async def acquire(self) -> Replica:
        """A replica with a slot taken for this request; `NoReplica` when
        every replica is set aside (the request backs off and tries again,
        so a dead endpoint still fails within its retries)."""
        now = time.monotonic()
        if self.all_resting(now):
            raise self._no_replica()
        if not self._waiters:
            replica = self._free(now)
            if replica is not None:
                replica.limit.take()
                return replica
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result(), "other")
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, replica: Replica, outcome: str, latency_s: float = 0.0,
                retry_after_s: float | None = None) -> None:
        """Give a slot back: outcome 'ok', 'refused' (429, 5xx, no answer) or 'other'."""
        if outcome == "ok":
            replica.limit.release_ok(latency_s)
        elif outcome == "refused":
            replica.limit.release_refused(retry_after_s)
        else:
            replica.limit.release_other()
        self._wake()
        if self._waiters and self.all_resting(time.monotonic()):
            problem = self._no_replica()
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(problem)

    def _wake(self) -> None:
        now = time.monotonic()
        while self._waiters:
            replica = self._free(now)
            if replica is None:
                break
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            replica.limit.take()
            waiter.set_result(replica)
        if self._waiters and self._timer is None:
            # Nothing in flight may come back to wake them: wake when a
            # replica's rest or Retry-After ends.
            later = [t for r in self.replicas for t in (r.back_at, r.limit.paused_until) if t > now]
            if later:
                self._timer = asyncio.get_running_loop().call_later(
                    min(later) - now + 0.001, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake()

    def others_up(self, replica: Replica) -> bool:
        return any(r is not replica and r.failures == 0 for r in self.replicas)


_POOLS = PerLoop(dict)  # per loop: pool key → Pool


def pool_for(endpoint: ServerEndpoint, key: tuple | None = None) -> Pool:
    """The running loop's pool for this endpoint (same URLs, model and limits;
    `key`: its `pool_key()` when the caller already has it)."""
    pools = _POOLS.get()
    key = key or endpoint.pool_key()
    pool = pools.get(key)
    if pool is None:
        pool = pools[key] = Pool(endpoint)
    return pool


class Sent(NamedTuple):
    reply: Reply
    attempts: int
    latency_s: float  # the answering attempt's round trip


class ServerClient:
    """Posts JSON to one endpoint's replicas: waits for a replica's slot and
    the rate caps, retries what may succeed later, sets failing replicas
    aside.  Chat completions and embeddings both send through here."""

    backoff_base_s = 0.5
    backoff_cap_s = 30.0

    def __init__(self, endpoint: ServerEndpoint, transport: Transport | None = None):
        self.endpoint = endpoint
        self._pool_key = endpoint.pool_key()  # (per request, this is a dictionary look-up)
        self._transport = transport  # tests inject their own

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_cap_s)
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** attempt)
        return random.uniform(ceiling / 2, ceiling)

    async def post(self, path: str, body: dict[str, Any], estimate_tokens: int) -> Sent:
        """POST JSON: `send`'s hot path (chat completions, embeddings)."""
        return await self.send("POST", path, body=body, estimate_tokens=estimate_tokens)

    async def send(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                   upload: Upload | None = None, estimate_tokens: int = 0) -> Sent:
        """The first 2xx reply.  Raises `LLMUnavailableError` when the endpoint
        or key is wrong or the retries run out, `LLMOutputError` when the
        server rejects this request (400, 413, 422).  `estimate_tokens` is
        taken from the tpm cap before sending (see `give_back`)."""
        endpoint = self.endpoint
        pool = pool_for(endpoint, self._pool_key)
        transport = self._transport or shared_transport()
        headers = auth_headers(endpoint)
        last_problem = ""
        for attempt in range(endpoint.max_retries + 1):
            if pool.rpm:
                await pool.rpm.take(1)
            if pool.tpm and estimate_tokens:
                await pool.tpm.take(estimate_tokens)
            try:
                replica = await pool.acquire()
            except NoReplica as err:
                last_problem = str(err)
                if attempt < endpoint.max_retries:
                    await asyncio.sleep(self._backoff(attempt, None))
                continue
            url = replica.url + path
            started = time.monotonic()
            retry_after = None
            try:
                if method == "POST" and body is not None:
                    reply = await transport.post_json(url, body, headers, endpoint.timeout_s)
                else:
                    reply = await transport.request(method, url, headers, endpoint.timeout_s,
                                                    body=body, upload=upload)
            except TransportError as err:
                last_problem = f"{type(err).__name__}: {err}"
                replica.failed(gone=not isinstance(err, TransportTimeout))
                pool.release(replica, "refused")
            else:
                status = reply.status
                if status < 300:
                    latency = time.monotonic() - started
                    replica.answered()
                    pool.release(replica, "ok", latency)
                    return Sent(reply, attempt + 1, latency)
                last_problem = f"HTTP {status}: {reply.text[:200]}"
                if status in FATAL_STATUS:
                    pool.release(replica, "other")
                    raise LLMUnavailableError(f"{url}: {last_problem}")
                if status < 500 and status not in RETRY_STATUS:
                    pool.release(replica, "other")
                    raise LLMOutputError(f"request rejected: {last_problem}")
                retry_after = retry_after_seconds(reply.headers.get("retry-after"))
                if status >= 500:
                    replica.failed(gone=False)
                pool.release(replica, "refused", retry_after_s=retry_after)
            if attempt < endpoint.max_retries:
                if replica.failures and retry_after is None and pool.others_up(replica):
                    continue  # another replica answers: go there now
                await asyncio.sleep(self._backoff(attempt, retry_after))
        raise LLMUnavailableError(
            f"{endpoint.base_urls}: gave up after {endpoint.max_retries + 1} attempts "
            f"({last_problem})")

    def give_back(self, estimate_tokens: int, used_tokens: int) -> None:
        """Correct the tpm cap by what the server reported using."""
        pool = pool_for(self.endpoint, self._pool_key)
        if pool.tpm:
            pool.tpm.give_back(estimate_tokens - used_tokens)


class OpenAIChatLLM(LLM):
    backend = "openai"

    def __init__(self, endpoint: LLMEndpoint, store: Store | None = None,
                 transport: Transport | None = None):
        super().__init__(endpoint.model, store)
        self.endpoint = endpoint
        self.client = ServerClient(endpoint, transport)
        # Requests wait for a replica's limit inside `ServerClient.post`, per attempt.
        self.max_concurrency = 1_000_000
        # A server's context is known only when the recipe gives it (n_ctx).
        self.context_window = endpoint.n_ctx if "n_ctx" in endpoint.model_fields_set else None
        self.batched = endpoint.batch and store is not None  # batches are resumed from the store
        self._answered: dict[str, RawCompletion] = {}  # by key, from batches, not yet used

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.message_dicts(),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        }
        if request.stop and not self.endpoint.reasoning:  # (a trace would hit them: cut after it)
            body["stop"] = list(request.stop)
        if request.frequency_penalty:
            body["frequency_penalty"] = request.frequency_penalty
        mode = self.endpoint.structured_output
        if request.schema is not None and mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.schema, "strict": True},
            }
        elif request.schema is not None and mode == "json_object":
            # The llama.cpp servers' convention; their grammar builder needs
            # the same length-cap trimming as the embedded backend.

            body["response_format"] = {"type": "json_object",
                                       "schema": grammar_schema(request.schema)}
        return body

    def chat_chunks(self, chunks, on_result=None):
        """With `batch: true`, the requests not in the cache are first answered
        through the Batch API (`batch_api.py`); every request then takes the
        ordinary path, where those answers stand in for sending."""
        if not self.batched:
            return super().chat_chunks(chunks, on_result)

        requests = [r for chunk in chunks for r in chunk]
        budget = budget_of(self.store)
        # the whole stage, before a batch is paid for: the budget and the disk's room
        (keys, hits), reserved, _ = self._before_sending(budget, requests)
        todo = {key: request for key, request in zip(keys, requests)
                if key not in hits and key not in self._answered and not self.prompt_too_long(request)}
        try:
            if len(todo) >= self.endpoint.batch_min:
                self._answered.update(run_sync(BatchRunner(self).answer(todo)))
        finally:  # the ordinary path below reserves the chunks it sends again
            if reserved is not None:
                reserved.release_all()
        try:
            return super().chat_chunks(
                (requests[i:i + CHUNK] for i in range(0, len(requests), CHUNK)), on_result)
        finally:
            for key in todo:
                self._answered.pop(key, None)

    async def _raw_complete(self, request: ChatRequest) -> RawCompletion:
        if self._answered:
            answered = self._answered.pop(request.key(self.model), None)
            if answered is not None:
                return answered
        # Tokens taken from the tpm cap before sending (none without one).
        estimate = (self.count_tokens(request.message_dicts()) + request.max_tokens
                    if self.endpoint.tpm else 0)
        sent = await self.client.post("/chat/completions", self._body(request), estimate)
        try:
            payload = sent.reply.json()
        except ValueError as err:
            raise LLMOutputError(f"malformed completion payload: {err}") from None
        completion = completion_of(payload, sent.attempts, sent.latency_s)
        if estimate:
            self.client.give_back(estimate, completion.tokens_in + completion.tokens_out)
        return completion


def vector_from(value: str | list[float]) -> np.ndarray:
    """One embedding as float32: base64 of little-endian float32s (asked for,
    as OpenAI's own client does: no JSON number per dimension), or a list of
    numbers from a server that ignores `encoding_format`."""
    if isinstance(value, str):
        # (strict: what `b64decode(validate=True)` checks, without its regular expression)
        return np.frombuffer(binascii.a2b_base64(value, strict_mode=True),
                             dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


async def embed_on_server(endpoint: Embedding, texts: list[str],
                          transport: Transport | None = None) -> list[list[np.ndarray] | Exception]:
    """POST `texts` to the server's /embeddings, `batch_size` per request, all
    batches in flight together under the endpoint's limits.  Per batch, in
    order: its vectors, or the exception that ended it (the caller keeps
    what arrived before raising)."""
    client = ServerClient(endpoint, transport)

    async def one(batch: list[str]) -> list[np.ndarray]:
        estimate = sum(len(t) // 4 + 1 for t in batch)
        sent = await client.post("/embeddings", {"model": endpoint.model, "input": batch,
                                                  "encoding_format": "base64"}, estimate)
        try:
            payload = sent.reply.json()
            rows = sorted(payload["data"], key=lambda row: row["index"])
            vectors = [vector_from(row["embedding"]) for row in rows]
        except (ValueError, KeyError, TypeError, binascii.Error) as err:
            raise LLMOutputError(f"malformed embeddings payload: {err}") from None
        if len(vectors) != len(batch) or len({len(v) for v in vectors}) > 1:
            raise LLMOutputError(f"the server returned {len(vectors)} vectors for {len(batch)} "
                                 "texts (or of different sizes)")
        client.give_back(estimate, int((payload.get("usage") or {}).get("prompt_tokens") or estimate))
        return vectors

    size = endpoint.batch_size
    batches = [texts[i:i + size] for i in range(0, len(texts), size)]
    return list(await asyncio.gather(*(one(b) for b in batches), return_exceptions=True))


def check_reachable(endpoint: ServerEndpoint, timeout_s: float = 5.0) -> str | None:
    """None when a replica answers `GET /models` (the run goes on while any
    does); otherwise the problem.  A refused API key is a problem even when
    another replica answers."""
    problems = []
    for base in endpoint.base_urls:
        url = base + "/models"
        try:
            response = httpx.get(url, timeout=timeout_s, headers=auth_headers(endpoint))
        except httpx.HTTPError as err:
            problems.append(f"cannot reach {url} ({type(err).__name__})")
            continue
        if response.status_code in (401, 403):
            return f"{url} refused the API key (HTTP {response.status_code})"
        if response.status_code >= 500:
            problems.append(f"{url} answered HTTP {response.status_code}")
            continue
        return None
    more = f" (and {len(problems) - 1} other replicas failed)" if len(problems) > 1 else ""
    return problems[0] + more if problems else "no base_url"
