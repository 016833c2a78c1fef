"""The one publish path: every sender (console, operator page, API) goes through here.

This is the only module that calls `group_send`.
"""

from __future__ import annotations

import logging
import time as clock
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, models
from redis.exceptions import RedisError

from broadcaster import audiences, protocol
from broadcaster.backend import redis_client
from broadcaster.history.kept import Entry, group_history
from broadcaster.log_throttle import Throttle
from broadcaster.models import BroadcastRecord
from broadcaster.presence import group_presence

logger = logging.getLogger(__name__)


# What a sender is told when Redis cannot be reached.
UNREACHABLE = "Cannot reach Redis: nothing was sent. Try again in a moment."
# ... and when fewer than BROADCAST_MIN_REPLICAS replicas took a copy in time: a failover now
# could lose it, so it is not acknowledged (and not sent live); the master may still hand it
# to receivers from history, so a resend can arrive twice.
NOT_REPLICATED = ("Not confirmed: Redis did not copy it to enough replicas in time. It was not "
                  "sent; try again in a moment (it may still appear once Redis catches up).")  # fmt: skip
# How long a broadcast waits for its replicas.
REPLICA_WAIT = 1.0
# Fewer replicas connected than BROADCAST_MIN_REPLICAS is logged at most once a minute.
_few_replicas = Throttle(every=60.0)


class PublishError(Exception):
    """A message was not published; the text says why, for the sender."""


class EmptyMessage(PublishError):
    """The message has no visible text."""


class InvalidText(PublishError):
    """The message is not valid Unicode text (a lone surrogate, or bytes that were not UTF-8)."""


class MessageTooLong(PublishError):
    """The message is longer than BROADCAST_MAX_LENGTH."""


class BrokerUnavailable(PublishError):
    """Redis could not be reached; nothing was sent."""


class InvalidOptions(PublishError):
    """The level or the expiry is not one a broadcast can have."""


class UnknownBroadcast(PublishError):
    """No broadcast that went out has this id (retraction)."""


class InvalidAudience(PublishError):
    """The audience is malformed, or names a user, group or permission that does not exist."""


class CheckedAudience(tuple[str, ...]):
    """An audience `check_audience` accepted: `publish` takes it as it is (a console sending
    many lines, or a path that checked before its rate limit, reads the database once)."""


async def check_audience(audience: object) -> tuple[str, ...]:
    """The audience every sending path accepts, in its one written form, or InvalidAudience
    saying what is wrong (a database read unless it is everyone or was checked already)."""
    if isinstance(audience, CheckedAudience) or audience is audiences.EVERYONE_ONLY:
        return audience
    try:
        parsed = audiences.parse(audience)
        if parsed is audiences.EVERYONE_ONLY:
            return parsed
        return CheckedAudience(await database_sync_to_async(audiences.check)(parsed))
    except audiences.InvalidAudience as exc:
        raise InvalidAudience(str(exc)) from None


# The longest expiry a broadcast may have, in seconds (30 days).
MAX_EXPIRES_IN = 30 * 24 * 3600


@dataclass(frozen=True)
class Published:
    """A message that went out: its number, id and time as the receivers see them."""

    seq: int
    epoch: str
    id: str
    text: str
    time: str
    clients: int
    level: str = protocol.LEVEL_INFO
    expires: str | None = None
    audience: tuple[str, ...] = protocol.AUDIENCE_EVERYONE


@dataclass(frozen=True)
class Retracted:
    """A retraction: the message it took back, the retraction's own number (0 when the
    message was retracted already and nothing new was sent), who took it back and when."""

    id: str
    seq: int
    by: str
    time: str


def validate(text: str) -> str:
    """Return `text` if any sending path may publish it, else raise a PublishError."""
    if not text.strip():
        raise EmptyMessage("The message is empty.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidText(f"The message is not valid UTF-8 text (at character {exc.start + 1}).") from None
    limit: int = settings.BROADCAST_MAX_LENGTH
    if len(text) > limit:
        raise MessageTooLong(
            f"The message is {len(text)} characters long; the limit is {limit} (BROADCAST_MAX_LENGTH)."
        )
    return text


def validate_options(*, level: object, expires_in: object) -> tuple[str, float | None]:
    """The level and expiry every sending path accepts, or InvalidOptions saying what is wrong."""
    if level not in protocol.LEVELS:
        raise InvalidOptions(f"The level must be one of {', '.join(protocol.LEVELS)}; got {level!r}.")
    if expires_in is None:
        return str(level), None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not expires_in > 0:
        raise InvalidOptions(f"expires_in must be a number of seconds above 0; got {expires_in!r}.")
    if expires_in > MAX_EXPIRES_IN:
        raise InvalidOptions(f"expires_in may be at most {MAX_EXPIRES_IN} seconds (30 days).")
    return str(level), float(expires_in)


async def publish(*, text: str, sender: str, level: str = protocol.LEVEL_INFO,
                  expires_in: float | None = None, audience: object = None) -> Published:  # fmt: skip
    """Send `text` to every connected receiver of `audience` (everyone when None; a string or
    a list: broadcaster/audiences.py), on every server process.

    Two steps, in this order: number and keep it (one atomic Lua script), then send it live.
    A publisher that dies between them leaves a kept message that was never live: server
    processes notice the gap in the numbers and fill it from history (broadcaster/fanout/hub.py).
    The frame is encoded here, once; server processes pass it through unchanged.
    """
    validate(text)
    level, expires_in = validate_options(level=level, expires_in=expires_in)
    to = await check_audience(audience)
    id = uuid.uuid4().hex
    now = datetime.now(UTC)
    until = now + timedelta(seconds=expires_in) if expires_in is not None else None
    time, expires = protocol.iso_time(now), protocol.iso_time(until) if until is not None else None
    template = protocol.message_frame(seq=0, epoch="", id=id, text=text, time=time, level=level,
                                      expires=expires, audience=to)  # fmt: skip
    failed = {"sender": sender, "text": text, "level": level, "message_id": id, "audience": list(to)}
    entry, clients = await _number_and_send(template=template, key=id, sender=sender, failed=failed,
                                            audience=to)  # fmt: skip
    logger.info("Broadcast %s (seq %d) from %s to %s: %d characters", id, entry.seq, sender, ", ".join(to),
                len(text))  # fmt: skip
    await _record(sender=sender, text=text, status=BroadcastRecord.SENT, clients=clients, seq=entry.seq,
                  message_id=id, level=level, created=now, expires=until, audience=list(to))  # fmt: skip
    return Published(seq=entry.seq, epoch=entry.epoch, id=id, text=text, time=time, clients=clients,
                     level=level, expires=expires, audience=to)  # fmt: skip


async def retract(*, id: str, sender: str) -> Retracted:
    """Take back broadcast `id`: every receiver is sent a numbered `retract` frame (kept in
    history, so resuming clients learn it), and it is never again a new client's current
    announcement. Retracting one that was retracted already sends nothing new."""
    record = await retractable_record(id)
    if record is None:
        raise UnknownBroadcast(f"No broadcast with id {id!r} went out.")
    if record.retracted is not None:
        return Retracted(id=id, seq=0, by=record.retracted_by, time=protocol.iso_time(record.retracted))
    now = datetime.now(UTC)
    template = protocol.retract_frame(seq=0, epoch="", id=id, time=protocol.iso_time(now),
                                      audience=record.audiences)  # fmt: skip
    # Idempotent by key: two retractions at once get the same number, and one frame goes out.
    entry, _ = await _number_and_send(template=template, key=f"retract:{id}", sender=sender, failed=None,
                                      audience=record.audiences)  # fmt: skip
    try:
        claimed = await BroadcastRecord.objects.filter(pk=record.pk, retracted__isnull=True).aupdate(
            retracted=now, retracted_by=sender
        )
    except DatabaseError as exc:
        logger.error("Retraction of %s by %s was not recorded in the log: %s", id, sender, exc)
        claimed = 1
    if not claimed:  # another retraction of it got there first: it is the one in the log
        await record.arefresh_from_db(fields=["retracted", "retracted_by"])
        assert record.retracted is not None
        return Retracted(id=id, seq=0, by=record.retracted_by, time=protocol.iso_time(record.retracted))
    logger.info("Broadcast %s retracted by %s (seq %d)", id, sender, entry.seq)
    return Retracted(id=id, seq=entry.seq, by=sender, time=protocol.iso_time(now))


async def retractable_record(id: str) -> BroadcastRecord | None:
    """The log's record of broadcast `id` if it went out, or may have (a send refused as not
    replicated in time can still reach receivers from history): what `retract` takes back."""
    if not protocol.is_message_id(id):
        return None
    return await (
        BroadcastRecord.objects.filter(message_id=id)
        .filter(models.Q(status=BroadcastRecord.SENT) | models.Q(error=NOT_REPLICATED))
        .afirst()
    )


async def _number_and_send(*, template: str, key: str, sender: str, failed: dict[str, Any] | None,
                           audience: tuple[str, ...]) -> tuple[Entry, int]:  # fmt: skip
    """Number and keep a frame (message or retraction), then send it live; return it and the
    count of `audience`'s receivers before it. `failed`: what to log as a failed broadcast if it
    does not go out."""
    redis = redis_client.shared_client()
    try:
        clients = await group_presence(redis).audience_total(audience)
        history, replicas = group_history(redis), settings.BROADCAST_MIN_REPLICAS
        if replicas:
            entry, copies, needed = await history.append_replicated(
                template=template, key=key, replicas=replicas, wait=REPLICA_WAIT
            )
        else:
            entry, copies, needed = await history.append_frame(template=template, key=key), 0, 0
    except (RedisError, OSError) as exc:
        # Where Redis is and what it said go to the server log only; senders (API clients, the
        # page, the log in the admin) are told what failed and what to do.
        logger.warning("Broadcast from %s failed: Redis at %s unreachable: %s",
                       sender, redis_client.display_url(), exc)  # fmt: skip
        if failed is not None:
            await _record(**failed, status=BroadcastRecord.FAILED, error=UNREACHABLE)
        raise BrokerUnavailable(UNREACHABLE) from exc
    if needed < replicas and _few_replicas.due():
        logger.warning("Redis has %d replica(s) connected, fewer than BROADCAST_MIN_REPLICAS (%d): "
                       "broadcasts are acknowledged once those have them", needed, replicas)  # fmt: skip
    if copies < needed:
        logger.warning("Broadcast %s from %s (seq %d) not acknowledged: %d of %d replicas had it "
                       "after %.1f s", key, sender, entry.seq, copies, needed, REPLICA_WAIT)  # fmt: skip
        if failed is not None:
            await _record(**failed, status=BroadcastRecord.FAILED, error=NOT_REPLICATED)
        raise BrokerUnavailable(NOT_REPLICATED)
    try:
        await get_channel_layer().group_send(
            protocol.BROADCAST_GROUP,
            protocol.broadcast_event(
                frame=entry.frame, seq=entry.seq, epoch=entry.epoch, published=clock.time()
            ),
        )
    except (RedisError, OSError) as exc:
        # It is kept: server processes compare with history every second and send it then.
        logger.warning("Broadcast %s kept as seq %d but not sent live (%s); servers will catch up",
                       key, entry.seq, exc)  # fmt: skip
    return entry, clients


async def _record(**fields: Any) -> None:
    """Put a broadcast in the log. The message's fate does not depend on it: a log failure is
    an error line, not a lost or doubled broadcast."""
    try:
        await BroadcastRecord.objects.acreate(**fields)
    except DatabaseError as exc:
        logger.error("Broadcast from %s was not recorded in the log: %s", fields["sender"], exc)
