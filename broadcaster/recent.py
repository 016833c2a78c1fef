"""The newest broadcasts a server process has delivered, kept in its memory.

A connecting client is owed the newest message (a new client) or what it missed (`?since=`).
Reading that from Redis costs a round trip per connect: in a reconnect storm of thousands of
tabs, those reads queue up, and every client holds back live messages until its own read is
done. While the hub is in step with history (broadcaster/hub.py decides), the answer comes
from here instead; when memory cannot tell (not in step, a gap older than what is kept here,
another numbering), `backlog()` says None and resume.catch_up asks Redis as before.

Answers are the ones Redis would give, with one difference in the client's favour: if this
process is a message behind Redis (one in flight), a resuming client may be sent a message
Redis has just trimmed, where Redis would have said `reset`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from datetime import datetime

from django.conf import settings

from broadcaster.history import Entry
from broadcaster.resume import Backlog, ResumePoint, newest_backlog, numbering_unknown

# At most this many messages (and never more than BROADCAST_HISTORY_COUNT).
KEEP = 256


def _published(entry: Entry) -> float:
    """When `entry` was published (its frame's `time`), in seconds since the epoch."""
    try:
        return datetime.fromisoformat(json.loads(entry.frame)["time"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return time.time()


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

    def backlog(self, point: ResumePoint | None, *, epoch: str | None, last: int) -> Backlog | None:
        """What a client connecting at `point` is owed, given that history's newest is `last`
        in `epoch`; None when memory cannot tell. Same answers as resume.catch_up."""
        kept = self._kept
        if kept and (kept[-1][0].seq != last or kept[-1][0].epoch != epoch):
            return None
        now = time.time()
        if point is None:
            if not kept:
                # Nothing was ever published; else memory does not know the newest message.
                return newest_backlog(None, epoch=epoch, last=last) if last == 0 else None
            entry, published = kept[-1]
            young = now - published <= settings.BROADCAST_LATEST_AGE
            return newest_backlog(entry if young else None, epoch=epoch, last=last)
        if epoch is None or point.since > last or numbering_unknown(point, epoch=epoch):
            return None  # another numbering, or ahead of this process: Redis decides
        if point.since == last:
            return Backlog(entries=[], epoch=epoch, last=last, after=last)
        if not kept or kept[0][0].seq > point.since + 1:
            return None  # it missed more than memory holds
        missed = [(entry, published) for entry, published in kept if entry.seq > point.since]
        if now - missed[0][1] > settings.BROADCAST_HISTORY_AGE:
            return None
        return Backlog(entries=[entry for entry, _ in missed], epoch=epoch, last=last, after=point.since)
