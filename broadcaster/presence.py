"""Who is connected, counted across every server process that shares the Redis.

Each server process reports its own number of open receiver connections together with
an expiry time. A process that dies without cleaning up (SIGKILL, a lost machine) stops
refreshing its entry, and the entry is pruned once it expires: the count heals by itself
within the TTL. A bare INCR/DECR counter never heals.

Keys (built only in `_keys`):
    <prefix>:servers   sorted set: server id -> expiry time (Redis clock, seconds)
    <prefix>:counts    hash: server id -> that server's open connections
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from broadcaster.backend.redis_client import sync_client
from broadcaster.protocol import BROADCAST_GROUP

# KEYS[1] servers zset, KEYS[2] counts hash
# ARGV[1] server id or "" (prune and sum only), ARGV[2] its count, ARGV[3] TTL seconds
# Returns the sum of the counts of live servers, after pruning the expired ones.
_REPORT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, server in ipairs(dead) do
  redis.call('HDEL', KEYS[2], server)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local total = 0
for _, n in ipairs(redis.call('HVALS', KEYS[2])) do
  total = total + tonumber(n)
end
return total
"""

# KEYS[1] servers zset, KEYS[2] counts hash; ARGV[1] server id
_WITHDRAW = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 0
"""


def _keys(group: str) -> list[str]:
    prefix = f"broadcaster:presence:{group}"
    return [f"{prefix}:servers", f"{prefix}:counts"]


class Presence:
    """The tracked size of one group, stored in Redis."""

    def __init__(self, redis: aioredis.Redis, *, ttl: float, group: str = BROADCAST_GROUP) -> None:
        self._redis = redis
        self._ttl = ttl
        self._keys = _keys(group)
        self._report: Any = redis.register_script(_REPORT)
        self._withdraw: Any = redis.register_script(_WITHDRAW)

    async def report(self, *, server_id: str, count: int) -> int:
        """Record that `server_id` holds `count` connections for the next TTL; return the total."""
        return int(await self._report(keys=self._keys, args=[server_id, count, self._ttl]))

    async def total(self) -> int:
        """The number of connections held by live servers."""
        return int(await self._report(keys=self._keys, args=["", 0, self._ttl]))

    async def withdraw(self, *, server_id: str) -> None:
        """Forget `server_id` at once (a clean shutdown)."""
        await self._withdraw(keys=self._keys, args=[server_id])


def group_presence(redis: aioredis.Redis) -> Presence:
    """The broadcast group's presence, with the configured TTL (read at call time)."""
    from django.conf import settings

    return Presence(redis, ttl=settings.BROADCAST_PRESENCE_TTL)


def withdraw_now(url: str, *, server_id: str, group: str = BROADCAST_GROUP) -> None:
    """Forget `server_id` from plain synchronous code (an exiting process, no event loop)."""
    client = sync_client(url)
    try:
        client.eval(_WITHDRAW, 2, *_keys(group), server_id)
    finally:
        client.close()
