"""The outbox: committed broadcasts that Redis could not take when they were sent.

A broadcast sent inside a transaction (`broadcaster.send()` in `atomic()`) has its row written
there, `pending`, and goes out after commit. If Redis cannot take it then, the row stays
pending, and every server process's heartbeat sends pending rows past their GRACE, oldest first,
once Redis is back; every later send sends them before its own. Sending a row is idempotent
(the history append is keyed by the broadcast's id, and only the append that numbers it sends
it live): two processes sending one row make one broadcast.

Order: rows go out in the order they were written (their ids), which is commit order where
the database serializes writes (SQLite) and for transactions that do not overlap; two that
overlap on PostgreSQL go out in the order of their first write. A pending row that expired
(`expires_in`) before Redis was back is marked failed, not sent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from django.db import DatabaseError
from django.db.models import QuerySet
from django.utils import timezone

from broadcaster import metrics
from broadcaster.models import BroadcastRecord
from broadcaster.sending.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

# A pending row younger than this is its sender's to send: the outbox leaves it alone (a
# publish takes at most a few seconds: a connect timeout and its retries, a replica wait).
GRACE = timedelta(seconds=10)
# Rows read per query.
BATCH = 100
EXPIRED = "It expired before Redis could take it: not sent."


def waiting(*, before: int | None = None) -> QuerySet[BroadcastRecord]:
    """Pending rows the outbox sends, oldest first: past their GRACE (and written before row
    `before`)."""
    # (Retracted ones too: Redis refuses a message whose retraction it keeps, and the row is
    # marked so; one retracted while Redis was away was marked then.)
    rows = BroadcastRecord.objects.filter(status=BroadcastRecord.PENDING, created__lte=timezone.now() - GRACE)
    if before is not None:
        rows = rows.filter(pk__lt=before)
    return rows.order_by("pk")


Deliver = Callable[..., Awaitable[Any]]
_deliver: Deliver | None = None


def deliver_with(deliver: Deliver) -> None:
    """Called once by broadcaster/sending/publish.py: how a pending row goes out
    (publish.deliver, with keep_pending=True)."""
    global _deliver
    _deliver = deliver


def expired(row: BroadcastRecord) -> bool:
    return row.expires is not None and row.expires <= timezone.now()


async def flush(*, before: int | None = None) -> bool:
    """Send the waiting rows, oldest first (those written before row `before`, for a send
    that goes after them). Stops at the first Redis cannot take (the rest keep their order).
    True when none is left waiting. Never raises: a database error is logged."""
    deliver = _deliver
    if deliver is None:
        logger.warning("The outbox has no deliverer (broadcaster.sending.publish not imported): nothing sent")
        return False
    try:
        while pending := [row async for row in waiting(before=before)[:BATCH]]:
            for row in pending:
                if expired(row):
                    await BroadcastRecord.objects.filter(pk=row.pk, status=BroadcastRecord.PENDING).aupdate(
                        status=BroadcastRecord.FAILED, error=EXPIRED, idempotency_key=None
                    )
                    continue
                try:
                    await deliver(row, keep_pending=True)
                except BrokerUnavailable:
                    return False
                metrics.OUTBOX_SENT.inc()
                logger.info("Pending broadcast %s sent by the outbox", row.message_id)
    except DatabaseError as exc:
        logger.warning("Could not work through the outbox (pending broadcasts): %s", exc)
        return False
    return True
