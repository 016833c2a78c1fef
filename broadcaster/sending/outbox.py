"""The outbox: committed broadcasts that Redis could not take when they were sent.

A broadcast sent inside a transaction (`broadcaster.send()` in `atomic()`) has its row written
there, `pending`, and goes out after commit. If Redis cannot take it then, the row stays
pending, and every server process's heartbeat sends pending rows, oldest first, once Redis is
back; a commit also sends the older pending rows before its own. Sending a row is idempotent
(the history append is keyed by the broadcast's id, and only the append that numbers it sends
it live): two processes sending one row make one broadcast.

Order: rows go out in the order they were written (their ids), which is commit order where
the database serializes writes (SQLite) and for transactions that do not overlap; two that
overlap on PostgreSQL go out in the order of their first write. A pending row that expired
(`expires_in`) before Redis was back is marked failed, not sent.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import DatabaseError
from django.utils import timezone

from broadcaster import metrics
from broadcaster.models import BroadcastRecord
from broadcaster.sending.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

# A pending row younger than this is its sender's to send (the heartbeat leaves it alone).
GRACE = timedelta(seconds=2)
# Rows sent per call at most.
BATCH = 100
EXPIRED = "It expired before Redis could take it: not sent."


async def flush(*, up_to: int | None = None) -> bool:
    """Send pending rows, oldest first: every one up to row `up_to` (a commit's own), or
    those older than GRACE (the heartbeat). Stops at the first Redis cannot take (the rest
    keep their order). True if every row it looked at is decided (sent, expired or retracted)."""
    from broadcaster.sending.publish import deliver

    rows = BroadcastRecord.objects.filter(status=BroadcastRecord.PENDING, retracted__isnull=True)
    if up_to is not None:
        rows = rows.filter(pk__lte=up_to)
    else:
        rows = rows.filter(created__lte=timezone.now() - GRACE)
    try:
        pending = [row async for row in rows.order_by("pk")[:BATCH]]
    except DatabaseError as exc:
        logger.warning("Could not read the outbox (pending broadcasts): %s", exc)
        return False
    for row in pending:
        if row.expires is not None and row.expires <= timezone.now():
            await BroadcastRecord.objects.filter(pk=row.pk, status=BroadcastRecord.PENDING).aupdate(
                status=BroadcastRecord.FAILED, error=EXPIRED, idempotency_key=None
            )
            continue
        try:
            await deliver(row, keep_pending=True)
        except BrokerUnavailable:
            return False
        if up_to is None or row.pk != up_to:
            metrics.OUTBOX_SENT.inc()
            logger.info("Pending broadcast %s sent by the outbox", row.message_id)
    return True
