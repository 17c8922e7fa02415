"""How much the client sends: adaptive concurrency (AIMD) per server and
token buckets for hosted APIs' rate limits.

`AdaptiveLimit` starts at the configured concurrency, adds one slot per
window of completions whose latency holds (additive increase), halves on a
refusal — 429, 5xx or a timeout — at most once per window (multiplicative
decrease), and has no room for new sends while a `Retry-After` runs.  It
only counts and decides; waiting for a slot is the caller's (the replica
pool in `openai_http.py`, which hands slots out first come, first served).  "Latency
holds" means the recent mean stays under `latency_ratio` × the best mean
seen: when a server queues requests instead of serving them, latency grows
and the limit stops growing.
"""

from __future__ import annotations

import asyncio
import time


class AdaptiveLimit:
    def __init__(self, start: int, ceiling: int, *, floor: int = 1, adaptive: bool = True,
                 latency_ratio: float = 1.5):
        self.limit = float(max(floor, min(start, ceiling)))
        self.floor, self.ceiling, self.adaptive = floor, ceiling, adaptive
        self.latency_ratio = latency_ratio
        self.in_flight = 0
        self.paused_until = 0.0
        self.best_latency: float | None = None
        self._window: list[float] = []
        self._last_cut = 0.0

    @property
    def current(self) -> int:
        return int(self.limit)

    def has_room(self, now: float) -> bool:
        return self.in_flight < int(self.limit) and now >= self.paused_until

    def take(self) -> None:
        self.in_flight += 1

    def release_ok(self, latency_s: float) -> None:
        """A completed request: grow by one slot per window whose latency held."""
        self.in_flight -= 1
        if not self.adaptive:
            return
        self._window.append(latency_s)
        if len(self._window) < max(4, int(self.limit)):
            return
        mean = sum(self._window) / len(self._window)
        self._window.clear()
        if self.best_latency is None or mean < self.best_latency:
            self.best_latency = mean
        if mean <= self.best_latency * self.latency_ratio:
            self.limit = min(self.ceiling, self.limit + 1)

    def release_refused(self, retry_after_s: float | None = None) -> None:
        """A refusal (429, 5xx, timeout): halve, once per window of requests;
        a Retry-After pauses every new send for that long."""
        self.in_flight -= 1
        now = time.monotonic()
        if retry_after_s:
            self.paused_until = max(self.paused_until, now + retry_after_s)
        if self.adaptive and now - self._last_cut > (self.best_latency or 0.1):
            self.limit = max(self.floor, self.limit / 2)
            self._last_cut = now
            self._window.clear()

    def release_other(self) -> None:
        """A request that ended in a way that says nothing about load."""
        self.in_flight -= 1


class TokenBucket:
    """`rate` units per minute, bursting up to one minute's worth; `take`
    waits until the units are there.  `give_back` returns what an estimate
    took too much (a negative amount takes what it took too little)."""

    def __init__(self, per_minute: float):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)  # a single oversized request still goes, alone
        while True:
            self._refill()
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.rate)

    def give_back(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)
