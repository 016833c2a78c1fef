"""Idempotency keys: the same key from the same sender, within 24 hours, is one broadcast.

A key lives on the broadcast's own row, unique within its scope (a publish token's, or code's):
the database decides which of two requests with one key is first, on any server process, Redis
up or down or failing over. A later request with the key gets the first one's answer (waiting
for it while the first is still being sent), never a second broadcast; with another body, an
IdempotencyConflict. A first request that sent nothing (Redis unreachable: 503) frees its key,
so a retry sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError
from django.db.models import QuerySet
from django.utils import timezone

from broadcaster.models import BroadcastRecord
from broadcaster.sending.errors import (
    BrokerUnavailable,
    IdempotencyConflict,
    InvalidOptions,
    LogUnavailable,
    StillInProgress,
)
from broadcaster.sending.results import Sent

# How long a key holds (Stripe and Centrifugo keep theirs as long).
WINDOW = timedelta(hours=24)
MAX_LENGTH = 255
# How long a request waits for the answer of a first one still being sent, polling its row.
WAIT = 10.0
POLL = 0.05

CONFLICT = ("This idempotency key was used for a different broadcast in the last 24 hours: nothing "
            "was sent. Use a new key for a new broadcast.")  # fmt: skip


def checked_key(key: object) -> str:
    """An idempotency key as given (1 to 255 printable ASCII characters), or InvalidOptions."""
    if (
        not isinstance(key, str)
        or not key
        or len(key) > MAX_LENGTH
        or not key.isascii()
        or not key.isprintable()
    ):
        raise InvalidOptions(f"An idempotency key is 1 to {MAX_LENGTH} printable ASCII characters.")
    return key


@dataclass(frozen=True)
class Idempotency:
    """A send's key, in its scope, with what it asks for (`fingerprint`)."""

    scope: str
    key: str
    fingerprint: str

    @classmethod
    def of(cls, scope: str, key: object, *, text: str, level: str, expires_in: float | None,
           audience: tuple[str, ...]) -> Idempotency:  # fmt: skip
        """For a checked broadcast (its fields as `publish` takes them)."""
        body = json.dumps([text, level, expires_in, list(audience)], ensure_ascii=False)
        return cls(scope=scope, key=checked_key(key), fingerprint=hashlib.sha256(body.encode()).hexdigest())

    def rows(self) -> QuerySet[BroadcastRecord]:
        """The row holding this key (one at most)."""
        return BroadcastRecord.objects.filter(idempotency_scope=self.scope, idempotency_key=self.key)

    def stale(self, earlier: BroadcastRecord) -> bool:
        """Whether the key's window has passed for the row holding it (the key is free)."""
        return earlier.created < timezone.now() - WINDOW

    def same_request(self, earlier: BroadcastRecord) -> None:
        """IdempotencyConflict unless `earlier` was sent for what this send asks."""
        if earlier.request_hash != self.fingerprint:
            raise IdempotencyConflict(CONFLICT)

    async def find(self) -> BroadcastRecord | None:
        """The broadcast this key was given to within its window, if any; a key older than
        that is freed (its broadcast keeps its row, and the key goes to the new one)."""
        try:
            earlier = await self.rows().afirst()
            if earlier is not None and self.stale(earlier):
                await BroadcastRecord.objects.filter(pk=earlier.pk).aupdate(idempotency_key=None)
                return None
        except DatabaseError as exc:
            raise LogUnavailable("The broadcast log cannot be read to check the idempotency key: "
                                 "nothing was sent. Try again in a moment.") from exc  # fmt: skip
        return earlier

    async def taken(self) -> BroadcastRecord:
        """The row that holds the key, after an insert found it held."""
        earlier = await self.find()
        if earlier is None:  # freed meanwhile (it was old, or its send failed): a retry sends
            raise StillInProgress("Another request with this idempotency key was being sent; try again.")
        return earlier

    async def replay(self, earlier: BroadcastRecord, *, wait: float = WAIT) -> Sent:
        """The first answer for this key: what became of the broadcast `earlier`, once it is
        decided (waiting up to `wait` seconds for a first request still sending it; with no
        wait, a pending broadcast's answer is that it is pending)."""
        self.same_request(earlier)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while wait and earlier.status == BroadcastRecord.PENDING:
            if loop.time() > deadline:
                raise StillInProgress("A request with this idempotency key is still being sent; "
                                      "retry in a moment for its answer.")  # fmt: skip
            await asyncio.sleep(POLL)
            try:
                await earlier.arefresh_from_db()
            except BroadcastRecord.DoesNotExist:  # the first was turned away (the rate limit)
                raise StillInProgress("The first request with this idempotency key was refused; "
                                      "try again.") from None  # fmt: skip
        if earlier.status == BroadcastRecord.FAILED:
            raise BrokerUnavailable(earlier.error or "It was not sent.")
        return Sent.of(earlier)
