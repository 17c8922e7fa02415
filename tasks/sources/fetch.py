"""Fetch web pages politely and safely, and extract their text.

Guards, each failure becoming a skip reason:
    fetch_timeout, fetch_error, http_error, too_large, not_html,
    redirect_loop, too_many_redirects, robots_disallowed, blocked_address,
    no_text_extracted, bad_url
Per-host concurrency and delay; connect/read timeouts; a byte cap read
while streaming; content-type check; redirects followed by hand (limit, loop
detection, each hop's address checked); robots.txt respected; private,
loopback and link-local addresses refused unless the recipe allows them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import httpx

from sftmill.llm.loop import run_sync
from sftmill.tasks.sources.documents import html_to_text

USER_AGENT = "sftmill/0.1 (+https://github.com/sftmill/sftmill)"
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain", "text/markdown")


@dataclass(frozen=True)
class FetchConfig:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    total_timeout_s: float = 30.0
    max_bytes: int = 5_000_000
    max_redirects: int = 5
    per_host_concurrency: int = 2
    per_host_delay_s: float = 0.5
    total_concurrency: int = 16
    allow_private: bool = False
    respect_robots: bool = True


@dataclass(frozen=True)
class Fetched:
    url: str
    ok: bool
    final_url: str = ""
    text: str = ""
    title: str = ""
    reason: str = ""
    detail: str = ""


class _Refused(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _is_public(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return True  # resolution fails later as a fetch_error
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved
                or addr.is_multicast or addr.is_unspecified):
            return False
    return True


class Fetcher:
    def __init__(self, config: FetchConfig | None = None):
        self.config = config or FetchConfig()
        self._host_locks: dict[str, asyncio.Semaphore] = {}
        self._host_last: dict[str, float] = defaultdict(float)
        self._robots: dict[str, RobotFileParser | None] = {}
        self._robots_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_recipe(cls, recipe) -> "Fetcher":
        search = recipe.search
        return cls(FetchConfig(max_bytes=recipe.limits.max_page_bytes,
                               allow_private=search.allow_private_addresses,
                               respect_robots=search.respect_robots,
                               total_timeout_s=search.fetch_timeout_s,
                               read_timeout_s=min(15.0, search.fetch_timeout_s),
                               connect_timeout_s=min(5.0, search.fetch_timeout_s),
                               per_host_delay_s=search.per_host_delay_s,
                               per_host_concurrency=search.per_host_concurrency))

    # -- guards -------------------------------------------------------------
    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Refused("bad_url", url)
        if not self.config.allow_private and not _is_public(parts.hostname):
            raise _Refused("blocked_address", f"{parts.hostname} is private/loopback/link-local")

    async def _allowed_by_robots(self, client: httpx.AsyncClient, url: str) -> bool:
        if not self.config.respect_robots:
            return True
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        async with self._robots_locks.setdefault(origin, asyncio.Lock()):  # one fetch per origin
            if origin not in self._robots:
                parser: RobotFileParser | None = None
                try:
                    response = await client.get(origin + "/robots.txt", follow_redirects=True)
                    if response.status_code == 200:
                        parser = RobotFileParser()
                        parser.parse(response.text.splitlines())
                    elif response.status_code in (401, 403):
                        parser = RobotFileParser()
                        parser.disallow_all = True
                except httpx.HTTPError:
                    parser = None  # no robots.txt reachable: allowed
                self._robots[origin] = parser
        parser = self._robots[origin]
        return parser is None or parser.can_fetch(USER_AGENT, url)

    async def _polite(self, host: str):
        lock = self._host_locks.setdefault(host, asyncio.Semaphore(self.config.per_host_concurrency))
        await lock.acquire()
        wait = self._host_last[host] + self.config.per_host_delay_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._host_last[host] = time.monotonic()
        return lock

    # -- one page -----------------------------------------------------------
    async def _get(self, client: httpx.AsyncClient, url: str) -> tuple[str, str, str]:
        """(final url, content type, body) following redirects by hand.

        `total_timeout_s` bounds the time spent on the page's requests (all
        hops together), not the time spent waiting politely for its host."""
        seen = {url}
        budget = self.config.total_timeout_s
        for _hop in range(self.config.max_redirects + 1):
            self._check_url(url)
            if not await self._allowed_by_robots(client, url):
                raise _Refused("robots_disallowed", url)
            host = urlsplit(url).netloc
            lock = await self._polite(host)
            started = time.monotonic()
            try:
                if budget <= 0:
                    raise TimeoutError("page time budget spent")
                async with asyncio.timeout(budget), client.stream("GET", url) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers.get("location", ""))
                        if target in seen:
                            raise _Refused("redirect_loop", f"{url} -> {target}")
                        seen.add(target)
                        url = target
                        continue
                    if response.status_code >= 400:
                        raise _Refused("http_error", f"HTTP {response.status_code}")
                    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if ctype and not ctype.startswith(HTML_TYPES + TEXT_TYPES):
                        raise _Refused("not_html", f"content-type {ctype}")
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > self.config.max_bytes:
                        raise _Refused("too_large", f"{declared} bytes declared")
                    body = bytearray()
                    async for part in response.aiter_bytes():
                        body.extend(part)
                        if len(body) > self.config.max_bytes:
                            raise _Refused("too_large", f"over {self.config.max_bytes} bytes")
                    charset = response.charset_encoding or "utf-8"
                    return url, ctype, bytes(body).decode(charset, errors="replace")
            finally:
                budget -= time.monotonic() - started
                lock.release()
        raise _Refused("too_many_redirects", f"more than {self.config.max_redirects}")

    async def fetch(self, client: httpx.AsyncClient, url: str) -> Fetched:
        try:
            final, ctype, body = await self._get(client, url)
        except _Refused as refused:
            return Fetched(url, False, reason=refused.reason, detail=refused.detail)
        except (httpx.TimeoutException, TimeoutError) as err:
            return Fetched(url, False, reason="fetch_timeout", detail=type(err).__name__)
        except httpx.HTTPError as err:
            return Fetched(url, False, reason="fetch_error", detail=f"{type(err).__name__}: {err}")
        if ctype.startswith(TEXT_TYPES):
            text, title = body, ""
        else:
            text, title = html_to_text(body)
        if not text or not text.strip():
            return Fetched(url, False, final, reason="no_text_extracted", detail="empty after extraction")
        return Fetched(url, True, final, text.strip(), title)

    async def afetch_many(self, urls: list[str]) -> list[Fetched]:
        timeout = httpx.Timeout(self.config.read_timeout_s, connect=self.config.connect_timeout_s)
        limit = asyncio.Semaphore(self.config.total_concurrency)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                                     headers={"User-Agent": USER_AGENT}) as client:
            async def one(url: str) -> Fetched:
                async with limit:
                    return await self.fetch(client, url)

            return list(await asyncio.gather(*(one(u) for u in urls)))

    def fetch_many(self, urls: list[str]) -> list[Fetched]:
        return run_sync(self.afetch_many(urls))
