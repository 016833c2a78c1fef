"""The receivers connected to this server process, and the task that keeps their count.

One `Hub` per event loop (one per daphne process). While it has receivers, its task
reports the local number to `Presence` (so it counts globally and heals after a crash)
and pushes the global number to local receivers when it changes, at most once per
BROADCAST_COUNT_INTERVAL: 5,000 clients connecting at once cause a handful of count
frames per client, not 5,000.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import socket
import uuid
import weakref
from typing import Protocol

from django.conf import settings
from redis.exceptions import RedisError

from broadcaster import protocol, store
from broadcaster.presence import Presence, withdraw_now

logger = logging.getLogger(__name__)


class Receiver(Protocol):
    """A connection that receives frames (the WebSocket consumer)."""

    async def push(self, frame: str) -> None:
        """Send one already-encoded frame to the client."""


class Hub:
    """Tracks this process's receivers; owns the presence task while any are connected."""

    def __init__(self) -> None:
        self.server_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.receivers: set[Receiver] = set()
        self.total: int | None = None
        self._fresh: set[Receiver] = set()
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reported_to: str | None = None

    def add(self, receiver: Receiver) -> None:
        """Called when a receiver connection is accepted."""
        self.receivers.add(receiver)
        self._fresh.add(receiver)
        self._changed()

    def discard(self, receiver: Receiver) -> None:
        """Called when a receiver connection closes, whatever the reason."""
        self.receivers.discard(receiver)
        self._fresh.discard(receiver)
        self._changed()

    def _changed(self) -> None:
        self._dirty.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the presence task and withdraw this process from the count."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _withdraw_at_exit(self) -> None:
        """Runs at interpreter exit while this process still counts (daphne got SIGTERM)."""
        if self._reported_to is None:
            return
        try:
            withdraw_now(self._reported_to, server_id=self.server_id)
        except RedisError as exc:
            logger.warning("Could not withdraw from presence at exit: %s", exc)

    async def _run(self) -> None:
        interval: float = settings.BROADCAST_COUNT_INTERVAL
        ttl: float = settings.BROADCAST_PRESENCE_TTL
        self._reported_to = store.redis_url()
        redis = store.client()
        presence = Presence(redis, ttl=ttl)
        # A clean exit (SIGTERM, Ctrl-C) withdraws at once; after SIGKILL the TTL heals.
        atexit.register(self._withdraw_at_exit)
        loop = asyncio.get_running_loop()
        last_report = float("-inf")
        failing = False
        try:
            while True:
                try:
                    if self._dirty.is_set() or loop.time() - last_report >= ttl / 3:
                        self._dirty.clear()
                        total = await presence.report(server_id=self.server_id, count=len(self.receivers))
                        last_report = loop.time()
                    else:
                        total = await presence.total()
                    if failing:
                        logger.info("Presence reporting recovered")
                        failing = False
                except RedisError as exc:
                    if not failing:
                        logger.warning("Presence reporting failed, will retry: %s", exc)
                        failing = True
                    self._dirty.set()
                else:
                    await self._push_count(total)
                if not self.receivers:
                    await presence.withdraw(server_id=self.server_id)
                    if not self.receivers:
                        return
                # Coalesce: whatever changes during this pause goes out in one update,
                # and other processes' changes are picked up within one interval.
                await asyncio.sleep(interval)
        except RedisError as exc:
            logger.warning("Could not withdraw from presence: %s", exc)
        finally:
            atexit.unregister(self._withdraw_at_exit)
            await redis.aclose()

    async def _push_count(self, total: int) -> None:
        if total == self.total:
            targets = list(self._fresh)
        else:
            self.total = total
            targets = list(self.receivers)
        self._fresh.clear()
        if not targets:
            return
        frame = protocol.count_frame(clients=total)
        for receiver in targets:
            try:
                await receiver.push(frame)
            except Exception:
                # One broken connection must not keep the others from their update.
                logger.exception("Could not push the count to a receiver")


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """The hub of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    return hub
