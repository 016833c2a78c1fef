"""Send from your own code: `broadcaster.send()`, `asend()`, `retract()`, `aretract()`.

They validate as the HTTP API does and raise the same errors (broadcaster/sending/errors.py).
They work in any process of the host (a WSGI or ASGI worker, a Celery worker, a command, a
shell), with no broadcast server in it: Redis and the database are all they need.

Inside `transaction.atomic()`, `send()` writes the broadcast's row in the caller's transaction
and sends it once that commits (`transaction.on_commit`): a rollback leaves no row and sends
nothing. A committed broadcast Redis cannot take stays pending and goes out when Redis is back,
once and in order, from any server process (broadcaster/sending/outbox.py). Outside a
transaction, and always for `asend()` (Django's async ORM runs in autocommit), it is sent at once.

Sync callers run the async publish path on one event loop thread per process (started on first
use, again after a fork), so Redis connections are reused from call to call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from django.core.exceptions import SynchronousOnlyOperation
from django.db import DatabaseError, IntegrityError, router, transaction
from django.utils import timezone

from broadcaster import audiences, protocol
from broadcaster.models import BroadcastRecord
from broadcaster.sending import idempotency, log_health, outbox
from broadcaster.sending.errors import (
    BroadcastUnavailable,
    IdempotencyConflict,
    InvalidAudience,
    StillInProgress,
)
from broadcaster.sending.idempotency import Idempotency
from broadcaster.sending.publish import (
    Retracted,
    Sent,
    check_audience,
    new_record,
    publish,
    refused_write,
    validate,
    validate_options,
)
from broadcaster.sending.publish import retract as retract_broadcast

logger = logging.getLogger(__name__)

# The sender a broadcast from code is logged under, unless given one.
DEFAULT_SENDER = "code"
# Idempotency keys given to code share one scope, apart from the API tokens'.
SCOPE = "code"
# How long the committing thread waits for its broadcast to go out before leaving it to the
# outbox (Redis unreachable: the connect timeout and its retries).
AFTER_COMMIT_WAIT = 10.0

T = TypeVar("T")


def send(text: str, *, level: str = protocol.LEVEL_INFO, expires_in: float | None = None,
         audience: object = protocol.AUDIENCE_EVERYONE[0], idempotency_key: str | None = None,
         sender: str | None = None) -> Sent:  # fmt: skip
    """Broadcast `text` to `audience` (a string or a list: everyone, authenticated, staff,
    user:<name>, group:<name>, perm:<app>.<codename>, or a BROADCAST_AUDIENCE_KINDS kind).

    Inside a transaction: written now, sent after commit; the result is `pending` (its id is
    final). Else sent now: the result has its seq, time and the audience's connected count.
    The same `idempotency_key` within 24 hours returns the first broadcast, sending nothing.
    Raises InvalidBroadcast (nothing to retry) or BroadcastUnavailable (nothing was sent)."""
    _not_in_async("send", "asend")
    validate(text)
    level, expires_in = validate_options(level=level, expires_in=expires_in)
    to = _checked_audience(audience)
    who = sender or DEFAULT_SENDER
    key = None
    if idempotency_key is not None:
        key = Idempotency.of(
            SCOPE, idempotency_key, text=text, level=level, expires_in=expires_in, audience=to
        )
    using = router.db_for_write(BroadcastRecord)
    if not transaction.get_connection(using).in_atomic_block:
        return _run(publish(text=text, sender=who, level=level, expires_in=expires_in, audience=to,
                            idempotency=key))  # fmt: skip
    record = new_record(
        text=text, sender=who, level=level, expires_in=expires_in, audience=to, idempotency=key
    )
    earlier = _write_in_transaction(record, key, using)
    if earlier is not None:
        return Sent.of(earlier)
    transaction.on_commit(functools.partial(_after_commit, record.pk), using=using, robust=True)
    return Sent.of(record)


async def asend(text: str, *, level: str = protocol.LEVEL_INFO, expires_in: float | None = None,
                audience: object = protocol.AUDIENCE_EVERYONE[0], idempotency_key: str | None = None,
                sender: str | None = None) -> Sent:  # fmt: skip
    """`send()` for async code: sent at once (Django's async ORM has no transactions)."""
    validate(text)
    level, expires_in = validate_options(level=level, expires_in=expires_in)
    to = await check_audience(audience)
    key = None
    if idempotency_key is not None:
        key = Idempotency.of(
            SCOPE, idempotency_key, text=text, level=level, expires_in=expires_in, audience=to
        )
    return await publish(text=text, sender=sender or DEFAULT_SENDER, level=level, expires_in=expires_in,
                         audience=to, idempotency=key)  # fmt: skip


def retract(id: str, *, sender: str | None = None) -> Retracted:
    """Take back broadcast `id` (its receivers hide it); UnknownBroadcast if none has it."""
    _not_in_async("retract", "aretract")
    return _run(aretract(id, sender=sender))


async def aretract(id: str, *, sender: str | None = None) -> Retracted:
    """`retract()` for async code."""
    return await retract_broadcast(id=id, sender=sender or DEFAULT_SENDER)


def _checked_audience(audience: object) -> tuple[str, ...]:
    try:
        return audiences.check(audience)
    except audiences.InvalidAudience as exc:
        raise InvalidAudience(str(exc)) from None


def _not_in_async(name: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise SynchronousOnlyOperation(f"broadcaster.{name}() was called from async code (an event loop runs "
                                   f"in this thread): use `await broadcaster.{instead}(...)`.")  # fmt: skip


def _write_in_transaction(
    record: BroadcastRecord, key: Idempotency | None, using: str
) -> BroadcastRecord | None:
    """Write the pending row in the caller's transaction; or return the row that already
    holds the idempotency key (its broadcast is the answer)."""
    for _ in range(2):
        try:
            # A savepoint: a key already taken leaves the caller's transaction usable.
            with transaction.atomic(using=using):
                record.save(force_insert=True, using=using)
        except IntegrityError:
            if key is None:
                raise
            holding = {"idempotency_scope": key.scope, "idempotency_key": key.key}
            earlier = BroadcastRecord.objects.using(using).filter(**holding).first()
            if earlier is None:
                continue  # freed meanwhile: take it
            if earlier.created < timezone.now() - idempotency.WINDOW:
                BroadcastRecord.objects.using(using).filter(pk=earlier.pk).update(idempotency_key=None)
                continue
            if earlier.request_hash != key.fingerprint:
                raise IdempotencyConflict(idempotency.CONFLICT) from None
            return earlier
        except DatabaseError as exc:
            raise refused_write(exc, record) from exc
        log_health.succeeded()
        return None
    raise StillInProgress("Another send with this idempotency key was being written; try again.")


def _after_commit(pk: int) -> None:
    """The caller's transaction committed: send its broadcast (and any older pending ones
    first, in order). If Redis cannot take it, it stays pending for the outbox."""
    try:
        done = _run(outbox.flush(up_to=pk), timeout=AFTER_COMMIT_WAIT)
    except (BroadcastUnavailable, DatabaseError, TimeoutError) as exc:
        done, why = False, str(exc) or type(exc).__name__
    else:
        why = "Redis is unreachable"
    if not done:
        logger.warning(
            "Committed broadcast (row %d) kept pending: it goes out when Redis is back (%s)", pk, why
        )


class _Runner:
    """One event loop thread per process for sync callers (a new one after a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="broadcaster-send", daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_runner = _Runner()


def _run(coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
    future = asyncio.run_coroutine_threadsafe(coro, _runner.loop())
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise
