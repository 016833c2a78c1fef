"""Presence: the global count in Redis, and how it heals when a server stops reporting."""

from __future__ import annotations

import redis.asyncio as aioredis

from broadcaster.presence import Presence
from tests.support import eventually


async def test_total_sums_live_servers(redis_url):
    """Each server's latest report counts once; reports replace, not add."""
    redis = aioredis.Redis.from_url(redis_url)
    presence = Presence(redis, ttl=30)
    assert await presence.total() == 0
    assert await presence.report(server_id="a", count=3) == 3
    assert await presence.report(server_id="b", count=4) == 7
    assert await presence.report(server_id="a", count=1) == 5
    assert await presence.total() == 5
    await presence.withdraw(server_id="b")
    assert await presence.total() == 1
    await redis.aclose()


async def test_silent_server_expires_and_its_keys_are_pruned(redis_url):
    """A server that stops reporting (a crash) stops counting once its TTL passes."""
    redis = aioredis.Redis.from_url(redis_url)
    await Presence(redis, ttl=0.3).report(server_id="crashed", count=10)
    alive = Presence(redis, ttl=30)
    assert await alive.report(server_id="alive", count=2) == 12

    async def healed() -> bool:
        return await alive.total() == 2

    await eventually(healed, timeout=5, what="the crashed server to expire")
    assert await redis.hgetall("broadcaster:presence:broadcast:counts") == {b"alive": b"2"}
    assert await redis.zrange("broadcaster:presence:broadcast:servers", 0, -1) == [b"alive"]
    await redis.aclose()
