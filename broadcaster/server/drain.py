"""Graceful drain: what a server process does on SIGTERM (a deploy, a scale-down, a worker
restart by the process manager), instead of dropping every connection at once.

1. Readiness (`GET /health/ready/`) answers 503 at once and new WebSocket handshakes are
   refused with 1012. A worker that shares its port with others (`make serve` with
   WORKERS > 1) stops listening at once: the kernel hands every new connection, and every
   readiness check, to the others, so no moved client lands on it again. A process alone on
   its port listens READY_GRACE longer, so a load balancer sees the 503 before connections
   are refused.
2. Its receivers are withdrawn from the global count at once (they are about to be counted
   by the workers they move to).
3. Its receivers are closed with 1012 (service restart) spread evenly over
   BROADCAST_DRAIN_SECONDS, a small batch every DRAIN_STEP, so the others see a trickle of
   reconnects, not a stampede. Each gets what was already queued for it first; clients
   reconnect at once (with jitter) and resume with `since`, so none misses or repeats a message.
4. It exits once they are gone, or CLOSE_WAIT seconds after the last batch.

A second SIGTERM stops at once. Runs under daphne (`make serve`) and `runserver --noreload`: it
hooks Twisted's reactor, which other ASGI servers do not have, and needs the main thread, which
runserver's autoreloader keeps for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import threading
import time
from typing import Any

from django.conf import settings

from broadcaster.compat.twisted import running_reactor

logger = logging.getLogger(__name__)

# How long a draining process still listens, answering its readiness check with 503 (so a load
# balancer's health checks see it) and refusing new receivers with 1012, before it closes its
# listening socket (then workers sharing the port take every new connection).
READY_GRACE = 2.0
# Set by broadcaster/server/reuseport.py in the workers it starts (their port is bound with SO_REUSEPORT).
SHARED_PORT_ENV = "BROADCAST_REUSEPORT"
# How often a batch of receivers is closed during a drain.
DRAIN_STEP = 0.1
# How long closed receivers get to finish their closing handshake before the process exits.
CLOSE_WAIT = 5.0
# ... and the reach counts of the last second get this long to reach Redis.
REACH_FLUSH_WAIT = 2.0


class Drain:
    """This process's drain state; `start()` runs once per process."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def install(self) -> bool:
        """Take over SIGTERM from Twisted (call in the reactor's thread once it runs); False
        when there is no running Twisted reactor (another ASGI server)."""
        reactor = running_reactor()
        if reactor is None or not reactor.running:
            return False
        if threading.current_thread() is not threading.main_thread():
            # runserver's autoreloader runs the server in a thread; signals reach the main one.
            logger.info("No drain on SIGTERM under the autoreloader (runserver --noreload has it)")
            return False
        signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(self.start))
        return True

    def start(self) -> None:
        """Begin the drain (in the event loop's thread)."""
        reactor = running_reactor()
        if self.draining:
            logger.warning("Second SIGTERM while draining: stopping now")
            if reactor is not None:
                reactor.stop()
            return
        self.started_at = time.monotonic()
        logger.warning("Draining: not ready (503), new receivers refused with 1012; closing receivers "
                       "with 1012 over %s s", settings.BROADCAST_DRAIN_SECONDS)  # fmt: skip
        if reactor is not None:
            reactor.callLater(0 if _port_is_shared() else READY_GRACE, _stop_listening, reactor)
        # Kept: the event loop holds only a weak reference to a task.
        self._task = asyncio.get_running_loop().create_task(self._close_receivers(reactor))

    async def _close_receivers(self, reactor: Any) -> None:
        from broadcaster.fanout.hub import get_hub
        from broadcaster.server.admission import admission

        hub = get_hub()
        await hub.withdraw_for_drain()
        receivers = list(hub.receivers)
        steps = max(1, math.ceil(settings.BROADCAST_DRAIN_SECONDS / DRAIN_STEP))
        closed = 0
        for step in range(1, steps + 1):
            # Evenly: by step k, k/steps of them are closed (rounded up: a few go at once).
            until = math.ceil(len(receivers) * step / steps)
            for receiver in receivers[closed:until]:
                receiver.close_for_restart()
            closed = until
            if closed >= len(receivers):
                break  # all closed: no need to wait out the rest of the drain time
            await asyncio.sleep(DRAIN_STEP)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await admission.none_open.wait()
        # What the clients' last `seen` frames added since the heartbeat's last flush.
        try:
            async with asyncio.timeout(REACH_FLUSH_WAIT):
                saved = await hub.flush_reach()
        except TimeoutError:
            saved = False
        if not saved:
            logger.warning("Reach counts of the last second not saved: Redis did not take them")
        logger.warning("Drained %d receiver(s) in %.1f s (%d still open); stopping", len(receivers),
                       time.monotonic() - (self.started_at or 0), admission.open)  # fmt: skip
        if reactor is not None:
            reactor.stop()


def _port_is_shared() -> bool:
    """Whether other workers listen on this process's port (broadcaster/server/reuseport.py says so)."""
    try:
        return os.environ.get(SHARED_PORT_ENV) == "1" and int(os.environ.get("WORKERS") or 1) > 1
    except ValueError:
        return False


def _stop_listening(reactor: Any) -> None:
    """Stop accepting connections on every listening socket of this process."""
    from twisted.internet.tcp import Port as TcpPort

    ports = [r for r in reactor.getReaders() if isinstance(r, TcpPort)]
    for port in ports:
        port.stopListening()
    logger.info("Draining: stopped listening on %d socket(s)", len(ports))


drain = Drain()


def install_when_running() -> None:
    """Arrange for `drain.install()` once the reactor runs (after Twisted's own handlers)."""
    reactor = running_reactor()
    if reactor is not None:
        reactor.callWhenRunning(lambda: reactor.callLater(0, drain.install))
