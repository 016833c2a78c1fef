"""The one publish path: every sender (console, operator page, API, `broadcaster.send()`,
the outbox) goes through here.

A broadcast's row is written first (`pending`), then it is numbered, kept and sent, then the
row is marked `sent` (or `failed`, nothing sent). So every broadcast that went out has a row
(report, retract), and one whose row cannot be written is refused (errors.LogUnavailable).
Inside a caller's transaction (broadcaster/sending/code.py) the row is written in it and the
rest runs after commit; a committed row Redis could not take stays pending for the outbox.

This is the only module that calls `group_send`.
"""

from __future__ import annotations

import asyncio
import logging
import time as clock
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, IntegrityError, models
from django.dispatch import Signal
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from broadcaster import audiences, protocol, signals
from broadcaster.backend import redis_client
from broadcaster.history.kept import Appended, group_history
from broadcaster.log_throttle import Throttle
from broadcaster.models import BroadcastRecord
from broadcaster.presence import group_presence
from broadcaster.sending import log_health, outbox
from broadcaster.sending.errors import (
    BroadcastError,
    BroadcastUnavailable,
    BrokerUnavailable,
    EmptyMessage,
    InvalidAudience,
    InvalidOptions,
    InvalidText,
    LogUnavailable,
    MessageTooLong,
    UnknownBroadcast,
)
from broadcaster.sending.idempotency import Idempotency
from broadcaster.sending.results import Retracted, Sent
from broadcaster.sending.text import is_blank

__all__ = ["BroadcastError", "BroadcastUnavailable", "Sent", "check_audience", "publish", "retract"]

logger = logging.getLogger(__name__)


# What a sender is told when nothing of the message would show.
EMPTY = "The message is empty: nothing in it would show (only spaces or invisible characters)."
# What a sender is told when Redis cannot be reached (nothing was sent: the row is marked failed).
UNREACHABLE = "Cannot reach Redis: nothing was sent. Try again in a moment."
# ... and when fewer than BROADCAST_MIN_REPLICAS replicas took a copy in time: a failover now
# could lose it, so it is not acknowledged (and not sent live); the master may still hand it
# to receivers from history, so a resend can arrive twice.
NOT_REPLICATED = ("Not confirmed: Redis did not copy it to enough replicas in time. It was not sent "
                  "live; it may still appear once Redis catches up (its row is pending until then). "
                  "Retry with the same idempotency key to learn its fate.")  # fmt: skip
# ... and when Redis took the command and did not answer in time.
NO_ANSWER = ("Not confirmed: Redis did not answer in time. It may still go out, once: its row is "
             "pending until then. Retry with the same idempotency key to learn its fate.")  # fmt: skip
# ... and of a pending broadcast retracted before it could go out.
RETRACTED_FIRST = "Retracted before it went out: not sent."
# How long a broadcast waits for its replicas.
REPLICA_WAIT = 1.0
# Fewer replicas connected than BROADCAST_MIN_REPLICAS is logged at most once a minute.
_few_replicas = Throttle(every=60.0)


class CheckedAudience(tuple[str, ...]):
    """An audience `check_audience` accepted: `publish` takes it as it is (a console sending
    many lines, or a path that checked before its rate limit, reads the database once)."""


async def check_audience(audience: object) -> tuple[str, ...]:
    """The audience every sending path accepts, in its one written form, or InvalidAudience
    saying what is wrong (a database read unless it is everyone or was checked already)."""
    if isinstance(audience, CheckedAudience) or audience is audiences.EVERYONE_ONLY:
        return audience
    return await database_sync_to_async(checked_audience)(audience)


def checked_audience(audience: object) -> tuple[str, ...]:
    """`check_audience` for sync code (database reads)."""
    if isinstance(audience, CheckedAudience) or audience is audiences.EVERYONE_ONLY:
        return audience
    try:
        parsed = audiences.parse(audience)
        return parsed if parsed is audiences.EVERYONE_ONLY else CheckedAudience(audiences.check(parsed))
    except audiences.InvalidAudience as exc:
        raise InvalidAudience(str(exc)) from None


# The longest expiry a broadcast may have, in seconds (30 days).
MAX_EXPIRES_IN = 30 * 24 * 3600


def validate(text: object) -> str:
    """Return `text` if any sending path may publish it, else raise an InvalidBroadcast."""
    if not isinstance(text, str):
        raise InvalidText(f"The message must be a string; got {type(text).__name__}.")
    if is_blank(text):
        raise EmptyMessage(EMPTY)
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


def new_record(*, text: str, sender: str, level: str = protocol.LEVEL_INFO,
               expires_in: float | None = None, audience: tuple[str, ...],
               idempotency: Idempotency | None = None) -> BroadcastRecord:  # fmt: skip
    """The unsaved, pending row of a checked broadcast (`validate`, `validate_options`,
    `check_audience`), with its id and time."""
    now = datetime.now(UTC)
    until = now + timedelta(seconds=expires_in) if expires_in is not None else None
    record = BroadcastRecord(sender=sender, text=text, status=BroadcastRecord.PENDING, level=level,
                             message_id=uuid.uuid4().hex, created=now, expires=until,
                             audience=list(audience))  # fmt: skip
    if idempotency is not None:
        record.idempotency_scope, record.idempotency_key = idempotency.scope, idempotency.key
        record.request_hash = idempotency.fingerprint
    return record


def refused_write(exc: DatabaseError, record: BroadcastRecord) -> LogUnavailable:
    """The error a broadcast whose row could not be written is refused with (counted, logged)."""
    why = log_health.failed(exc, what=f"broadcast from {record.sender}")
    return LogUnavailable(f"The broadcast log cannot be written ({why}): nothing was sent. "
                          "Try again once the database takes writes.")  # fmt: skip


async def publish(*, text: str, sender: str, level: str = protocol.LEVEL_INFO,
                  expires_in: float | None = None, audience: object = None,
                  idempotency: Idempotency | None = None,
                  admit: Callable[[], Awaitable[None]] | None = None) -> Sent:  # fmt: skip
    """Send `text` to every connected receiver of `audience` (everyone when None; a string or
    a list: broadcaster/audiences.py), on every server process, now: its row first, then out.

    With `idempotency`: a key already used by this scope within 24 hours gives the first
    broadcast's answer (or IdempotencyConflict for another body), and sends nothing new.
    `admit` (the API's rate limit) runs once the row holds the key, so requests that only get
    the first answer again are not counted; if it raises, the row is deleted, nothing sent.
    """
    validate(text)
    level, expires_in = validate_options(level=level, expires_in=expires_in)
    to = await check_audience(audience)
    if idempotency is not None:
        earlier = await idempotency.find()
        if earlier is not None:
            return await idempotency.replay(earlier)
    record = new_record(text=text, sender=sender, level=level, expires_in=expires_in, audience=to,
                        idempotency=idempotency)  # fmt: skip
    try:
        await record.asave(force_insert=True)
    except IntegrityError:
        if idempotency is None:
            raise
        # Another request with this key got its row in first (or an old one holds the key).
        return await idempotency.replay(await idempotency.taken())
    except DatabaseError as exc:
        raise refused_write(exc, record) from exc
    log_health.succeeded()
    if admit is not None:
        try:
            await admit()
        except BaseException:
            await BroadcastRecord.objects.filter(pk=record.pk).adelete()
            raise
    # Committed broadcasts still waiting for Redis go first: broadcasts go out in order. Then
    # this one, to the end even if the request is cancelled (its client hung up): a row once
    # written is decided, here or by the outbox.
    await outbox.flush(before=record.pk)
    return await asyncio.shield(deliver(record, keep_pending=False))


async def deliver(record: BroadcastRecord, *, keep_pending: bool) -> Sent:
    """Number, keep and send a written row's broadcast, then mark its row. If Redis cannot
    take it: `keep_pending` (a committed send: the outbox tries again), or a failure that
    leaves it unknown whether Redis took it, leaves the row pending; else it is marked failed.
    BrokerUnavailable either way. Marks are decided once, by the row: only a pending row is
    marked, and the one mark that makes it sent sends `broadcast_sent`. A row sent before
    (its outcome not recorded) goes out again as the same broadcast, sending nothing twice."""
    try:
        appended, clients = await send_out(record)
    except BrokerUnavailable as exc:
        if keep_pending or exc.uncertain:
            raise
        decided = await _decide(record, status=BroadcastRecord.FAILED, error=str(exc), idempotency_key=None)
        if decided is False:  # another process sent it meanwhile (the outbox): that is its outcome
            return await _outcome(record)
        raise
    if appended.retracted:  # taken back while it waited (the outbox): it never goes out
        await _decide(record, status=BroadcastRecord.FAILED, error=RETRACTED_FIRST, idempotency_key=None)
        return Sent.of(record)
    sent = outcome(record, appended, clients)
    decided = await _decide(record, status=BroadcastRecord.SENT, clients=clients, seq=sent.seq)
    if decided:
        await _tell(signals.broadcast_sent, broadcast=sent)
    elif decided is False:
        return await _outcome(record)
    return sent


async def send_out(record: BroadcastRecord) -> tuple[Appended, int]:
    """Redis only: number, keep and send live a written row's broadcast (once: a known id is
    not sent again); with the count of its audience's receivers."""
    return await _number_and_send(template=template_of(record), key=record.message_id,
                                  sender=record.sender, audience=record.audiences)  # fmt: skip


def template_of(record: BroadcastRecord) -> str:
    """The frame of a row's broadcast, with seq 0 and epoch "" for the history to number."""
    expires = protocol.iso_time(record.expires) if record.expires is not None else None
    return protocol.message_frame(seq=0, epoch="", id=record.message_id, text=record.text,
                                  time=protocol.iso_time(record.created), level=record.level,
                                  expires=expires, audience=record.audiences)  # fmt: skip


def outcome(record: BroadcastRecord, appended: Appended, clients: int) -> Sent:
    """What the sender is told of a broadcast that went out (and logged, the first time)."""
    entry = appended.entry
    if appended.fresh:
        logger.info("Broadcast %s (seq %d) from %s to %s: %d characters", record.message_id, entry.seq,
                    record.sender, ", ".join(record.audiences), len(record.text))  # fmt: skip
    return replace(Sent.of(record), seq=entry.seq, clients=clients, pending=False, epoch=entry.epoch)


async def _decide(record: BroadcastRecord, **fields: Any) -> bool | None:
    """Record what became of a pending row's broadcast: True if this call decided it, False
    if it was decided already (by another process), None if the database refused (logged and
    counted, not raised: a sent broadcast's row stays pending, and the outbox marks it later,
    sending nothing again)."""
    try:
        changed = await BroadcastRecord.objects.filter(pk=record.pk, status=BroadcastRecord.PENDING).aupdate(
            **fields
        )
    except DatabaseError as exc:
        log_health.failed(exc, what=f"outcome of broadcast {record.message_id}")
        return None
    log_health.succeeded()
    if changed:
        for name, value in fields.items():
            setattr(record, name, value)
    return bool(changed)


async def _outcome(record: BroadcastRecord) -> Sent:
    """The outcome another process recorded for this row."""
    await record.arefresh_from_db()
    if record.status == BroadcastRecord.FAILED:
        raise BrokerUnavailable(record.error or UNREACHABLE)
    return Sent.of(record)


async def _tell(signal: Signal, **kwargs: Any) -> None:
    """Send a signal to the host's receivers; one that raises is logged, never the sender's
    problem. In a thread of their own (not thread-sensitive): a receiver may send again."""
    told = await sync_to_async(signal.send_robust, thread_sensitive=False)(sender=BroadcastRecord, **kwargs)
    for receiver, result in told:
        if isinstance(result, Exception):
            logger.error("A broadcaster.signals receiver (%s) raised", receiver, exc_info=result)


async def retract(*, id: str, sender: str) -> Retracted:
    """Take back broadcast `id`: every receiver is sent a numbered `retract` frame (kept in
    history, so resuming clients learn it), and it is never again a new client's current
    announcement. Retracting one that was retracted already sends nothing new. A pending
    broadcast (waiting for Redis) is taken back in the log alone when Redis is away: it never
    goes out."""
    record = await retractable_record(id)
    if record is None:
        raise UnknownBroadcast(f"No broadcast with id {id!r} went out.")
    if record.retracted is not None:
        return Retracted(id=id, seq=0, by=record.retracted_by, time=protocol.iso_time(record.retracted))
    now = datetime.now(UTC)
    template = protocol.retract_frame(seq=0, epoch="", id=id, time=protocol.iso_time(now),
                                      audience=record.audiences)  # fmt: skip
    # Idempotent by key: two retractions at once get the same number, and one frame goes out.
    try:
        appended, _ = await _number_and_send(template=template, key=f"retract:{id}", sender=sender,
                                             audience=record.audiences)  # fmt: skip
    except BrokerUnavailable:
        if record.status != BroadcastRecord.PENDING:
            raise
        appended = None  # never went out (the outbox skips a retracted row)
    # Taken back before it went out (Redis away): its row is decided, never to be sent.
    never_sent = {"status": BroadcastRecord.FAILED, "error": RETRACTED_FIRST} if appended is None else {}
    try:
        claimed = await BroadcastRecord.objects.filter(pk=record.pk, retracted__isnull=True).aupdate(
            retracted=now, retracted_by=sender, **never_sent
        )
    except DatabaseError as exc:
        if appended is None:
            raise refused_write(exc, record) from exc
        log_health.failed(exc, what=f"retraction of {id} by {sender}")
        claimed = 1
    if not claimed:  # another retraction of it got there first: it is the one in the log
        await record.arefresh_from_db(fields=["retracted", "retracted_by"])
        assert record.retracted is not None
        return Retracted(id=id, seq=0, by=record.retracted_by, time=protocol.iso_time(record.retracted))
    seq = appended.entry.seq if appended is not None else 0
    logger.info("Broadcast %s retracted by %s (seq %d)", id, sender, seq)
    retracted = Retracted(id=id, seq=seq, by=sender, time=protocol.iso_time(now))
    await _tell(signals.broadcast_retracted, id=id, by=sender, seq=seq)
    return retracted


async def retractable_record(id: str) -> BroadcastRecord | None:
    """The log's record of broadcast `id` if it went out, or may have, or will (a send refused
    as not replicated in time can still reach receivers from history; a pending one goes out
    when Redis is back): what `retract` takes back."""
    if not protocol.is_message_id(id):
        return None
    return await (
        BroadcastRecord.objects.filter(message_id=id)
        .filter(
            models.Q(status__in=[BroadcastRecord.SENT, BroadcastRecord.PENDING])
            | models.Q(error=NOT_REPLICATED)
        )
        .afirst()
    )


async def _number_and_send(*, template: str, key: str, sender: str, audience: tuple[str, ...]
                           ) -> tuple[Appended, int]:  # fmt: skip
    """Number and keep a frame (message or retraction), then send it live unless its key was
    known (it went out before); return it and the count of `audience`'s receivers before it."""
    redis = redis_client.shared_client()
    try:
        clients = await group_presence(redis).audience_total(audience)
        history, replicas = group_history(redis), settings.BROADCAST_MIN_REPLICAS
        if replicas:
            appended, copies, needed = await history.append_replicated(
                template=template, key=key, replicas=replicas, wait=REPLICA_WAIT
            )
        else:
            appended, copies, needed = await history.append_frame(template=template, key=key), 0, 0
    except RedisTimeout as exc:
        # Sent, and not answered: Redis may have run it.
        logger.warning("Broadcast from %s uncertain: Redis at %s did not answer in time: %s",
                       sender, redis_client.display_url(), exc)  # fmt: skip
        raise BrokerUnavailable(NO_ANSWER, uncertain=True) from exc
    except (RedisError, OSError) as exc:
        # Where Redis is and what it said go to the server log only; senders (API clients, the
        # page, the log in the admin) are told what failed and what to do.
        logger.warning("Broadcast from %s failed: Redis at %s unreachable: %s",
                       sender, redis_client.display_url(), exc)  # fmt: skip
        raise BrokerUnavailable(UNREACHABLE) from exc
    entry = appended.entry
    if needed < replicas and _few_replicas.due():
        logger.warning("Redis has %d replica(s) connected, fewer than BROADCAST_MIN_REPLICAS (%d): "
                       "broadcasts are acknowledged once those have them", needed, replicas)  # fmt: skip
    if copies < needed:
        logger.warning("Broadcast %s from %s (seq %d) not acknowledged: %d of %d replicas had it "
                       "after %.1f s", key, sender, entry.seq, copies, needed, REPLICA_WAIT)  # fmt: skip
        raise BrokerUnavailable(NOT_REPLICATED, uncertain=True)
    if not appended.fresh:
        return appended, clients  # numbered and sent before: by the first try of it
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
    return appended, clients


# The outbox sends what is left pending through here (registered, so it need not import this).
outbox.deliver_with(deliver)
