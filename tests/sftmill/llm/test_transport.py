"""The HTTP worker process (`ProcessTransport`) against a real HTTP server:
replies reach the request that asked, a dead worker fails only what was in
flight, timeouts stay timeouts."""

import asyncio
import os
import signal

import pytest
from fake_openai import FakeOpenAI

from sftmill.llm.http_worker import FrameReader, frame
from sftmill.llm.transport import ProcessTransport, TransportError, TransportTimeout


def body(text: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 0.0,
            "top_p": 1.0, "max_tokens": 20, "seed": 0}


def test_frames_split_anywhere_come_out_whole():
    stream = b"".join(frame({"i": i, "x": "é" * i}, bytes([i]) * (i * 37)) for i in range(40))
    reader, frames = FrameReader(), []
    for at in range(0, len(stream), 13):  # fed in pieces that cut through frames
        frames += reader.feed(stream[at:at + 13])
    assert [(h["i"], h["x"], b) for h, b in frames] == [
        (i, "é" * i, bytes([i]) * (i * 37)) for i in range(40)]


def test_each_reply_reaches_its_own_request():
    server = FakeOpenAI(delay_s=0.05)

    async def go():
        transport = ProcessTransport()
        try:
            replies = await asyncio.gather(*(
                transport.post_json(server.url + "/chat/completions", body(f"question {i}"), {}, 30)
                for i in range(60)))
            pid = transport._worker.process.pid
        finally:
            await transport.close()
        return replies, pid

    replies, pid = asyncio.run(go())
    assert pid != os.getpid()
    assert [r.status for r in replies] == [200] * 60
    # the fake answers free text with the prompt in it: each reply is its own request's
    assert [r.json()["choices"][0]["message"]["content"].endswith(f"question {i}")
            for i, r in enumerate(replies)] == [True] * 60
    assert server.requests == 60


def test_a_dead_worker_fails_what_was_in_flight_and_the_next_request_starts_another():
    server = FakeOpenAI(delay_s=2.0)

    async def go():
        transport = ProcessTransport()
        try:
            in_flight = asyncio.ensure_future(
                transport.post_json(server.url + "/chat/completions", body("slow"), {}, 30))
            while transport._worker is None or not transport._worker.pending:
                await asyncio.sleep(0.01)
            first = transport._worker.process
            await asyncio.sleep(0.3)
            os.kill(first.pid, signal.SIGKILL)
            with pytest.raises(TransportError, match="worker process ended"):
                await in_flight
            fast = FakeOpenAI(delay_s=0.0)
            reply = await transport.post_json(fast.url + "/chat/completions", body("again"), {}, 30)
            return first, transport._worker.process, reply
        finally:
            await transport.close()

    first, second, reply = asyncio.run(go())
    assert first.wait(timeout=5) == -signal.SIGKILL
    assert second.pid != first.pid and reply.status == 200
    assert second.wait(timeout=5) == 0  # closing the transport ends the worker


def test_a_server_slower_than_the_timeout_is_a_timeout():
    server = FakeOpenAI(delay_s=1.5)

    async def go():
        transport = ProcessTransport()
        try:
            await transport.post_json(server.url + "/chat/completions", body("slow"), {}, 0.3)
        finally:
            await transport.close()

    with pytest.raises(TransportTimeout, match="no answer within 0.3 s"):
        asyncio.run(go())


def test_each_loop_has_one_transport_and_the_environment_can_keep_http_in_process(monkeypatch):
    from sftmill.llm.transport import AiohttpTransport, close_shared, shared_transport

    async def which():
        first, again = shared_transport(), shared_transport()
        assert first is again
        await close_shared(asyncio.get_running_loop())
        return type(first)

    assert asyncio.run(which()) is ProcessTransport
    monkeypatch.setenv("SFTMILL_HTTP_WORKER", "0")
    assert asyncio.run(which()) is AiohttpTransport
