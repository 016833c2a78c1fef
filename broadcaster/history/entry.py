"""The value types of the kept history: a kept broadcast (`Entry`) and what the history holds
after a point (`Since`). No I/O: the sequencer, the hub, resume and reach all read them."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from broadcaster import protocol

__all__ = ["Entry", "Since"]


@dataclass(frozen=True)
class Entry:
    """One kept broadcast: its number, the numbering's epoch, the frame clients receive."""

    seq: int
    epoch: str
    frame: str

    @functools.cached_property
    def wire(self) -> str:
        """The frame as receivers get it (without its audience: protocol.wire_frame)."""
        return protocol.wire_frame(self.frame)

    @functools.cached_property
    def audience(self) -> tuple[str, ...]:
        """Who it is for (protocol.AUDIENCE_EVERYONE, or the audiences it names)."""
        return protocol.frame_audience(self.frame)

    @functools.cached_property
    def size(self) -> int:
        """The frame's size in bytes as sent (UTF-8), computed once per entry."""
        return len(self.wire.encode())

    @functools.cached_property
    def kind(self) -> str:
        """`message`, or `retract` (a numbered frame that takes back message `id`)."""
        return protocol.frame_type(self.frame)

    @functools.cached_property
    def id(self) -> str:
        """The message's id (for a retraction: the id of the message it takes back)."""
        return protocol.entry_id(self.frame)

    @functools.cached_property
    def expires(self) -> float | None:
        """When the message expires (UNIX time), or None if it does not."""
        if '"expires":' not in self.frame:
            return None
        return protocol.parse_time(json.loads(self.frame).get("expires"))


@dataclass(frozen=True)
class Since:
    """What the history holds after a point: the newest seq, the epoch, the kept entries
    (the first page of them when `more`)."""

    last: int
    epoch: str | None
    entries: list[Entry]
    more: bool = False
