"""Fixed-window counters in Redis, so limits hold across processes: sends per API token, and
failed token checks per client address."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

# KEYS[1] the window's counter; ARGV[1] window seconds. Returns {count, ms left in window}.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 1000) end
return {n, redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] the window's counter. Returns {count, ms left in window} without counting.
_PEEK = """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}
"""


@dataclass(frozen=True)
class Verdict:
    """Whether one more try is allowed, and if not, how many seconds until it is."""

    allowed: bool
    retry_after: int
    # Tries counted in the window so far.
    count: int = 0


def sends_key(sender: str) -> str:
    """The counter of one API token's sends."""
    return f"broadcaster:ratelimit:{sender}"


def failures_key(address: str) -> str:
    """The counter of failed token checks from one client address (or IPv6 /64)."""
    return f"broadcaster:authfail:{address}"


def _verdict(allowed: bool, count: int, ttl_ms: int) -> Verdict:
    return Verdict(allowed=allowed, retry_after=0 if allowed else max(1, -(-ttl_ms // 1000)), count=count)


async def hit(redis: aioredis.Redis, key: str, *, limit: int, window: int) -> Verdict:
    """Count one try under `key`; refuse past `limit` tries per `window` seconds."""
    count, ttl_ms = await redis.eval(_HIT, 1, key, window)
    return _verdict(int(count) <= limit, int(count), int(ttl_ms))


async def peek(redis: aioredis.Redis, key: str, *, limit: int) -> Verdict:
    """Whether one more try under `key` is allowed (fewer than `limit` counted), without
    counting it."""
    count, ttl_ms = await redis.eval(_PEEK, 1, key)
    return _verdict(int(count) < limit, int(count), int(ttl_ms))


class Turns:
    """One holder at a time per key, in this process (an asyncio lock per key, dropped when
    nobody holds or waits for it)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def of(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]
