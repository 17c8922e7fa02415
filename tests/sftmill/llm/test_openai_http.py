"""Retry and request logic of the HTTP backend against httpx.MockTransport
(the real server is exercised in test_real_server.py)."""

import json
import time

import httpx
import pytest

from sftmill.config import LLMEndpoint
from sftmill.llm import ChatRequest, LLMOutputError, LLMUnavailableError
from sftmill.llm.openai_http import OpenAIChatLLM, retry_after_seconds
from sftmill.store import Store

OK = {"choices": [{"message": {"content": '{"answer": "six"}'}}],
      "usage": {"prompt_tokens": 12, "completion_tokens": 4}}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def make(handler, store=None, **endpoint):
    cfg = LLMEndpoint(backend="openai", base_url="http://llm.test/v1", model="m",
                      max_retries=3, **endpoint)
    llm = OpenAIChatLLM(cfg, store, transport=httpx.MockTransport(handler))
    llm.backoff_base_s = 0.01
    return llm


def request():
    return ChatRequest.build([{"role": "user", "content": "How many quarks?"}], schema=SCHEMA)


def test_sends_json_schema_and_counts_tokens(tmp_path):
    seen = []

    def handler(r):
        seen.append(json.loads(r.content))
        return httpx.Response(200, json=OK)

    store = Store.open(tmp_path / "run.duckdb")
    result = make(handler, store).chat(request())
    assert result.data == {"answer": "six"}
    assert seen[0]["response_format"]["type"] == "json_schema"
    assert seen[0]["response_format"]["json_schema"]["schema"] == SCHEMA
    assert store.execute("SELECT tokens_in, tokens_out FROM llm_calls") == [(12, 4)]


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_retries_on_429_and_5xx(status):
    calls = []

    def handler(r):
        calls.append(1)
        return httpx.Response(status if len(calls) < 3 else 200, json=OK)

    assert make(handler).chat(request()).data == {"answer": "six"}
    assert len(calls) == 3


def test_retries_on_connection_errors_and_timeouts():
    calls = []

    def handler(r):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            raise httpx.ReadTimeout("slow")
        return httpx.Response(200, json=OK)

    assert make(handler).chat(request()).data == {"answer": "six"}
    assert len(calls) == 3


def test_honours_retry_after():
    calls = []

    def handler(r):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.3"})
        return httpx.Response(200, json=OK)

    make(handler).chat(request())
    assert calls[1] - calls[0] >= 0.3


@pytest.mark.parametrize("status, error", [(400, LLMOutputError), (422, LLMOutputError),
                                           (401, LLMUnavailableError), (404, LLMUnavailableError)])
def test_no_retry_on_other_4xx(status, error):
    calls = []

    def handler(r):
        calls.append(1)
        return httpx.Response(status, text="nope")

    with pytest.raises(error):
        make(handler).chat(request())
    assert len(calls) == 1


def test_gives_up_after_max_retries():
    calls = []

    def handler(r):
        calls.append(1)
        return httpx.Response(503)

    with pytest.raises(LLMUnavailableError, match="gave up after 4 attempts"):
        make(handler).chat(request())
    assert len(calls) == 4


def test_api_key_goes_in_the_header_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTMILL_TEST_KEY", "sk-secret-123")
    headers = []

    def handler(r):
        headers.append(r.headers.get("authorization"))
        return httpx.Response(200, json=OK)

    store = Store.open(tmp_path / "run.duckdb")
    make(handler, store, api_key_env="SFTMILL_TEST_KEY").chat(request())
    assert headers == ["Bearer sk-secret-123"]
    dump = json.dumps(store.query_dicts("SELECT * FROM llm_calls"), default=str)
    assert "sk-secret-123" not in dump


def test_concurrency_is_bounded():
    import threading

    in_flight, peak, lock = [0], [0], threading.Lock()

    async def handler(r):
        import asyncio

        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.02)
        with lock:
            in_flight[0] -= 1
        return httpx.Response(200, json=OK)

    llm = make(handler, max_concurrency=3)
    reqs = [ChatRequest.build([{"role": "user", "content": f"q{i}"}], schema=SCHEMA) for i in range(12)]
    assert len(llm.chat_many(reqs)) == 12
    assert peak[0] == 3


def test_retry_after_parsing():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None
