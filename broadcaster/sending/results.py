"""What a send or a retraction returns (`broadcaster.send()`, `broadcaster.retract()`, the
publish path and the idempotency replay): value types, with no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broadcaster import protocol
from broadcaster.models import BroadcastRecord

__all__ = ["Retracted", "Sent"]


@dataclass(frozen=True)
class Sent:
    """A broadcast: its id, and once it went out its number and the count of its audience's
    receivers then (`pending`: its row is written, it goes out after the caller's transaction
    commits, or when Redis is back). `time` is when it was sent (the sender's call)."""

    id: str
    text: str
    time: str
    level: str = protocol.LEVEL_INFO
    expires: str | None = None
    audience: tuple[str, ...] = protocol.AUDIENCE_EVERYONE
    seq: int | None = None
    clients: int | None = None
    pending: bool = False
    epoch: str | None = None  # the numbering seq belongs to, when this call sent it

    @classmethod
    def of(cls, record: BroadcastRecord) -> Sent:
        """What the log's row says of its broadcast."""
        return cls(id=record.message_id, text=record.text, time=protocol.iso_time(record.created),
                   level=record.level, expires=protocol.iso_time(record.expires) if record.expires else None,
                   audience=record.audiences, seq=record.seq, clients=record.clients,
                   pending=record.status == BroadcastRecord.PENDING)  # fmt: skip

    def answer(self) -> dict[str, Any]:
        """The HTTP API's answer body (docs/API.md)."""
        return {"id": self.id, "seq": self.seq, "time": self.time, "clients": self.clients,
                "level": self.level, "expires": self.expires, "audience": list(self.audience)}  # fmt: skip


@dataclass(frozen=True)
class Retracted:
    """A retraction: the message it took back, the retraction's own number (0 when the
    message was retracted already and nothing new was sent), who took it back and when."""

    id: str
    seq: int
    by: str
    time: str
