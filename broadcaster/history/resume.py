"""What a connecting receiver is owed: `?since=N&epoch=E`, or the latest message.

One rule (`backlog`), two sources: history in Redis (`History` itself), and a server
process's memory of what it delivered last (broadcaster/history/recent.py), which answers a reconnect
storm without a Redis read per client, or says it cannot tell. Kept apart from the consumer
so it can be tested without a socket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs

from django.conf import settings

from broadcaster import protocol
from broadcaster.backend import redis_client
from broadcaster.history.entry import Entry, Since
from broadcaster.history.kept import group_history

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    """Where a client says it stopped: the last seq it saw, under which epoch (if it knows)."""

    since: int
    epoch: str | None


@dataclass(frozen=True)
class Backlog:
    """What to send before going live: maybe a reset notice, then kept entries after `after`.

    With `more`, `entries` is only the first page: `next_page` reads the rest, one page at a
    time, as the client takes them (a large catch-up is never held in memory whole).
    """

    entries: list[Entry]
    epoch: str | None
    last: int
    after: int
    reset: bool = False
    more: bool = False


# A catch-up read from Redis comes in pages of about this many bytes.
PAGE_BYTES = 256 * 1024


def resume_point(query_string: bytes) -> ResumePoint | None:
    """Parse `since` (a whole number >= 0) and `epoch` from a query string; None if absent or bad."""
    query = parse_qs(query_string.decode("latin-1"))
    raw = query.get("since", [None])[0]
    if raw is None:
        return None
    try:
        since = int(raw)
    except ValueError:
        logger.warning("Ignoring since=%r: not a whole number", raw)
        return None
    if since < 0:
        return None
    return ResumePoint(since=since, epoch=query.get("epoch", [None])[0] or None)


def newest_backlog(owed: list[Entry], *, epoch: str | None, last: int) -> Backlog:
    """A new client's backlog: `owed`, the current announcement and the retractions after it
    (history/current.py; the caller checked BROADCAST_LATEST_AGE), or nothing; `last` is
    history's newest seq."""
    if not owed:
        return Backlog(entries=[], epoch=epoch, last=last, after=last)
    return Backlog(entries=owed, epoch=epoch, last=last, after=owed[0].seq - 1)


class Source(Protocol):
    """Where kept entries are read from: history in Redis, or a process's memory. A source that
    cannot tell (memory that does not reach back far enough) answers None."""

    async def newest(self, *, max_age: float, member_of: frozenset[str]) -> Since | None:
        """The current announcement for a receiver with memberships `member_of` if it is
        younger than `max_age` s, with the retractions after it (history/current.py), and
        history's newest seq."""

    async def since(self, seq: int, *, max_bytes: int) -> Since | None:
        """Kept entries after `seq`, in order, as many as fit in `max_bytes` (at least one)."""


async def backlog(point: ResumePoint | None, source: Source, *,
                  member_of: frozenset[str] = protocol.ANONYMOUS) -> Backlog | None:  # fmt: skip
    """The backlog for a client resuming at `point` (its first page), or for a new client (the
    latest message for it if younger than BROADCAST_LATEST_AGE); None if `source` cannot tell.

    A resuming client's pages hold every kept entry: what is not for it is left out where
    frames are sent (Delivery._send_entries), so its numbering moves past them."""
    if point is None:
        newest = await source.newest(max_age=settings.BROADCAST_LATEST_AGE, member_of=member_of)
        if newest is None:
            return None
        return newest_backlog(newest.entries, epoch=newest.epoch, last=newest.last)
    kept = await source.since(point.since, max_bytes=PAGE_BYTES)
    if kept is None:
        return None
    if numbering_unknown(point, epoch=kept.epoch) or point.since > kept.last:
        # The client's numbering may not be this one (Redis lost its data): all that is kept.
        everything = await source.since(0, max_bytes=PAGE_BYTES)
        if everything is None:
            return None
        return Backlog(entries=everything.entries, epoch=everything.epoch, last=everything.last, after=0,
                       reset=point.since > 0 or point.epoch is not None, more=everything.more)  # fmt: skip
    return _page(kept, after=point.since)


async def catch_up(point: ResumePoint | None, *, member_of: frozenset[str] = protocol.ANONYMOUS) -> Backlog:
    """The backlog for a client at `point`, from history in Redis (which can always tell)."""
    answer = await backlog(point, group_history(redis_client.shared_client()), member_of=member_of)
    assert answer is not None
    return answer


def _page(kept: Since, *, after: int) -> Backlog:
    """A page of kept entries after `after`, with `reset` if some after `after` are gone."""
    first = kept.entries[0].seq if kept.entries else kept.last + 1
    return Backlog(entries=kept.entries, epoch=kept.epoch, last=kept.last, after=after,
                   reset=first > after + 1, more=kept.more)  # fmt: skip


def numbering_unknown(point: ResumePoint, *, epoch: str | None) -> bool:
    """Whether `point` may belong to another numbering than `epoch`: it names another epoch,
    or none at all while saying it saw messages (so a restart cannot be ruled out)."""
    if point.epoch is None:
        return point.since > 0
    return point.epoch != epoch


async def next_page(*, after: int, epoch: str | None) -> Backlog | None:
    """The next page of a catch-up: kept entries after `after`, in order (none at the end),
    with `reset` if some after `after` are no longer kept; None when the numbering changed
    since the catch-up began (the live path sends the reset)."""
    kept = await group_history(redis_client.shared_client()).since(after, max_bytes=PAGE_BYTES)
    if kept.epoch != epoch:
        return None
    return _page(kept, after=after)
