"""Retry and request logic of the HTTP backend against a transport that
calls a handler (a real server is exercised in test_real_server.py, and the
limits and replicas over real HTTP in test_limits.py)."""

import asyncio
import json
import time

import pytest

from sftmill.core.endpoints import LLMEndpoint
from sftmill.core.store import Store
from sftmill.llm.errors import LLMOutputError, LLMUnavailableError
from sftmill.llm.openai_http import OpenAIChatLLM, retry_after_seconds
from sftmill.llm.request import ChatRequest
from sftmill.llm.transport import Reply, Transport, TransportError, TransportTimeout


class Sent:
    """What the handler sees of a request."""

    def __init__(self, url, body, headers):
        self.url, self.body, self.headers = url, body, {k.lower(): v for k, v in headers.items()}


class HandlerTransport(Transport):
    """Calls `handler(Sent)` (plain or async); it returns a Reply or raises."""

    def __init__(self, handler):
        self.handler = handler

    async def post_json(self, url, body, headers, timeout_s):
        answer = self.handler(Sent(url, json.loads(json.dumps(body)), headers))
        if asyncio.iscoroutine(answer):
            answer = await answer
        return answer


def reply(status, payload=None, headers=None, text=""):
    return Reply(status, headers or {}, json.dumps(payload) if payload is not None else text)

OK = {"choices": [{"message": {"content": '{"answer": "six"}'}}],
      "usage": {"prompt_tokens": 12, "completion_tokens": 4}}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def make(handler, store=None, **endpoint):
    cfg = LLMEndpoint(backend="openai", base_url="http://llm.test/v1", model="m",
                      max_retries=3, **endpoint)
    llm = OpenAIChatLLM(cfg, store, transport=HandlerTransport(handler))
    llm.client.backoff_base_s = 0.01
    return llm


def request():
    return ChatRequest.build([{"role": "user", "content": "How many quarks?"}], schema=SCHEMA)


def test_sends_json_schema_and_counts_tokens(tmp_path):
    seen = []

    def handler(r):
        seen.append(r.body)
        return reply(200, OK)

    store = Store.open(tmp_path / "run.duckdb")
    result = make(handler, store).chat(request())
    assert result.data == {"answer": "six"}
    assert seen[0]["response_format"]["type"] == "json_schema"
    assert seen[0]["response_format"]["json_schema"]["schema"] == SCHEMA
    assert store.execute("SELECT tokens_in, tokens_out FROM llm_calls") == [(12, 4)]


def test_frequency_penalty_is_sent_only_when_set():
    seen = []

    def handler(r):
        seen.append(r.body)
        return reply(200, OK)

    llm = make(handler)
    llm.chat(request())
    llm.chat(ChatRequest.build(request().message_dicts(), schema=SCHEMA, frequency_penalty=0.5))
    assert "frequency_penalty" not in seen[0] and seen[1]["frequency_penalty"] == 0.5
    assert request().key("m") != ChatRequest.build(request().message_dicts(), schema=SCHEMA,
                                                   frequency_penalty=0.5).key("m")


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_retries_on_429_and_5xx(status):
    calls = []

    def handler(r):
        calls.append(1)
        return reply(status if len(calls) < 3 else 200, OK)

    assert make(handler).chat(request()).data == {"answer": "six"}
    assert len(calls) == 3


def test_retries_on_connection_errors_and_timeouts():
    calls = []

    def handler(r):
        calls.append(1)
        if len(calls) == 1:
            raise TransportError("ClientConnectorError: refused")
        if len(calls) == 2:
            raise TransportTimeout("no answer within 120 s")
        return reply(200, OK)

    assert make(handler).chat(request()).data == {"answer": "six"}
    assert len(calls) == 3


def test_honours_retry_after():
    calls = []

    def handler(r):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return reply(429, headers={"Retry-After": "0.3"})
        return reply(200, OK)

    make(handler).chat(request())
    assert calls[1] - calls[0] >= 0.3


@pytest.mark.parametrize("status, error", [(400, LLMOutputError), (422, LLMOutputError),
                                           (401, LLMUnavailableError), (404, LLMUnavailableError)])
def test_no_retry_on_other_4xx(status, error):
    calls = []

    def handler(r):
        calls.append(1)
        return reply(status, text="nope")

    with pytest.raises(error):
        make(handler).chat(request())
    assert len(calls) == 1


def test_gives_up_after_max_retries():
    calls = []

    def handler(r):
        calls.append(1)
        return reply(503)

    with pytest.raises(LLMUnavailableError, match="gave up after 4 attempts"):
        make(handler).chat(request())
    assert len(calls) == 4


def test_api_key_goes_in_the_header_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTMILL_TEST_KEY", "sk-secret-123")
    headers = []

    def handler(r):
        headers.append(r.headers.get("authorization"))
        return reply(200, OK)

    store = Store.open(tmp_path / "run.duckdb")
    make(handler, store, api_key_env="SFTMILL_TEST_KEY").chat(request())
    assert headers == ["Bearer sk-secret-123"]
    dump = json.dumps(store.query_dicts("SELECT * FROM llm_calls"), default=str)
    assert "sk-secret-123" not in dump


def counting_handler(delay_s=0.02):
    in_flight, peak = [0], [0]

    async def handler(r):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(delay_s)
        in_flight[0] -= 1
        return reply(200, OK)

    return handler, peak


def many(n):
    return [ChatRequest.build([{"role": "user", "content": f"q{i}"}], schema=SCHEMA) for i in range(n)]


def test_concurrency_is_bounded_when_not_adaptive():
    handler, peak = counting_handler()
    llm = make(handler, max_concurrency=3, adaptive_concurrency=False)
    assert len(llm.chat_many(many(12))) == 12
    assert peak[0] == 3


def test_adaptive_concurrency_grows_while_latency_holds():
    handler, peak = counting_handler()
    llm = make(handler, max_concurrency=2, concurrency_ceiling=6)
    assert all(r.data for r in llm.chat_many(many(200)))
    assert peak[0] == 6  # grew from 2 to the ceiling, never past it


def test_retry_after_parsing():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None


@pytest.mark.parametrize("message", [
    {"content": "Six.", "reasoning_content": "Up, down, strange,\n\ncharm, bottom, top."},
    {"content": "Six.", "reasoning": "Up, down, strange,\n\ncharm, bottom, top."},
    {"content": "<think>\nUp, down, strange,\n\ncharm, bottom, top.\n</think>\n\nSix."},
    {"content": "Up, down, strange,\n\ncharm, bottom, top.\n</think>\n\nSix."},  # template opened it
])
def test_a_reasoning_trace_is_kept_apart_from_the_answer_and_cached(tmp_path, message):
    seen = []

    def handler(r):
        seen.append(r.body)
        return reply(200, {"choices": [{"message": message}],
                           "usage": {"prompt_tokens": 12, "completion_tokens": 40}})

    store = Store.open(tmp_path / "run.duckdb")
    llm = make(handler, store, reasoning=True, max_tokens=1024)
    asked = ChatRequest.build(request().message_dicts(), stop=("\n\n",), max_tokens=1024)
    result = llm.chat(asked)
    assert (result.text, result.reasoning) == ("Six.", "Up, down, strange,\n\ncharm, bottom, top.")
    assert "stop" not in seen[0]  # the server would cut the trace at its blank line
    again = llm.chat(asked)
    assert len(seen) == 1 and again.cached
    assert (again.text, again.reasoning, again.tokens_out) == ("Six.", result.reasoning, 40)


def test_stop_sequences_cut_the_answer_after_the_trace_and_structured_answers_parse():
    answers = iter([{"content": "<think>Plan.\n\nMore.</think>Six quarks.\n\n[2] Next source"},
                    {"content": "<think>Counting.</think>\n" + '{"answer": "six"}'}])
    llm = make(lambda r: reply(200, {"choices": [{"message": next(answers)}]}),
               reasoning=True, max_tokens=1024)
    text = llm.chat(ChatRequest.build(request().message_dicts(), stop=("\n\n", "\n["),
                                      max_tokens=1024))
    assert (text.text, text.reasoning) == ("Six quarks.", "Plan.\n\nMore.")
    assert llm.chat(request()).data == {"answer": "six"}


def test_an_output_that_is_all_trace_is_an_error_that_says_what_to_set():
    for message in ({"content": "<think>\nThe user asks"},  # cut by a stop or max_tokens
                    {"content": "", "reasoning_content": "The user asks"}):
        llm = make(lambda r, m=message: reply(200, {"choices": [{"message": m}]}))
        with pytest.raises(LLMOutputError, match="reasoning: true"):
            llm.chat(request())


def test_a_reasoning_endpoint_needs_room_for_its_answer():
    with pytest.raises(ValueError, match="leaves no room for an answer"):
        LLMEndpoint(reasoning=True, max_tokens=400, reasoning_tokens=500)
