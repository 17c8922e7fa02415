"""HTTP for the LLM layer (chat, embeddings, batch files): one transport per
event loop (in a run, the LLM loop's: `base.llm_loop`), its connections kept
alive across the stages of a run.  By default chat and embedding POSTs go
through a worker process of their own (`ProcessTransport`, `http_worker.py`),
the rest through an aiohttp session here; `SFTMILL_HTTP_WORKER=0` keeps them
all here (`AiohttpTransport`).

aiohttp, not httpx: against the same mock server on 2 cores, httpx reached
62 requests/s at 64 in flight and 46 at 256 (16–22 CPU-seconds per 1,000
requests); aiohttp reached 307 and 1,118 (0.3 CPU-seconds per 1,000) —
`benchmarks/http_clients.py`, figures in `benchmarks/README.md`.

JSON through orjson (a Prefect dependency): request bodies of a few KB are
encoded and answers parsed several times faster than with the json module.

Only transport lives here: which server, how many requests and what to
retry are decided by `openai_http.py` and `limits.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import aiohttp
import orjson

from sftmill.llm import http_worker
from sftmill.llm.http_worker import ExchangeError, ExchangeTimeout, FrameReader, exchange, frame, new_session


class TransportError(Exception):
    """The request got no HTTP answer (refused, reset, DNS, timeout)."""


class TransportTimeout(TransportError):
    pass


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    text: str

    def __post_init__(self) -> None:
        self.headers = {k.lower(): v for k, v in self.headers.items()}

    def json(self) -> Any:
        return orjson.loads(self.text)


@dataclass(frozen=True)
class Upload:
    """A file sent as multipart/form-data (OpenAI's `/files`), with its form fields."""

    name: str
    content: bytes
    fields: Mapping[str, str]


class Transport:
    """Sends a request and returns the reply; subclasses (tests) override
    `post_json` (the hot path) and, for batch files, `request`."""

    async def post_json(self, url: str, body: dict, headers: Mapping[str, str],
                        timeout_s: float) -> Reply:
        return await self.request("POST", url, headers, timeout_s, body=body)

    async def request(self, method: str, url: str, headers: Mapping[str, str], timeout_s: float,
                      body: dict | None = None, upload: Upload | None = None) -> Reply:
        """GET, or POST a JSON `body` or an `upload`."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class AiohttpTransport(Transport):
    """One `aiohttp.ClientSession` with an unbounded connection pool: how many
    requests are in flight is decided by the limits, not the pool."""

    def __init__(self) -> None:
        self._session = None

    def _client(self):
        if self._session is None or self._session.closed:
            self._session = new_session()
        return self._session

    async def post_json(self, url, body, headers, timeout_s):
        return await self.request("POST", url, headers, timeout_s, body=body)

    async def request(self, method, url, headers, timeout_s, body=None, upload=None):
        data: Any = None
        if body is not None:
            data, headers = orjson.dumps(body), {**headers, "Content-Type": "application/json"}
        elif upload is not None:
            data = aiohttp.FormData(dict(upload.fields))
            data.add_field("file", upload.content, filename=upload.name,
                           content_type="application/jsonl")
        try:
            status, reply_headers, text = await exchange(self._client(), method, url, headers,
                                                         timeout_s, data)
        except ExchangeTimeout as err:
            raise TransportTimeout(str(err)) from err
        except ExchangeError as err:
            raise TransportError(str(err)) from err
        return Reply(status, reply_headers, text.decode("utf-8", "replace"))

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class ProcessTransport(Transport):
    """JSON POSTs (chat completions, embeddings: the hot path) go through
    `http_worker.py` in a child process, so aiohttp's work per request is
    not on this process's interpreter lock; other requests (batch files,
    GETs) take an in-process `AiohttpTransport`.  The worker starts on the
    first POST; if it dies, the requests in flight fail as `TransportError`
    (retried by the caller like a dropped connection) and the next POST
    starts another."""

    def __init__(self) -> None:
        self._local = AiohttpTransport()
        self._worker: _WorkerLink | None = None
        self._starting: asyncio.Future | None = None

    async def _link(self) -> "_WorkerLink":
        link = self._worker
        if link is not None and not link.lost:
            return link
        if self._starting is None:  # the first of many concurrent requests starts it
            self._starting = asyncio.ensure_future(_WorkerLink.start())
        try:
            link = self._worker = await asyncio.shield(self._starting)
        finally:
            if self._starting is not None and self._starting.done():
                self._starting = None
        return link

    async def post_json(self, url, body, headers, timeout_s):
        link = self._worker
        if link is None or link.lost:
            link = await self._link()
        return await link.post(url, orjson.dumps(body),
                               {**headers, "Content-Type": "application/json"}, timeout_s)

    async def request(self, method, url, headers, timeout_s, body=None, upload=None):
        return await self._local.request(method, url, headers, timeout_s, body=body, upload=upload)

    async def close(self) -> None:
        if self._worker is not None:
            await self._worker.close()
            self._worker = None
        await self._local.close()


class _WorkerLink(asyncio.Protocol):
    """This side of the socket to one worker process: writes request frames,
    resolves each request's future from its reply frame."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count()
        self.transport: asyncio.Transport | None = None
        self.process = None
        self.lost = False

    @classmethod
    async def start(cls) -> "_WorkerLink":
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, http_worker.__file__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as err:
            ours.close()
            raise TransportError(f"could not start the HTTP worker: {err}") from err
        finally:
            theirs.close()
        _, link = await asyncio.get_running_loop().create_connection(cls, sock=ours)
        link.process = process
        return link

    async def post(self, url: str, data: bytes, headers: Mapping[str, str],
                   timeout_s: float) -> Reply:
        if self.lost:
            raise TransportError("the HTTP worker process ended")
        i = next(self.ids)
        future = self.pending[i] = asyncio.get_running_loop().create_future()
        self.transport.write(frame({"i": i, "u": url, "h": headers, "t": timeout_s}, data))
        try:
            return await future
        finally:
            self.pending.pop(i, None)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        for head, body in self.reader.feed(data):
            future = pending.pop(head["i"], None)
            if future is None or future.done():  # its caller was cancelled
                continue
            problem = head.get("e")
            if problem is None:
                future.set_result(Reply(head["s"], head["h"], body.decode("utf-8", "replace")))
            elif problem == "timeout":
                future.set_exception(TransportTimeout(head["m"]))
            else:
                future.set_exception(TransportError(head["m"]))

    def connection_lost(self, exc) -> None:
        self.lost = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(TransportError("the HTTP worker process ended"))
        self.pending.clear()

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        process = self.process
        if process is not None:
            for _ in range(50):  # it exits when the socket closes
                if process.poll() is not None:
                    return
                await asyncio.sleep(0.02)
            process.kill()
            process.wait()


class PerLoop:
    """One value per event loop, made on first use there (sessions, sockets
    and limits belong to one loop).  The last loop's value is kept beside
    the weak-key dictionary: a weak-key look-up per request showed in
    profiles, and a run uses one loop."""

    def __init__(self, make):
        self._make = make
        self._by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = (
            weakref.WeakKeyDictionary())
        self._last: "tuple[weakref.ref, Any] | None" = None

    def get(self) -> Any:
        loop, last = asyncio.get_running_loop(), self._last  # (read once: another loop's thread may swap it)
        if last is not None and last[0]() is loop:
            return last[1]
        value = self._by_loop.get(loop)
        if value is None:
            value = self._by_loop[loop] = self._make()
        self._last = (weakref.ref(loop), value)
        return value

    def pop(self, loop: asyncio.AbstractEventLoop) -> Any:
        last = self._last
        if last is not None and last[0]() is loop:
            self._last = None
        return self._by_loop.pop(loop, None)


def in_process() -> bool:
    """`SFTMILL_HTTP_WORKER=0`: HTTP in this process, not in a worker."""
    return os.environ.get("SFTMILL_HTTP_WORKER", "1").strip().lower() in ("0", "false", "no", "off")


_SHARED = PerLoop(lambda: AiohttpTransport() if in_process() else ProcessTransport())


def shared_transport() -> Transport:
    """The running loop's transport."""
    return _SHARED.get()


async def close_shared(loop: asyncio.AbstractEventLoop) -> None:
    transport = _SHARED.pop(loop)
    if transport is not None:
        await transport.close()
