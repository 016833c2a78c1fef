"""Who is connected, counted across every server process that shares the Redis.

Each server process reports its own number of open receiver connections together with
an expiry time. A process that dies without cleaning up (SIGKILL, a lost machine) stops
refreshing its entry, and the entry is pruned once it expires: the count heals by itself
within the TTL. A bare INCR/DECR counter never heals.

Per audience (broadcaster/audiences.py), for the operator: each process also reports how many
of its receivers have each distinct set of memberships (a *signature*: the tabs of one user
share one, anonymous receivers another), and each signature's memberships, stored once by its
hash. The count of an audience is the sum over live servers' signatures that meet it: exact
for a union of audiences (a receiver in two of them counts once), healed with the same TTL.

Keys (built only in `_keys`):
    <prefix>:servers        sorted set: server id -> expiry time (Redis clock, seconds)
    <prefix>:counts         hash: server id -> that server's open connections
    <prefix>:sigs:<server>  hash: signature -> that server's receivers with it
    <prefix>:sig:<sig>      set: the memberships of signature <sig> (expires unless refreshed)
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis.asyncio as aioredis

from broadcaster.backend.redis_client import sync_client
from broadcaster.protocol import AUDIENCE_EVERYONE, BROADCAST_GROUP

EVERYONE = AUDIENCE_EVERYONE[0]

# Shared: prune servers whose entry expired (their counts and signature counts with them).
# KEYS[1] servers zset, KEYS[2] counts hash, ARGV[...] as the script says; `prefix` = KEYS[3].
_PRUNE = """
local function prune(now)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, server in ipairs(dead) do
    redis.call('HDEL', KEYS[2], server)
    redis.call('DEL', KEYS[3] .. ':sigs:' .. server)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS[1] servers zset, KEYS[2] counts hash, KEYS[3] the key prefix
# ARGV[1] server id or "" (prune and sum only), ARGV[2] its count, ARGV[3] TTL seconds,
# ARGV[4] "1" if signatures follow (else the server's signature counts are left as they are),
# then per signature: its hash, its count, how many memberships follow (0: stored already), them.
# Returns the sum of the counts of live servers, after pruning the expired ones.
_REPORT = (
    _PRUNE
    + """
redis.replicate_commands()
local now = clock()
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  if ARGV[4] == '1' then
    local sigs = KEYS[3] .. ':sigs:' .. ARGV[1]
    redis.call('DEL', sigs)
    local i = 5
    while i <= #ARGV do
      local sig, count, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
      redis.call('HSET', sigs, sig, count)
      local members = KEYS[3] .. ':sig:' .. sig
      if n > 0 then
        redis.call('SADD', members, unpack(ARGV, i + 3, i + 2 + n))
      end
      redis.call('EXPIRE', members, math.ceil(3 * tonumber(ARGV[3])))
      i = i + 3 + n
    end
  end
end
prune(now)
local total = 0
for _, n in ipairs(redis.call('HVALS', KEYS[2])) do
  total = total + tonumber(n)
end
return total
"""
)

# KEYS[1] servers zset, KEYS[2] counts hash, KEYS[3] the key prefix; ARGV: the audiences.
# Returns how many receivers of live servers belong to at least one of them.
_COUNT = (
    _PRUNE
    + """
prune(clock())
local total = 0
for _, server in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local flat = redis.call('HGETALL', KEYS[3] .. ':sigs:' .. server)
  for k = 1, #flat, 2 do
    local members = KEYS[3] .. ':sig:' .. flat[k]
    for _, audience in ipairs(ARGV) do
      if redis.call('SISMEMBER', members, audience) == 1 then
        total = total + tonumber(flat[k + 1])
        break
      end
    end
  end
end
return total
"""
)

# KEYS[1] servers zset, KEYS[2] counts hash, KEYS[3] the key prefix; ARGV[1] server id
_WITHDRAW = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3] .. ':sigs:' .. ARGV[1])
return 0
"""


def _keys(group: str) -> list[str]:
    prefix = f"broadcaster:presence:{group}"
    return [f"{prefix}:servers", f"{prefix}:counts", prefix]


def signature(member_of: frozenset[str]) -> str:
    """The name a set of memberships is stored under (the same in every process)."""
    return hashlib.sha256("\n".join(sorted(member_of)).encode()).hexdigest()[:24]


class Presence:
    """The tracked size of one group, stored in Redis."""

    def __init__(self, redis: aioredis.Redis, *, ttl: float, group: str = BROADCAST_GROUP) -> None:
        self._redis = redis
        self._ttl = ttl
        self._keys = _keys(group)
        self._report: Any = redis.register_script(_REPORT)
        self._withdraw: Any = redis.register_script(_WITHDRAW)
        self._count: Any = redis.register_script(_COUNT)

    async def report(
        self,
        *,
        server_id: str,
        count: int,
        signatures: list[tuple[str, int, frozenset[str] | None]] | None = None,
    ) -> int:
        """Record that `server_id` holds `count` connections for the next TTL; return the total.

        `signatures`: (signature, receivers with it, its memberships or None if they were
        stored within the last TTL) for each of its receivers' signatures; None: unchanged."""
        args: list[Any] = [server_id, count, self._ttl, "0" if signatures is None else "1"]
        for sig, n, members in signatures or ():
            args += [sig, n, len(members or ()), *sorted(members or ())]
        return int(await self._report(keys=self._keys, args=args))

    async def total(self) -> int:
        """The number of connections held by live servers."""
        return int(await self._report(keys=self._keys, args=["", 0, self._ttl, "0"]))

    async def audience_total(self, audience: tuple[str, ...]) -> int:
        """The number of connections of live servers that a broadcast for `audience` reaches
        (each once, however many of the audiences it belongs to)."""
        if EVERYONE in audience:
            return await self.total()
        return int(await self._count(keys=self._keys, args=list(audience)))

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
        client.eval(_WITHDRAW, 3, *_keys(group), server_id)
    finally:
        client.close()
