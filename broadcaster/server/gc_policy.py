"""Garbage collection for a process that holds thousands of long-lived connections.

Every connection holds a few hundred long-lived objects (Twisted, autobahn, Channels) and a
full collection scans them all: measured here, 600-770 ms per collection at 10,000
connections, eleven of them during one connect storm. So the young generation is collected
less often and full collections far less often than Python's defaults.

The price of that: a closed connection's objects are cyclic garbage that has usually been
promoted to the oldest generation by the time it closes, and only a full collection frees
it. Under churn (tabs opening and closing all day) it piled up: 2,000 connect/close cycles,
six rounds, took a process from 81 to 207 MB. So a full collection also runs after as many
connections have closed as are open (at least `MIN_CLOSED`): the garbage it finds is then
at most about one process's worth of connections, and its cost, proportional to what is
open, is spread over as many closes. A connect storm closes nothing and triggers none.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import time

logger = logging.getLogger(__name__)

THRESHOLDS = (50_000, 20, 100)
MIN_CLOSED = 1_000
# A full collection that pauses the process longer than this is logged.
SLOW_COLLECTION = 0.05


class ChurnCollector:
    """Runs a full collection once enough connections have closed."""

    def __init__(self, *, min_closed: int = MIN_CLOSED) -> None:
        self.min_closed = min_closed
        self.closed = 0
        self.collections = 0
        self._scheduled = False

    def connection_closed(self, *, still_open: int) -> None:
        """Called when a connection closes, with the number still open in this process."""
        self.closed += 1
        if self.closed >= max(self.min_closed, still_open) and not self._scheduled:
            self._scheduled = True
            # After the close handlers of this loop iteration have dropped their references.
            asyncio.get_running_loop().call_soon(self._collect)

    def _collect(self) -> None:
        self._scheduled = False
        self.closed = 0
        self.collections += 1
        gc.collect()


churn = ChurnCollector()


def configure() -> None:
    """Called once per server process at start-up: thresholds, and a log line for slow
    full collections."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            took = time.perf_counter() - started[0]
            if took > SLOW_COLLECTION:
                logger.warning("Full garbage collection paused the server for %.0f ms", took * 1000)

    gc.callbacks.append(callback)
    # Logging may be shut down before the last collections at exit.
    atexit.register(gc.callbacks.remove, callback)
    gc.set_threshold(*THRESHOLDS)
