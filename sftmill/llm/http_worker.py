"""The LLM layer's HTTP in a process of its own.

At a few hundred requests in flight on 2 cores, aiohttp's own request path
was about a fifth of the interpreter lock's time in the process that also
renders prompts, parses answers and runs the checks (`benchmarks/README.md`,
py-spy `--gil`), and every callback of the LLM loop waits for that lock.
`transport.ProcessTransport` hands each chat/embedding POST to this worker
over a socket pair and gets the reply back; the worker holds one
`aiohttp.ClientSession` (connections kept alive) and nothing else.

Frames, both ways: two big-endian uint32 (header length, body length), an
orjson header, the raw body.  Request header: ``{"i": id, "u": url,
"h": headers, "t": timeout_s}``; body: the JSON to POST.  Reply header:
``{"i": id, "s": status, "h": headers}`` with the response body, or
``{"i": id, "e": "timeout" | "transport", "m": message}``.

Run by path (`python http_worker.py FD`), so it imports nothing from
sftmill (the package's imports would cost the worker a second at start);
`transport.py` imports `exchange` from here.  It exits when the socket
closes: its parent ended or closed the transport.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import aiohttp
import orjson

FRAME = struct.Struct(">II")


class ExchangeTimeout(Exception):
    pass


class ExchangeError(Exception):
    pass


def new_session():
    """A session with an unbounded pool (the limits decide how many are in
    flight) and no cookie jar (an API sets none worth keeping)."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


async def exchange(session, method: str, url: str, headers, timeout_s: float,
                   data=None) -> tuple[int, dict[str, str], bytes]:
    """One request: status, headers (names lower-cased) and body bytes;
    `ExchangeTimeout` or `ExchangeError` when no HTTP answer came."""
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(10.0, timeout_s))
    try:
        async with session.request(method, url, data=data, timeout=timeout,
                                   headers=headers) as response:
            body = await response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}, body
    except asyncio.TimeoutError as err:
        raise ExchangeTimeout(f"no answer within {timeout_s:g} s") from err
    except aiohttp.ClientError as err:
        raise ExchangeError(f"{type(err).__name__}: {err}") from err


def frame(head: dict, body: bytes = b"") -> bytes:
    header = orjson.dumps(head)
    return FRAME.pack(len(header), len(body)) + header + body


class FrameReader:
    """Splits a byte stream into (header, body) frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict, bytes]]:
        buffer = self._buffer
        buffer += data
        frames, at, size = [], 0, len(buffer)
        while size - at >= FRAME.size:
            head_len, body_len = FRAME.unpack_from(buffer, at)
            end = at + FRAME.size + head_len + body_len
            if end > size:
                break
            start = at + FRAME.size
            frames.append((orjson.loads(bytes(buffer[start:start + head_len])),
                           bytes(buffer[start + head_len:end])))
            at = end
        del buffer[:at]
        return frames


class _Serve(asyncio.Protocol):
    def __init__(self, session, done: asyncio.Future):
        self.session = session
        self.done = done
        self.reader = FrameReader()
        self.transport = None
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for head, body in self.reader.feed(data):
            task = asyncio.ensure_future(self._one(head, body))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, head: dict, body: bytes) -> None:
        try:
            status, headers, text = await exchange(self.session, "POST", head["u"], head["h"],
                                                   head["t"], body)
            reply = frame({"i": head["i"], "s": status, "h": headers}, text)
        except ExchangeTimeout as err:
            reply = frame({"i": head["i"], "e": "timeout", "m": str(err)})
        except Exception as err:  # no HTTP answer, or something unforeseen: the caller retries
            reply = frame({"i": head["i"], "e": "transport", "m": f"{type(err).__name__}: {err}"})
        if not self.transport.is_closing():
            self.transport.write(reply)

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def serve(fd: int) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    session = new_session()
    sock = socket.socket(fileno=fd)
    await loop.create_connection(lambda: _Serve(session, done), sock=sock)
    try:
        await done
    finally:
        await session.close()


if __name__ == "__main__":
    import sys

    asyncio.run(serve(int(sys.argv[1])))
