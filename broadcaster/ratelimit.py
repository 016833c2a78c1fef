"""A fixed-window rate limit per sender, counted in Redis so it holds across processes."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

# KEYS[1] the window's counter; ARGV[1] window seconds. Returns {count, ms left in window}.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 1000) end
return {n, redis.call('PTTL', KEYS[1])}
"""


@dataclass(frozen=True)
class Verdict:
    """Whether one more send is allowed, and if not, how many seconds until it is."""

    allowed: bool
    retry_after: int


async def hit(redis: aioredis.Redis, *, sender: str, limit: int, window: int) -> Verdict:
    """Count one send by `sender`; refuse past `limit` sends per `window` seconds."""
    count, ttl_ms = await redis.eval(_HIT, 1, f"broadcaster:ratelimit:{sender}", window)
    if int(count) <= limit:
        return Verdict(allowed=True, retry_after=0)
    return Verdict(allowed=False, retry_after=max(1, -(-int(ttl_ms) // 1000)))
