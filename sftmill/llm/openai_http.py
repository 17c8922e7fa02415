"""OpenAI-compatible chat completions over HTTP (vLLM, SGLang, Ollama,
llama.cpp server, OpenAI), with bounded concurrency and retries.

Retried: timeouts, connection errors, 429 and 5xx, with exponential backoff
and jitter, honouring `Retry-After`.  Not retried: other 4xx.  A 400/413/422
concerns one request (it becomes that record's `LLMOutputError`); 401, 403
and 404 mean the endpoint or key is wrong for every request
(`LLMUnavailableError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import os
import random
import time
from typing import Any

import httpx

from sftmill.config import LLMEndpoint
from sftmill.llm.base import (ChatRequest, LLM, LLMOutputError, LLMUnavailableError,
                              RawCompletion)
from sftmill.store import Store

RETRY_STATUS = {408, 409, 425, 429}
_CLIENT: contextvars.ContextVar[httpx.AsyncClient | None] = contextvars.ContextVar(
    "sftmill_http_client", default=None)
FATAL_STATUS = {401, 403, 404}


def auth_headers(endpoint: LLMEndpoint) -> dict[str, str]:
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


class OpenAIChatLLM(LLM):
    backend = "openai"
    backoff_base_s = 0.5
    backoff_cap_s = 30.0

    def __init__(self, endpoint: LLMEndpoint, store: Store | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(endpoint.model, store)
        self.endpoint = endpoint
        self.max_concurrency = endpoint.max_concurrency
        # A server's context is known only when the recipe gives it (n_ctx).
        self.context_window = endpoint.n_ctx if "n_ctx" in endpoint.model_fields_set else None
        self._transport = transport  # tests inject httpx.MockTransport

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.message_dicts(),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        mode = self.endpoint.structured_output
        if request.schema is not None and mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.schema, "strict": True},
            }
        elif request.schema is not None and mode == "json_object":
            # The llama.cpp servers' convention; their grammar builder needs
            # the same length-cap trimming as the embedded backend.
            from sftmill.llm.embedded import grammar_schema

            body["response_format"] = {"type": "json_object",
                                       "schema": grammar_schema(request.schema)}
        return body

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_cap_s)
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** attempt)
        return random.uniform(ceiling / 2, ceiling)

    @contextlib.asynccontextmanager
    async def _client(self):
        """One pooled client per batch (clients are bound to an event loop)."""
        existing = _CLIENT.get()
        if existing is not None:
            yield existing
            return
        timeout = httpx.Timeout(self.endpoint.timeout_s, connect=min(10.0, self.endpoint.timeout_s))
        limits = httpx.Limits(max_connections=self.max_concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=limits,
                                     transport=self._transport) as client:
            token = _CLIENT.set(client)
            try:
                yield client
            finally:
                _CLIENT.reset(token)

    async def achat_many(self, requests, on_result=None):
        async with self._client():
            return await super().achat_many(requests, on_result)

    async def _raw_complete(self, request: ChatRequest) -> RawCompletion:
        url = self.endpoint.base_url.rstrip("/") + "/chat/completions"
        body = self._body(request)
        last_problem = ""
        async with self._client() as client:
            for attempt in range(self.endpoint.max_retries + 1):
                retry_after = None
                try:
                    response = await client.post(url, json=body, headers=auth_headers(self.endpoint))
                except (httpx.TimeoutException, httpx.TransportError) as err:
                    last_problem = f"{type(err).__name__}: {err}"
                else:
                    status = response.status_code
                    if status < 300:
                        return self._completion(response, attempt + 1)
                    last_problem = f"HTTP {status}: {response.text[:200]}"
                    if status in FATAL_STATUS:
                        raise LLMUnavailableError(f"{url}: {last_problem}")
                    if status < 500 and status not in RETRY_STATUS:
                        raise LLMOutputError(f"request rejected: {last_problem}")
                    retry_after = retry_after_seconds(response.headers.get("retry-after"))
                if attempt < self.endpoint.max_retries:
                    await asyncio.sleep(self._backoff(attempt, retry_after))
        raise LLMUnavailableError(
            f"{url}: gave up after {self.endpoint.max_retries + 1} attempts ({last_problem})"
        )

    @staticmethod
    def _completion(response: httpx.Response, attempts: int) -> RawCompletion:
        try:
            payload = response.json()
            text = payload["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise LLMOutputError(f"malformed completion payload: {err}") from None
        usage = payload.get("usage") or {}
        return RawCompletion(text, int(usage.get("prompt_tokens") or 0),
                             int(usage.get("completion_tokens") or 0), attempts)


def check_reachable(endpoint: LLMEndpoint, timeout_s: float = 5.0) -> str | None:
    """None when the server answers `GET /models`; otherwise the problem."""
    url = endpoint.base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, timeout=timeout_s, headers=auth_headers(endpoint))
    except httpx.HTTPError as err:
        return f"cannot reach {url} ({type(err).__name__})"
    if response.status_code in (401, 403):
        return f"{url} refused the API key (HTTP {response.status_code})"
    if response.status_code >= 500:
        return f"{url} answered HTTP {response.status_code}"
    return None
