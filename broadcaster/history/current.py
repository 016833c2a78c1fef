"""Which kept broadcast is the current announcement: what a new client is sent first.

The newest message, unless a later retraction takes it back or it has expired: then there is
none (an older message does not come back), which is what a connected tab shows too when the
newest is retracted or expires. One rule for both sources of a backlog, history in Redis
(history/kept.py) and a server process's memory (history/recent.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from broadcaster import protocol
from broadcaster.history.entry import Entry

# At most this many of the newest entries are looked at (retractions after the newest message
# included); more retractions in a row than that mean no current announcement.
LOOK_BACK = 64


def announcement(newest_first: Iterable[Entry], *, now: float,
                 member_of: frozenset[str] = protocol.ANONYMOUS) -> list[Entry] | None:  # fmt: skip
    """What a new client is sent, oldest first, from the newest entries given newest first:
    the current announcement and every entry after it (retractions of older messages), so the
    client's numbering has no hole; [] if there is no current announcement; None if the entries
    given hold no message at all (they do not reach back far enough to tell). `now`: UNIX time.

    Only entries for a receiver with memberships `member_of` count (broadcaster/audiences.py):
    for it, the others do not exist (its numbering has holes there, which is not loss)."""
    retracted: set[str] = set()
    later: list[Entry] = []
    for looked, entry in enumerate(newest_first):
        if looked >= LOOK_BACK:
            return []
        if not protocol.for_member(entry.audience, member_of):
            continue
        if entry.kind == protocol.FRAME_RETRACT:
            retracted.add(entry.id)
            later.append(entry)
            continue
        if entry.id in retracted or (entry.expires is not None and entry.expires <= now):
            return []
        return [entry, *reversed(later)]
    return None
