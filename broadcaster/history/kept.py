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
    <prefix>:ids     sorted set: message id -> seq, the newest COUNT (appends are idempotent)
    <prefix>:acked   the newest acknowledged seq: readers see nothing after it (with
                     BROADCAST_MIN_REPLICAS, acknowledged once replicas have it)
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from broadcaster import protocol
from broadcaster.history import current
from broadcaster.history.entry import Entry, Since
from broadcaster.protocol import BROADCAST_GROUP

# Shared by the scripts: the time now in ms (ARGV[n] when given: tests drive the clock; else
# Redis's clock), and the numbering (the last seq readers may see, the epoch or false) from
# KEYS[1] seq, KEYS[6] acked, KEYS[2] epoch. Readers see only acknowledged broadcasts: with
# BROADCAST_MIN_REPLICAS, one is acknowledged once replicas have it, so nothing a receiver was
# ever given can be lost in a failover (and its number given again).
_NOW = """
local function now_ms(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function numbering()
  local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
  local acked = tonumber(redis.call('GET', KEYS[6]) or seq)
  return math.min(seq, acked), redis.call('GET', KEYS[2])
end
"""

# KEYS[1] seq, KEYS[2] epoch, KEYS[3] log, KEYS[4] times, KEYS[5] ids, KEYS[6] acked
# ARGV[8] "1": acknowledged now (readers see it at once); "0": once `_ACK` says so.
# ARGV[1] the frame, built by protocol.message_frame with seq 0 and epoch "", ARGV[2] max
# count, ARGV[3] max age ms, ARGV[4] an epoch to use if none is set yet, ARGV[5] the
# placeholder in ARGV[1] to replace with the real seq and epoch, ARGV[6] now ms or "",
# ARGV[7] the message id.
# Returns {seq, epoch, frame, fresh}: fresh is 1 when this call numbered it, 0 when it was known,
# 2 when its retraction is (a late send of a retracted message, the outbox's: nothing is kept).
# Idempotent by message id: the same message appended again (a client retrying after its
# connection dropped with the reply in flight, the outbox sending a row whose first send was
# not recorded) gets its first seq back, not a second one.
# Trimming removes the same seqs from `log` and `times`, found by seq or by time, never by
# rank in `times`: entries of one millisecond sort there by member as strings ("10" < "9").
_APPEND = (
    _NOW
    + """
redis.replicate_commands()
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[2], epoch)
end
local i, j = string.find(ARGV[1], ARGV[5], 1, true)
local function numbered(seq)
  return string.sub(ARGV[1], 1, i - 1) .. '"seq":' .. seq .. ',"epoch":"' .. epoch .. '"'
    .. string.sub(ARGV[1], j + 1)
end
local function acknowledge(seq)
  if tonumber(redis.call('GET', KEYS[6]) or '0') < seq then redis.call('SET', KEYS[6], seq) end
end
local known = redis.call('ZSCORE', KEYS[5], ARGV[7])
if known then
  if ARGV[8] == '1' then acknowledge(tonumber(known)) end
  return {tonumber(known), epoch, numbered(tonumber(known)), 0}
end
if redis.call('ZSCORE', KEYS[5], 'retract:' .. ARGV[7]) then
  return {0, epoch, '', 2}
end
local seq = redis.call('INCR', KEYS[1])
if ARGV[8] == '1' then
  acknowledge(seq)
elseif not redis.call('GET', KEYS[6]) then
  redis.call('SET', KEYS[6], seq - 1)
end
local now = now_ms(ARGV[6])
local frame = numbered(seq)
redis.call('ZADD', KEYS[3], seq, frame)
redis.call('ZADD', KEYS[4], now, seq)
redis.call('ZADD', KEYS[5], seq, ARGV[7])
redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -(tonumber(ARGV[2]) + 1))
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[2])
if excess > 0 then
  local gone = redis.call('ZRANGE', KEYS[3], 0, excess - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
  for k = 2, #gone, 2 do redis.call('ZREM', KEYS[4], gone[k]) end
end
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[3]))
for _, s in ipairs(old) do
  redis.call('ZREMRANGEBYSCORE', KEYS[3], s, s)
  redis.call('ZREM', KEYS[4], s)
end
return {seq, epoch, frame, 1}
"""
)

# KEYS[1] seq, KEYS[2] epoch, KEYS[3] log, KEYS[4] times, KEYS[6] acked
# ARGV[1] after seq, ARGV[2] max age ms, ARGV[3] max bytes (at least one entry is returned),
# ARGV[4] now ms or "".
# Returns {last seq, epoch or false, more (1 if kept entries follow the page), then seq and
# frame of each kept entry with seq > ARGV[1] not older than ARGV[2]}. Reads the log in
# slices, so a small page of a large history costs little.
_SINCE = (
    _NOW
    + """
local now = now_ms(ARGV[4])
local last, epoch = numbering()
local result = {last, epoch, 0}
local young = {}
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], now - tonumber(ARGV[2]), '+inf')) do
  young[s] = true
end
local budget = tonumber(ARGV[3])
local offset = 0
while true do
  local slice = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], last, 'WITHSCORES',
    'LIMIT', offset, 32)
  if #slice == 0 then return result end
  for k = 1, #slice, 2 do
    local frame, s = slice[k], slice[k + 1]
    if young[s] then
      if #result > 3 and budget < string.len(frame) then
        result[3] = 1
        return result
      end
      budget = budget - string.len(frame)
      table.insert(result, s)
      table.insert(result, frame)
    end
  end
  offset = offset + 32
end
"""
)

# KEYS[1] seq, KEYS[2] epoch, KEYS[3] log, KEYS[4] times, KEYS[6] acked; ARGV[1] now ms or "",
# ARGV[2] the most entries to look at.
# Returns {last seq, epoch or false, now ms, then seq, frame and publish time (ms) of the newest
# kept entries, newest first, down to the newest message for everyone (one without an audience
# field: protocol.message_frame)}: what a new client's backlog is chosen from
# (history/current.py, for the receiver's memberships), without reading the rest.
_NEWEST = (
    _NOW
    + """
local now = now_ms(ARGV[1])
local last, epoch = numbering()
local result = {last, epoch, now}
local offset = 0
while offset < tonumber(ARGV[2]) do
  local slice = redis.call('ZREVRANGEBYSCORE', KEYS[3], last, '-inf', 'WITHSCORES', 'LIMIT', offset, 16)
  if #slice == 0 then return result end
  for k = 1, #slice, 2 do
    table.insert(result, slice[k + 1])
    table.insert(result, slice[k])
    table.insert(result, redis.call('ZSCORE', KEYS[4], slice[k + 1]) or '0')
    if string.sub(slice[k], 1, 17) == '{"type":"message"'
        and not string.find(slice[k], ',"audience":', 1, true) then
      return result
    end
  end
  offset = offset + 16
end
return result
"""
)


# After a failover that lost broadcasts some server already delivered (never acknowledged: see
# BROADCAST_MIN_REPLICAS), numbering continues after what was delivered, not from the new
# master's lower count, so no number means two messages. ARGV: epoch, floor. Returns 1 if raised.
_RAISE_FLOOR = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local floor = tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[6]) or '0') < floor then redis.call('SET', KEYS[6], floor) end
if tonumber(redis.call('GET', KEYS[1]) or '0') >= floor then return 0 end
redis.call('SET', KEYS[1], floor)
return 1
"""


# Acknowledges a broadcast appended with ARGV[8] "0" (and all before it). ARGV[1] seq.
_ACK = """
if tonumber(redis.call('GET', KEYS[6]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[6], ARGV[1])
end
return 1
"""


def _keys(group: str) -> list[str]:
    prefix = f"broadcaster:history:{group}"
    return [f"{prefix}:seq", f"{prefix}:epoch", f"{prefix}:log", f"{prefix}:times", f"{prefix}:ids",
            f"{prefix}:acked"]  # fmt: skip


class Appended(NamedTuple):
    """A frame appended: its kept entry, and whether this append numbered it (False: the key
    was known, and it had been numbered, kept and sent before)."""

    entry: Entry
    fresh: bool
    retracted: bool = False  # its retraction is kept: it was not appended


# No page is larger than this unless its one entry is.
UNLIMITED = 1 << 62


class History:
    """The numbered, bounded history of one group.

    `clock`, when given, is the time in ms the scripts use instead of Redis's (tests).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        count: int,
        age: float,
        group: str = BROADCAST_GROUP,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._redis = redis
        self._count = count
        self._age_ms = int(age * 1000)
        self._keys = _keys(group)
        self._clock = clock
        self._append: Any = redis.register_script(_APPEND)
        self._since: Any = redis.register_script(_SINCE)
        self._newest: Any = redis.register_script(_NEWEST)
        self._raise_floor: Any = redis.register_script(_RAISE_FLOOR)
        self._ack: Any = redis.register_script(_ACK)

    def _now(self) -> str:
        return "" if self._clock is None else str(self._clock())

    async def append(self, *, id: str, text: str, time: str, level: str = protocol.LEVEL_INFO,
                     expires: str | None = None) -> Entry:  # fmt: skip
        """Number and keep a message; return it with its seq, epoch and final frame."""
        template = protocol.message_frame(seq=0, epoch="", id=id, text=text, time=time, level=level,
                                          expires=expires)  # fmt: skip
        return (await self.append_frame(template=template, key=id)).entry

    async def append_frame(self, *, template: str, key: str) -> Appended:
        """Number and keep a frame built with seq 0 and epoch "" (protocol.message_frame or
        retract_frame); `key` makes it idempotent (the same key again gets its first seq back,
        and `fresh` False)."""
        args = [*self._append_args(template, key), "1"]
        seq, epoch, frame, fresh = await self._append(keys=self._keys, args=args)
        return Appended(Entry(seq=int(seq), epoch=_text(epoch), frame=_text(frame)), int(fresh) == 1,
                        int(fresh) == 2)  # fmt: skip

    async def append_replicated(self, *, template: str, key: str, replicas: int, wait: float
                                ) -> tuple[Appended, int, int]:  # fmt: skip
        """`append_frame()`, then wait up to `wait` seconds until `replicas` replicas have it,
        or all of them if fewer are connected. Return it, how many replicas have it and how many
        were waited for. (Redis WAIT counts the writes of its own connection: all of this runs
        on one connection.)"""
        async with self._redis.client() as conn:
            args = [*self._append_args(template, key), "0"]
            seq, epoch, frame, fresh = await self._append(keys=self._keys, args=args, client=conn)
            # The replicas of the server that took the write (after a failover, the new master).
            role = await conn.execute_command("ROLE")
            connected = len(role[2]) if _text(role[0]) == "master" else 0
            needed = min(replicas, connected)
            copies = int(await conn.execute_command("WAIT", needed, int(wait * 1000))) if needed else 0
            if copies >= needed:
                # Only now may readers (servers, resuming clients) see it, and those before it.
                await self._ack(keys=self._keys, args=[int(seq)], client=conn)
        entry = Entry(seq=int(seq), epoch=_text(epoch), frame=_text(frame))
        return Appended(entry, int(fresh) == 1, int(fresh) == 2), copies, needed

    async def raise_floor(self, *, epoch: str, floor: int) -> bool:
        """Make the next seq of `epoch` at least `floor` + 1; True if it was lower."""
        return bool(await self._raise_floor(keys=self._keys, args=[epoch, floor]))

    def _append_args(self, template: str, key: str) -> list[Any]:
        return [template, self._count, self._age_ms, secrets.token_hex(4), protocol.SEQ_PLACEHOLDER,
                self._now(), key]  # fmt: skip

    async def since(self, seq: int, *, max_age: float | None = None, max_bytes: int = UNLIMITED) -> Since:
        """Kept entries with a seq above `seq` (and younger than `max_age` s), in order: all of
        them, or as many as fit in `max_bytes` (at least one) with `more` set if others follow."""
        age_ms = self._age_ms if max_age is None else int(max_age * 1000)
        last, epoch, more, *flat = await self._since(
            keys=self._keys, args=[seq, age_ms, max_bytes, self._now()]
        )
        numbering = _text(epoch) if epoch else None
        entries = [
            Entry(seq=int(flat[k]), epoch=numbering or "", frame=_text(flat[k + 1]))
            for k in range(0, len(flat), 2)
        ]
        return Since(last=int(last), epoch=numbering, entries=entries, more=bool(more))

    async def newest(self, *, max_age: float, member_of: frozenset[str] = protocol.ANONYMOUS) -> Since:
        """The current announcement for a receiver with memberships `member_of`
        (history/current.py) if it is younger than `max_age` s, and the retractions after it:
        a new client's backlog."""
        last, epoch, now_ms, *flat = await self._newest(
            keys=self._keys, args=[self._now(), current.LOOK_BACK]
        )
        numbering = _text(epoch) if epoch else None
        newest_first: list[Entry] = []
        published: dict[int, float] = {}
        for k in range(0, len(flat), 3):
            entry = Entry(seq=int(flat[k]), epoch=numbering or "", frame=_text(flat[k + 1]))
            newest_first.append(entry)
            published[entry.seq] = float(flat[k + 2])
        now = time.time() if self._clock is None else self._clock() / 1000
        # (No message in history at all, None, is no announcement here: Redis holds everything kept.)
        owed = current.announcement(newest_first, now=now, member_of=member_of) or []
        if owed and published[owed[0].seq] < int(now_ms) - max_age * 1000:
            owed = []
        return Since(last=int(last), epoch=numbering, entries=owed)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def group_history(redis: aioredis.Redis) -> History:
    """The broadcast group's history, with the configured bounds (read at call time)."""
    from django.conf import settings

    return History(redis, count=settings.BROADCAST_HISTORY_COUNT, age=settings.BROADCAST_HISTORY_AGE)
