"""The hub's heartbeat: its one task, running while this process has receivers.

Once per BROADCAST_COUNT_INTERVAL it reports how many receivers this process counts to
`Presence` (at once after a change, else every third of BROADCAST_PRESENCE_TTL, so a crashed
process stops counting by itself), hands the global number to the hub to push, checks that
the hub is in step with history, flushes the reach counts (broadcaster/reach.py), and keeps
the metrics' connection gauge. When the last receiver has gone it withdraws this process from
the count and stops.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
from typing import TYPE_CHECKING

from django.conf import settings
from redis.exceptions import RedisError

from broadcaster import metrics
from broadcaster.backend import redis_client
from broadcaster.presence import group_presence, withdraw_now
from broadcaster.sending import outbox

if TYPE_CHECKING:
    from broadcaster.fanout.hub import Hub

logger = logging.getLogger(__name__)

# Seconds between two looks at the outbox (committed broadcasts waiting for Redis).
OUTBOX_EVERY = 2.0


class Heartbeat:
    """Started by `poke()` (any change of the hub's receivers); ends when there are none."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reported_to: str | None = None

    def poke(self) -> None:
        """Called when receivers come or go: report at the next beat, starting the task if needed."""
        self._dirty.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the task (tests; daphne's exit runs `_withdraw_at_exit`)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _withdraw_at_exit(self) -> None:
        """Runs at interpreter exit while this process still counts (daphne got SIGTERM)."""
        if self._reported_to is None:
            return
        # Logging may already be shut down, and if Redis is gone the TTL heals the count.
        with contextlib.suppress(RedisError):
            withdraw_now(self._reported_to, server_id=self.hub.server_id)

    async def _run(self) -> None:
        hub = self.hub
        interval: float = settings.BROADCAST_COUNT_INTERVAL
        ttl: float = settings.BROADCAST_PRESENCE_TTL
        self._reported_to = redis_client.redis_url()
        presence = group_presence(redis_client.shared_client())
        # A clean exit (SIGTERM, Ctrl-C) withdraws at once; after SIGKILL the TTL heals.
        atexit.register(self._withdraw_at_exit)
        loop = asyncio.get_running_loop()
        last_report = last_outbox = float("-inf")
        try:
            while True:
                # Once per interval, not per connect: deliveries of catch-ups (which no fan-out
                # flushes) and the connections gauge.
                metrics.flush()
                metrics.set_connections(len(hub.receivers))
                try:
                    if self._dirty.is_set() or loop.time() - last_report >= ttl / 3:
                        self._dirty.clear()
                        total = await presence.report(server_id=hub.server_id, count=hub.counted(),
                                                      signatures=hub.signatures(ttl=ttl))  # fmt: skip
                        last_report = loop.time()
                    else:
                        total = await presence.total()
                    hub.redis.succeeded()
                except (RedisError, OSError) as exc:
                    hub.redis.failed(exc, what="presence report")
                    self._dirty.set()
                    hub.report_failed()
                else:
                    hub.push_count(total)
                    if hub.fast_path:
                        with contextlib.suppress(RedisError):
                            await hub.check_history()
                    try:
                        await hub.membership.check(redis_client.shared_client(), now=loop.time())
                    except (RedisError, OSError) as exc:
                        logger.debug("Membership changes not read this beat: %s", exc)
                        hub.membership.lost_redis()
                    except Exception:
                        # The heartbeat must go on (the count, history, reach): log, and try
                        # everything again at the next beat.
                        logger.exception("Could not apply membership changes")
                        hub.membership.lost_redis()
                    if loop.time() - last_outbox >= OUTBOX_EVERY:
                        last_outbox = loop.time()
                        try:
                            await outbox.flush()
                        except Exception:
                            logger.exception("Could not send pending broadcasts (tried again next time)")
                await hub.flush_reach()
                if not hub.receivers:
                    # (With Redis lost, the report's TTL withdraws this process soon enough.)
                    if hub.redis.up:
                        await presence.withdraw(server_id=hub.server_id)
                    if not hub.receivers:
                        hub.went_idle()
                        metrics.flush()
                        return
                # Coalesce: whatever changes during this pause goes out in one update,
                # and other processes' changes are picked up within one interval.
                await asyncio.sleep(interval)
        except RedisError as exc:
            logger.warning("Could not withdraw from presence: %s", exc)
        finally:
            metrics.set_connections(len(hub.receivers))
            atexit.unregister(self._withdraw_at_exit)
