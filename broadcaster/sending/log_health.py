"""Whether the broadcast log (the database) takes writes.

Every broadcast's row is written before it goes out, so a database that refuses writes
refuses broadcasts (errors.LogUnavailable). A refused write marks this process's log as
failing: /health/ready/ answers 503 until a write goes through again (tried at most every
PROBE_EVERY seconds, on a one-row table; every HEALTHY_PROBE_EVERY seconds while writes go
through, so a database that stops taking them is noticed with no broadcast tried), and the
server's start-up tries one write so a read-only or missing database is said at once.
"""

from __future__ import annotations

import logging
import time

from channels.db import database_sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.db import DatabaseError
from django.utils import timezone

from broadcaster import metrics

logger = logging.getLogger(__name__)

# Seconds between two write checks while the log is failing, and while it is not (a database
# that stops taking writes is noticed by readiness within that, with no broadcast tried).
PROBE_EVERY = 2.0
HEALTHY_PROBE_EVERY = 10.0

_failing: str | None = None  # why the last write failed, until one succeeds
_checked_at = 0.0


def reason(exc: BaseException) -> str:
    """What a refused write says, in words a sender can act on."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "the database is locked"
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "the database is read-only"
    if "unable to open database file" in text:  # (SQLite: its journal, beside a read-only file)
        return "the database is read-only or its folder cannot be written"
    if "full" in text or "no space" in text or "quota" in text:
        return "the database's disk is full"
    if "no such table" in text or "does not exist" in text:
        return "the database has no broadcast tables (run manage.py migrate)"
    return f"the database refused the write ({type(exc).__name__})"


def failed(exc: BaseException, *, what: str) -> str:
    """Note a refused write of `what` (counted, logged with its cause); returns `reason`."""
    global _failing, _checked_at
    why = reason(exc)
    _failing, _checked_at = why, time.monotonic()
    metrics.LOG_WRITE_FAILURES.inc()
    logger.error("The broadcast log could not be written (%s): %s: %s", what, why, exc)
    return why


def succeeded() -> None:
    global _failing
    if _failing is not None:
        logger.warning("The broadcast log takes writes again")
    _failing = None


def write_check() -> None:
    """One committed write (sync code): raises DatabaseError if the database refuses it."""
    from broadcaster.models import WriteCheck

    WriteCheck.objects.update_or_create(pk=1, defaults={"at": timezone.now()})


async def failing() -> str | None:
    """Why the log cannot be written now, or None. Tries a write at most every PROBE_EVERY
    seconds while failing (to notice the database is back), every HEALTHY_PROBE_EVERY else."""
    global _checked_at
    if time.monotonic() - _checked_at >= (HEALTHY_PROBE_EVERY if _failing is None else PROBE_EVERY):
        _checked_at = time.monotonic()
        try:
            await database_sync_to_async(write_check)()
        except DatabaseError as exc:
            failed(exc, what="write check")
        else:
            succeeded()
    return _failing


def check_at_start() -> None:
    """At a server's start (sync code): warn now if the database cannot be written."""
    try:
        write_check()
    except SynchronousOnlyOperation:
        return  # (an application built inside a running event loop, as some tests do)
    except DatabaseError as exc:
        why = failed(exc, what="start-up write check")
        logger.warning("Every broadcast will be refused until the database takes writes: %s", why)
    else:
        succeeded()
