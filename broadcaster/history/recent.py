"""The newest broadcasts a server process has delivered, kept in its memory.

A connecting client is owed the newest message (a new client) or what it missed (`?since=`).
Reading that from Redis costs a round trip per connect: in a reconnect storm of thousands of
tabs, those reads queue up, and every client holds back live messages until its own read is
done. While the hub is in step with history (broadcaster/fanout/hub.py decides), the answer comes
from here instead; when memory cannot tell (not in step, a gap older than what is kept here,
another numbering), its source answers None and the same rule (resume.backlog) asks Redis.

Answers are the ones Redis would give, with one difference in the client's favour: if this
process is a message behind Redis (one in flight), a resuming client may be sent a message
Redis has just trimmed, where Redis would have said `reset`.
"""

from __future__ import annotations

import json
import time
from collections import deque

from django.conf import settings

from broadcaster import protocol
from broadcaster.history import current
from broadcaster.history.entry import Entry, Since

# At most this many messages (and never more than BROADCAST_HISTORY_COUNT).
KEEP = 256


def _published(entry: Entry) -> float:
    """When `entry` was published (its frame's `time`), in seconds since the epoch."""
    published = protocol.parse_time(json.loads(entry.frame).get("time"))
    return time.time() if published is None else published


class RecentBroadcasts:
    """Entries with consecutive seqs in one epoch, oldest first, with their publish times."""

    def __init__(self) -> None:
        self._kept: deque[tuple[Entry, float]] = deque()

    def clear(self) -> None:
        self._kept.clear()

    def remember(self, entry: Entry) -> None:
        """Called for each entry the hub sends out, in seq order."""
        if self._kept:
            newest = self._kept[-1][0]
            if newest.epoch != entry.epoch or newest.seq != entry.seq - 1:
                self._kept.clear()  # not consecutive: start again from here
        self._kept.append((entry, _published(entry)))
        while len(self._kept) > min(KEEP, settings.BROADCAST_HISTORY_COUNT):
            self._kept.popleft()

    def source(self, *, epoch: str | None, last: int) -> MemorySource:
        """These entries as a backlog source (broadcaster/history/resume.py), given that history's
        newest is `last` in `epoch` (the hub checked that this process is in step)."""
        return MemorySource(self._kept, epoch=epoch, last=last)


class MemorySource:
    """Answers as history in Redis would, from memory, or None when memory cannot tell."""

    __slots__ = ("epoch", "kept", "last")

    def __init__(self, kept: deque[tuple[Entry, float]], *, epoch: str | None, last: int) -> None:
        # Memory that is not at history's newest cannot tell anything.
        self.kept = kept if not kept or (kept[-1][0].seq, kept[-1][0].epoch) == (last, epoch) else None
        self.epoch, self.last = epoch, last

    async def newest(self, *, max_age: float, member_of: frozenset[str] = protocol.ANONYMOUS) -> Since | None:
        if self.kept is None:
            return None
        if not self.kept:
            # Nothing was ever published; else memory does not know the newest message.
            return Since(last=0, epoch=self.epoch, entries=[]) if self.last == 0 else None
        now = time.time()
        owed = current.announcement((entry for entry, _ in reversed(self.kept)), now=now, member_of=member_of)
        if owed is None:
            return None  # no message for it in memory: the one before is older than memory
        if not owed or now - self._published(owed[0]) > max_age:
            return Since(last=self.last, epoch=self.epoch, entries=[])
        return Since(last=self.last, epoch=self.epoch, entries=owed)

    def _published(self, entry: Entry) -> float:
        """When `entry` (one of the newest LOOK_BACK kept here) was published."""
        assert self.kept is not None
        for kept, published in reversed(self.kept):
            if kept is entry:
                return published
        raise AssertionError("the announcement is not in memory")

    async def since(self, seq: int, *, max_bytes: int) -> Since | None:
        if self.kept is None or self.epoch is None:
            return None
        if seq >= self.last:
            return Since(last=self.last, epoch=self.epoch, entries=[])
        kept = self.kept
        if not kept or kept[0][0].seq > seq + 1:
            return None  # it missed more than memory holds
        missed = [(entry, published) for entry, published in kept if entry.seq > seq]
        if time.time() - missed[0][1] > settings.BROADCAST_HISTORY_AGE:
            return None
        page, size = [], 0
        for entry, _ in missed:
            size += entry.size
            if page and size > max_bytes:
                break
            page.append(entry)
        return Since(last=self.last, epoch=self.epoch, entries=page, more=len(page) < len(missed))
