"""Adaptive concurrency, rate caps and replicas: the limits as units, and
the HTTP backend against real local servers that refuse load or die."""

import asyncio
import threading

import pytest
from fake_openai import FakeOpenAI

from sftmill.core.endpoints import LLMEndpoint
from sftmill.llm.limits import AdaptiveLimit, TokenBucket
from sftmill.llm.openai_http import OpenAIChatLLM
from sftmill.llm.request import ChatRequest

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
          "required": ["score", "reason"]}


def requests(n, tag=""):
    return [ChatRequest.build([{"role": "user", "content": f"{tag} q{i}"}], schema=SCHEMA)
            for i in range(n)]


def endpoint(url, **kw):
    return LLMEndpoint(backend="openai", base_url=url, model="fake", **kw)


def test_limit_halves_on_refusal_once_per_window_and_grows_back():
    limit = AdaptiveLimit(8, 64)
    for _ in range(8):
        limit.take()
    assert not limit.has_room(0.0)
    limit.release_refused()
    limit.release_refused()  # the same burst: cut once
    assert limit.current == 4 and limit.in_flight == 6
    for _ in range(6):
        limit.release_ok(0.1)
    for _ in range(2 * 4):
        limit.take()
        limit.release_ok(0.1)
    assert limit.current == 6  # one slot per window of completions at steady latency


def test_limit_stops_growing_when_latency_climbs_and_pauses_on_retry_after():
    import time

    limit = AdaptiveLimit(4, 64)
    for latency in [0.1] * 4 + [0.5] * 20:  # the server queues: latency five times the best
        limit.take()
        limit.release_ok(latency)
    assert limit.current == 5
    limit.take()
    limit.release_refused(retry_after_s=30)
    assert not limit.has_room(time.monotonic())  # nothing sent while Retry-After runs


def test_token_bucket_waits_for_refill(monkeypatch):
    clock = [1000.0]
    slept = []

    async def fake_sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr("sftmill.llm.limits.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("sftmill.llm.limits.asyncio.sleep", fake_sleep)

    async def scenario():
        bucket = TokenBucket(per_minute=600)  # 10 a second, a minute's burst
        await bucket.take(600)
        assert slept == []
        await bucket.take(5)  # empty: waits for 5 units at 10/s
        bucket.give_back(5)  # the estimate was 5 too high
        await bucket.take(5)

    asyncio.run(scenario())
    assert slept == [pytest.approx(0.5)]


def test_concurrency_settles_below_a_servers_limit_without_failures():
    server = FakeOpenAI(delay_s=0.03, capacity=8, retry_after="0.05")
    try:
        llm = OpenAIChatLLM(endpoint(server.url, max_concurrency=32, max_retries=10))
        results = llm.chat_many(requests(400))
        assert all(r.data for r in results)  # no request failed
        assert server.refused > 0  # it did go over the limit at first
        second_half = server.log[len(server.log) // 2:]
        assert second_half.count("429") / len(second_half) < 0.1  # and then settled below it
        assert server.peak <= 8
    finally:
        server.close()


def test_a_replica_that_dies_mid_stage_is_set_aside_and_the_stage_completes():
    alive, dying = FakeOpenAI(delay_s=0.02), FakeOpenAI(delay_s=0.02)
    try:
        llm = OpenAIChatLLM(endpoint([dying.url, alive.url], max_concurrency=4, max_retries=4))
        done = [0]

        def on_result(_i, _result):
            done[0] += 1
            if done[0] == 40:
                threading.Thread(target=dying.close).start()

        results = llm.chat_many(requests(300, "replicas"), on_result=on_result)
        assert all(r.data for r in results)
        assert 0 < dying.requests < alive.requests
        assert dying.requests + alive.requests == 300
    finally:
        alive.close()


def test_requests_go_to_the_replica_with_fewest_in_flight():
    fast, slow = FakeOpenAI(delay_s=0.005), FakeOpenAI(delay_s=0.2)
    try:
        llm = OpenAIChatLLM(endpoint([slow.url, fast.url], max_concurrency=4,
                                     adaptive_concurrency=False))
        assert all(r.data for r in llm.chat_many(requests(120, "balance")))
        assert fast.requests > 3 * slow.requests
    finally:
        fast.close()
        slow.close()


def test_when_every_replica_is_down_requests_fail_within_their_retries():
    from sftmill.llm.errors import LLMUnavailableError

    a, b = FakeOpenAI(), FakeOpenAI()
    urls = [a.url, b.url]
    a.close()
    b.close()  # both refuse connections
    llm = OpenAIChatLLM(endpoint(urls, max_retries=3))
    llm.client.backoff_base_s = 0.01
    with pytest.raises(LLMUnavailableError, match="gave up after 4 attempts"):
        llm.chat_many(requests(20, "dead"))


def test_rate_caps_take_an_estimate_per_request_and_correct_it_from_usage(monkeypatch):
    taken, returned = [], []
    original_take, original_back = TokenBucket.take, TokenBucket.give_back

    async def take(self, amount):
        taken.append((self.capacity, amount))
        await original_take(self, amount)

    def give_back(self, amount):
        returned.append(amount)
        original_back(self, amount)

    monkeypatch.setattr(TokenBucket, "take", take)
    monkeypatch.setattr(TokenBucket, "give_back", give_back)
    server = FakeOpenAI(delay_s=0.0)
    try:
        llm = OpenAIChatLLM(endpoint(server.url, rpm=6000, tpm=1_000_000))
        reqs = requests(5, "caps")
        assert all(r.data for r in llm.chat_many(reqs))
        estimate = llm.count_tokens(reqs[0].message_dicts()) + reqs[0].max_tokens
        assert sorted(a for cap, a in taken if cap == 6000) == [1] * 5  # one request each
        assert [a for cap, a in taken if cap == 1_000_000] == [estimate] * 5
        assert returned == [estimate - 15] * 5  # the fake server's usage: 10 in, 5 out
    finally:
        server.close()
