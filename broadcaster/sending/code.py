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
import contextvars
import functools
import logging
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.db import DatabaseError, IntegrityError, close_old_connections, router, transaction

from broadcaster import protocol
from broadcaster.models import BroadcastRecord
from broadcaster.sending import log_health, outbox
from broadcaster.sending.errors import (
    BroadcastUnavailable,
    InvalidOptions,
    StillInProgress,
)
from broadcaster.sending.idempotency import Idempotency
from broadcaster.sending.publish import (
    Retracted,
    Sent,
    check_audience,
    checked_audience,
    deliver,
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
# Idempotency keys given to code: one scope per sender, apart from the API tokens'.
SCOPE = "code:{sender}"
# The longest sender name the log keeps.
MAX_SENDER = 150
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
    level, expires_in = _checked(text, level, expires_in)
    to = checked_audience(audience)
    who, key = _who_and_key(
        sender, idempotency_key, text=text, level=level, expires_in=expires_in, audience=to
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
    level, expires_in = _checked(text, level, expires_in)
    to = await check_audience(audience)
    who, key = _who_and_key(
        sender, idempotency_key, text=text, level=level, expires_in=expires_in, audience=to
    )
    return await publish(
        text=text, sender=who, level=level, expires_in=expires_in, audience=to, idempotency=key
    )


def retract(id: str, *, sender: str | None = None) -> Retracted:
    """Take back broadcast `id` (its receivers hide it); UnknownBroadcast if none has it."""
    _not_in_async("retract", "aretract")
    return _run(aretract(id, sender=sender))


async def aretract(id: str, *, sender: str | None = None) -> Retracted:
    """`retract()` for async code."""
    return await retract_broadcast(id=id, sender=_sender(sender))


def _checked(text: object, level: object, expires_in: object) -> tuple[str, float | None]:
    validate(text)
    return validate_options(level=level, expires_in=expires_in)


def _who_and_key(sender: object, key: object, *, text: str, level: str, expires_in: float | None,
                 audience: tuple[str, ...]) -> tuple[str, Idempotency | None]:  # fmt: skip
    """The sender logged, and the idempotency key in that sender's scope."""
    who = _sender(sender)
    if key is None:
        return who, None
    return who, Idempotency.of(SCOPE.format(sender=who), key, text=text, level=level, expires_in=expires_in,
                               audience=audience)  # fmt: skip


def _sender(sender: object) -> str:
    if sender is None:
        return DEFAULT_SENDER
    if not isinstance(sender, str) or not sender.strip() or len(sender) > MAX_SENDER:
        raise InvalidOptions(f"The sender must be a name of 1 to {MAX_SENDER} characters; got {sender!r}.")
    return sender


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
            earlier = key.rows().using(using).first()
            if earlier is None:
                continue  # freed meanwhile: take it
            if key.stale(earlier):
                BroadcastRecord.objects.using(using).filter(pk=earlier.pk).update(idempotency_key=None)
                continue
            key.same_request(earlier)
            return earlier
        except DatabaseError as exc:
            raise refused_write(exc, record) from exc
        log_health.succeeded()
        return None
    raise StillInProgress("Another send with this idempotency key was being written; try again.")


def _after_commit(pk: int) -> None:
    """The caller's transaction committed: send its broadcast (after any older pending ones,
    in order). If Redis cannot take it now, it stays pending for the outbox."""
    try:
        _run(_committed(pk), timeout=AFTER_COMMIT_WAIT)
    except (BroadcastUnavailable, DatabaseError, TimeoutError) as exc:
        logger.warning("Committed broadcast (row %d) kept pending: it goes out when Redis is back (%s)",
                       pk, str(exc) or type(exc).__name__)  # fmt: skip


async def _committed(pk: int) -> None:
    await outbox.flush(before=pk)
    record = await BroadcastRecord.objects.filter(pk=pk, status=BroadcastRecord.PENDING).afirst()
    if record is not None:
        await deliver(record, keep_pending=True)


class _Runner:
    """For sync callers, per process (again after a fork): an event loop thread for the async
    publish path, and one thread for its database work. Each call runs in a context of its
    own, so nothing of the caller's (a request's thread-sensitive executor under ASGI, a
    `sync_to_async` caller's) is waited on: no call can wait for its own caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._database: ThreadPoolExecutor | None = None

    def get(self) -> tuple[asyncio.AbstractEventLoop, ThreadPoolExecutor]:
        with self._lock:
            if self._loop is None or self._database is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="broadcaster-send", daemon=True).start()
                self._database = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broadcaster-db")
                self._pid = os.getpid()
            return self._loop, self._database


_runner = _Runner()


def _run(coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
    """Run `coro` on the runner and wait for its result (up to `timeout` seconds: past it,
    TimeoutError, and it goes on: a written row is decided by its own end, or the outbox)."""
    loop, database = _runner.get()
    result: Future[T] = Future()

    async def isolated() -> T:
        async with ThreadSensitiveContext(executor=database):
            await sync_to_async(close_old_connections)()
            try:
                return await coro
            finally:
                await sync_to_async(close_old_connections)()

    def settle(task: asyncio.Task[T]) -> None:
        if task.cancelled():
            result.cancel()
        elif (exc := task.exception()) is not None:
            result.set_exception(exc)
        else:
            result.set_result(task.result())

    def start() -> None:
        loop.create_task(isolated()).add_done_callback(settle)

    loop.call_soon_threadsafe(start, context=contextvars.Context())
    return result.result(timeout)
