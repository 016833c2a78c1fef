"""Membership changes, announced to every server process through Redis.

Whoever changes a user, a group, a permission, a session or a receiver token (the admin, the
ORM, a host's own code through `broadcaster.audiences_changed`) appends a change here; each
server process reads what is new once per BROADCAST_COUNT_INTERVAL (one GET when nothing
changed) and works out its receivers' audiences again (broadcaster/fanout/membership.py).
A process that finds a hole (it missed more than is kept, or Redis lost its data) works out
all of them again: nothing is missed in silence.

Keys (built only in `_keys`):
    broadcaster:audiences:version   the number of the newest change
    broadcaster:audiences:changes   sorted set: change (JSON) -> its number, the newest KEEP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from django.db import transaction
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from broadcaster.backend import redis_client

logger = logging.getLogger(__name__)

KEEP = 1000

# KEYS[1] version, KEYS[2] changes; ARGV[1] the change (JSON, without its number), ARGV[2] KEEP.
_APPEND = """
local v = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], v, v .. ' ' .. ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[2]) + 1))
return v
"""

# KEYS[1] version, KEYS[2] changes; ARGV[1] the newest change the reader has ("": none yet).
# Returns {newest number, then each change after ARGV[1] (oldest first, at most KEEP)}.
_SINCE = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
local result = {v}
if ARGV[1] == '' or v == tonumber(ARGV[1]) then return result end
for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')) do
  table.insert(result, c)
end
return result
"""


def _keys() -> list[str]:
    return ["broadcaster:audiences:version", "broadcaster:audiences:changes"]


@dataclass
class Changed:
    """What changed since a reader last looked: users (by pk, as strings) and credentials (by
    key, identity.Credential.key), or everything (`everyone`)."""

    everyone: bool = False
    users: set[str] = field(default_factory=set)
    credentials: set[str] = field(default_factory=set)


def announce(*, users: Iterable[Any] = (), credentials: Iterable[str] = (), everyone: bool = False) -> None:
    """Append a change (sync code: signal handlers, views, commands), after the current
    transaction commits, so the server processes read what was committed. A Redis failure is
    logged, not raised: the save that caused it stands, and processes that lost Redis work out
    every receiver's audiences again when it is back."""
    change = {"users": sorted({str(u) for u in users}), "credentials": sorted(set(credentials)),
              "everyone": everyone}  # fmt: skip
    if not (change["users"] or change["credentials"] or everyone):
        return
    transaction.on_commit(lambda: _append(json.dumps(change, separators=(",", ":"))))


# After a failed announcement, later ones are skipped for this long: a save in the admin (or a
# host's test suite without Redis) must not wait on an unreachable Redis each time.
QUIET_AFTER_FAILURE = 10.0
_failed_until = 0.0


def _append(change: str) -> None:
    global _failed_until
    if time.monotonic() < _failed_until:
        return
    client = redis_client.sync_client(redis_client.redis_url())
    client.set_retry(Retry(NoBackoff(), 0))  # one try: the caller is a save, not a server
    try:
        client.eval(_APPEND, 2, *_keys(), change, KEEP)
    except (RedisError, OSError) as exc:
        _failed_until = time.monotonic() + QUIET_AFTER_FAILURE
        logger.error("Membership changes could not be announced for %.0f s (Redis unreachable: %s); server "
                     "processes work out every receiver's audiences again once it is back",
                     QUIET_AFTER_FAILURE, exc)  # fmt: skip
    finally:
        client.close()


class Feed:
    """One server process's reader of the changes."""

    def __init__(self) -> None:
        self.version: int | None = None

    async def read(self, redis: aioredis.Redis) -> Changed | None:
        """What changed since the last read (None: nothing). The first read, a hole, or a
        feed that went back (Redis lost its data) is `everyone`."""
        newest, *raw = await redis.eval(_SINCE, 2, *_keys(), "" if self.version is None else self.version)
        newest = int(newest)
        seen, self.version = self.version, newest
        if newest == seen:
            return None
        changed = Changed()
        # The first read cannot tell what changed before it: everything may have.
        if seen is None or newest < seen or not raw or int(_text(raw[0]).split(" ", 1)[0]) != seen + 1:
            changed.everyone = True
            return changed
        for item in raw:
            body = json.loads(_text(item).split(" ", 1)[1])
            changed.everyone |= bool(body.get("everyone"))
            changed.users.update(body.get("users", ()))
            changed.credentials.update(body.get("credentials", ()))
        return changed

    def lost(self) -> None:
        """Redis was unreachable: changes may have been missed, so the next read is a hole."""
        if self.version is not None:
            self.version = -2


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
