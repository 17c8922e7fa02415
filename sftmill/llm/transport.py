"""HTTP for the LLM layer (chat, embeddings, batch files): one aiohttp session per process (on the LLM loop,
`base.llm_loop`), its connections kept alive across the stages of a run.

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
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import orjson


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
        import aiohttp

        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def post_json(self, url, body, headers, timeout_s):
        return await self.request("POST", url, headers, timeout_s, body=body)

    async def request(self, method, url, headers, timeout_s, body=None, upload=None):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(10.0, timeout_s))
        data: Any = None
        if body is not None:
            data, headers = orjson.dumps(body), {**headers, "Content-Type": "application/json"}
        elif upload is not None:
            data = aiohttp.FormData(dict(upload.fields))
            data.add_field("file", upload.content, filename=upload.name,
                           content_type="application/jsonl")
        try:
            async with self._client().request(method, url, data=data, timeout=timeout,
                                              headers=headers) as response:
                return Reply(response.status, response.headers, await response.text())
        except asyncio.TimeoutError as err:
            raise TransportTimeout(f"no answer within {timeout_s:g} s") from err
        except aiohttp.ClientError as err:
            raise TransportError(f"{type(err).__name__}: {err}") from err

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


_SHARED: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AiohttpTransport]" = (
    weakref.WeakKeyDictionary())


def shared_transport() -> AiohttpTransport:
    """The running loop's transport (sessions belong to one event loop)."""
    loop = asyncio.get_running_loop()
    transport = _SHARED.get(loop)
    if transport is None:
        transport = _SHARED[loop] = AiohttpTransport()
    return transport


async def close_shared(loop: asyncio.AbstractEventLoop) -> None:
    transport = _SHARED.pop(loop, None)
    if transport is not None:
        await transport.close()
