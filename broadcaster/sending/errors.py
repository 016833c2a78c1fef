"""What can go wrong with a broadcast: one family of exceptions, for every sending path.

`broadcaster.send()` raises them as they are; the HTTP API maps them (docs/API.md): an
`InvalidBroadcast` is a 400 (413 for `MessageTooLong`, 422 for `IdempotencyConflict`), a
`BroadcastUnavailable` a 503 (nothing was sent: try again), `UnknownBroadcast` a 404. Each
message says what was wrong and what happened, for the sender.
"""

from __future__ import annotations


class BroadcastError(Exception):
    """A broadcast (or a retraction) did not go out; the text says why."""


class InvalidBroadcast(BroadcastError):
    """What was asked cannot be sent as it is: sending it again will fail again."""


class EmptyMessage(InvalidBroadcast):
    """The message has no visible text."""


class InvalidText(InvalidBroadcast):
    """The message is not valid Unicode text (a lone surrogate, or bytes that were not UTF-8)."""


class MessageTooLong(InvalidBroadcast):
    """The message is longer than BROADCAST_MAX_LENGTH."""


class InvalidOptions(InvalidBroadcast):
    """The level, the expiry or the idempotency key is not one a broadcast can have."""


class InvalidAudience(InvalidBroadcast):
    """The audience is malformed, or names a user, group or permission that does not exist."""


class IdempotencyConflict(InvalidBroadcast):
    """The idempotency key was used, within its 24 hours, for a different broadcast."""


class BroadcastUnavailable(BroadcastError):
    """Nothing was sent, for a reason that may pass: try again in a moment."""


class BrokerUnavailable(BroadcastUnavailable):
    """Redis could not be reached (or did not copy the broadcast to enough replicas).

    `uncertain`: Redis may have taken it (no answer in time, or too few replicas): its row
    stays pending and the outbox settles it, so it may still go out, once."""

    def __init__(self, message: str, *, uncertain: bool = False) -> None:
        super().__init__(message)
        self.uncertain = uncertain


class LogUnavailable(BroadcastUnavailable):
    """The broadcast log (the database) could not be written: nothing is sent without its row."""


class StillInProgress(BroadcastUnavailable):
    """Another request with the same idempotency key is still being sent."""


class UnknownBroadcast(BroadcastError):
    """No broadcast that went out has this id (retraction)."""
