"""Sequence numbers and the bounded history of broadcasts, in Redis.

Each broadcast gets the next sequence number of its group and is kept, as the exact frame
clients receive, in a sorted set scored by seq; it is trimmed to BROADCAST_HISTORY_COUNT
entries and BROADCAST_HISTORY_AGE seconds. Numbering and keeping happen in one Lua script,
before the live send: a publisher that dies after the script and before `group_send` leaves
a message that is in history but was never live, which the next message's gap (or the hub's
periodic check) fills; it can never leave a live message that is not in history, nor a hole.

An epoch, random and set once, names the numbering: if Redis loses its data (a restart
without persistence), numbering starts again under a new epoch, and clients that resume
with the old one are told to reset.

Keys (built only in `_keys`):
    <prefix>:seq     the last seq given
    <prefix>:epoch   the current epoch
    <prefix>:log     sorted set: frame -> seq
    <prefix>:times   sorted set: seq -> publish time (Redis clock, ms), for age trimming
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from broadcaster import protocol
from broadcaster.protocol import BROADCAST_GROUP

# KEYS[1] seq, KEYS[2] epoch, KEYS[3] log, KEYS[4] times
# ARGV[1] the frame, built by protocol.message_frame with seq 0 and epoch "", ARGV[2] max
# count, ARGV[3] max age ms, ARGV[4] an epoch to use if none is set yet, ARGV[5] the
# placeholder in ARGV[1] to replace with the real seq and epoch.
# Returns {seq, epoch, frame}.
_APPEND = """
redis.replicate_commands()
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[2], epoch)
end
local seq = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local i, j = string.find(ARGV[1], ARGV[5], 1, true)
local frame = string.sub(ARGV[1], 1, i - 1) .. '"seq":' .. seq .. ',"epoch":"' .. epoch .. '"'
  .. string.sub(ARGV[1], j + 1)
redis.call('ZADD', KEYS[3], seq, frame)
redis.call('ZADD', KEYS[4], now, seq)
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[2])
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, excess - 1)
end
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[3]))
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', old[#old])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[3]))
end
return {seq, epoch, frame}
"""

# KEYS[1] seq, KEYS[2] epoch, KEYS[3] log, KEYS[4] times; ARGV[1] after seq, ARGV[2] max age ms
# Returns {last seq, epoch or false, frames with seq > ARGV[1] not older than ARGV[2]...}.
_SINCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local epoch = redis.call('GET', KEYS[2])
local result = {last, epoch}
local frames = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf')
local seqs = redis.call('ZRANGEBYSCORE', KEYS[4], now - tonumber(ARGV[2]), '+inf')
local young = {}
for _, s in ipairs(seqs) do young[s] = true end
for _, f in ipairs(frames) do
  local s = string.match(f, '"seq":(%d+)')
  if young[s] then table.insert(result, f) end
end
return result
"""


def _keys(group: str) -> list[str]:
    prefix = f"broadcaster:history:{group}"
    return [f"{prefix}:seq", f"{prefix}:epoch", f"{prefix}:log", f"{prefix}:times"]


@dataclass(frozen=True)
class Entry:
    """One kept broadcast: its number, the numbering's epoch, the frame clients receive."""

    seq: int
    epoch: str
    frame: str


@dataclass(frozen=True)
class Since:
    """What the history holds after a point: the newest seq, the epoch, the kept entries."""

    last: int
    epoch: str | None
    entries: list[Entry]


class History:
    """The numbered, bounded history of one group."""

    def __init__(
        self, redis: aioredis.Redis, *, count: int, age: float, group: str = BROADCAST_GROUP
    ) -> None:
        self._redis = redis
        self._count = count
        self._age_ms = int(age * 1000)
        self._keys = _keys(group)
        self._append: Any = redis.register_script(_APPEND)
        self._since: Any = redis.register_script(_SINCE)

    async def append(self, *, id: str, text: str, time: str) -> Entry:
        """Number and keep a message; return it with its seq, epoch and final frame."""
        template = protocol.message_frame(seq=0, epoch="", id=id, text=text, time=time)
        seq, epoch, frame = await self._append(
            keys=self._keys,
            args=[template, self._count, self._age_ms, secrets.token_hex(4), protocol.SEQ_PLACEHOLDER],
        )
        return Entry(seq=int(seq), epoch=_text(epoch), frame=_text(frame))

    async def since(self, seq: int, *, max_age: float | None = None) -> Since:
        """Kept entries with a seq above `seq` (and younger than `max_age` s), in order."""
        age_ms = self._age_ms if max_age is None else int(max_age * 1000)
        last, epoch, *frames = await self._since(keys=self._keys, args=[seq, age_ms])
        entries = []
        for raw in frames:
            frame = _text(raw)
            decoded = json.loads(frame)
            entries.append(Entry(seq=decoded["seq"], epoch=decoded["epoch"], frame=frame))
        return Since(last=int(last), epoch=_text(epoch) if epoch else None, entries=entries)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def group_history(redis: aioredis.Redis) -> History:
    """The broadcast group's history, with the configured bounds (read at call time)."""
    from django.conf import settings

    return History(redis, count=settings.BROADCAST_HISTORY_COUNT, age=settings.BROADCAST_HISTORY_AGE)
