"""Reach: per broadcast, how many connections it was written to and how many showed it.

`delivered` counts connections a message was written to; `seen` counts distinct connections
whose client reported it shown to a person (a `seen` frame). Each server process tallies both
in memory and its heartbeat flushes them to Redis once per BROADCAST_COUNT_INTERVAL, in one
round trip (one MULTI/EXEC): two HINCRBY and one EXPIRE per broadcast that changed, however
many acks came in. 10,000 tabs acknowledging one message cost a few commands per second, not 10,000.

Keys (built only in `_key`):
    broadcaster:reach:<message id>   hash: delivered, seen (kept REACH_TTL after the last change)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from broadcaster import metrics, protocol
from broadcaster.history.entry import Entry

if TYPE_CHECKING:
    from broadcaster.models import BroadcastRecord

logger = logging.getLogger(__name__)

# Reports are kept this long after their last change (seconds).
REACH_TTL = 7 * 24 * 3600
# How many of the newest broadcasts a process knows by id (and takes `seen` frames for), at
# least: as many as history keeps, so a client's acks of a whole catch-up count.
REMEMBER = 1024


def _key(id: str) -> str:
    return f"broadcaster:reach:{id}"


@dataclass(frozen=True)
class Reach:
    """A broadcast's reach so far, on every server process (as of their last flush)."""

    delivered: int
    seen: int


class ReachTally:
    """One process's counts since its last flush, and the broadcasts it knows by id."""

    def __init__(self) -> None:
        # id -> (epoch, seq, audience) of each message this process wrote out, newest last, at
        # most `remember`.
        self.known: dict[str, tuple[str, int, tuple[str, ...]]] = {}
        self.remember = max(REMEMBER, int(settings.BROADCAST_HISTORY_COUNT))
        self._delivered: dict[str, int] = {}
        self._seen: dict[str, int] = {}

    def delivered(self, entries: Iterable[Entry], connections: int) -> None:
        """`entries` were written to `connections` more connections (retractions not counted)."""
        if connections <= 0:
            return
        for entry in entries:
            if entry.kind != protocol.FRAME_MESSAGE:
                continue
            id = entry.id
            self._delivered[id] = self._delivered.get(id, 0) + connections
            if id not in self.known:
                self.known[id] = (entry.epoch, entry.seq, entry.audience)
                if len(self.known) > self.remember:
                    del self.known[next(iter(self.known))]

    def seen(self, id: str) -> None:
        """One more connection showed message `id` (the consumer checked it counts)."""
        self._seen[id] = self._seen.get(id, 0) + 1
        metrics.tally.seen_counted += 1

    def pending(self) -> bool:
        return bool(self._delivered or self._seen)

    async def flush(self, redis: aioredis.Redis) -> None:
        """Add what was counted since the last flush to Redis, in one round trip. If Redis
        fails, the counts are kept for the next flush (and the error raised)."""
        if not self.pending():
            return
        delivered, self._delivered = self._delivered, {}
        seen, self._seen = self._seen, {}
        # MULTI/EXEC: all of it is added or none (a failed flush is retried whole next beat).
        pipe = redis.pipeline(transaction=True)
        commands = 0
        for id in delivered.keys() | seen.keys():
            key = _key(id)
            if id in delivered:
                pipe.hincrby(key, "delivered", delivered[id])
            if id in seen:
                pipe.hincrby(key, "seen", seen[id])
            pipe.expire(key, REACH_TTL)
            commands += 1 + (id in delivered) + (id in seen)
        try:
            await pipe.execute()
        except (RedisError, OSError):
            for id, n in delivered.items():
                self._delivered[id] = self._delivered.get(id, 0) + n
            for id, n in seen.items():
                self._seen[id] = self._seen.get(id, 0) + n
            raise
        metrics.REACH_COMMANDS.inc(commands)


def report(record: BroadcastRecord, reached: Reach | None) -> dict[str, object]:
    """A broadcast from the log with its reach, as the API and the operator page show it
    (delivered and seen None when its reach is not known)."""
    return {
        "id": record.message_id,
        "seq": record.seq,
        "time": protocol.iso_time(record.created),
        "sender": record.sender,
        "text": record.text,
        "level": record.level,
        "audience": list(record.audiences),
        "expires": None if record.expires is None else protocol.iso_time(record.expires),
        "retracted": None if record.retracted is None else protocol.iso_time(record.retracted),
        "retracted_by": record.retracted_by or None,
        "clients": record.clients,
        "delivered": None if reached is None else reached.delivered,
        "seen": None if reached is None else reached.seen,
    }


async def read(redis: aioredis.Redis, ids: list[str]) -> dict[str, Reach]:
    """The reach of each broadcast in `ids`, all in one round trip (0 and 0 when none is known)."""
    if not ids:
        return {}
    pipe = redis.pipeline(transaction=False)
    for id in ids:
        pipe.hmget(_key(id), "delivered", "seen")
    answers = await pipe.execute()
    return {
        id: Reach(delivered=int(d or 0), seen=int(s or 0)) for id, (d, s) in zip(ids, answers, strict=True)
    }
