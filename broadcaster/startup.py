"""What a server process does once, before it accepts connections."""

from __future__ import annotations

import atexit
import gc
import logging
import pprint
import resource
import time

from broadcaster import store

logger = logging.getLogger(__name__)


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard limit; return the new soft limit.

    Each WebSocket is a file descriptor: a 1,024 default would cap a process silently.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("Could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def _watch_gc() -> None:
    """Log full garbage collections that stall the event loop (every connection's objects
    are scanned: at 10,000 connections this can take a noticeable time)."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            took = time.perf_counter() - started[0]
            if took > 0.05:
                logger.warning("Full garbage collection paused the server for %.0f ms", took * 1000)

    gc.callbacks.append(callback)
    # Logging may be shut down before the last collections at exit.
    atexit.register(gc.callbacks.remove, callback)
    # Every connection holds a few hundred long-lived objects (Twisted, autobahn, Channels),
    # and a full collection scans them all: measured here, 600-770 ms per collection at
    # 10,000 connections, eleven of them during one connect storm. Collect the young
    # generation less often and full collections far less often; cycles are still collected.
    gc.set_threshold(50_000, 20, 100)


class _Pretty:
    """pprint.pformat(obj), done only if something turns it into text."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __str__(self) -> str:
        return pprint.pformat(self.obj)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _lazy_autobahn_debug_text() -> bool:
    """Make autobahn's per-connection debug text lazy; True if it was there to change.

    On every new connection autobahn pretty-prints its whole configuration for a debug log
    line (`WebSocketProtocol._connectionMade`), eagerly, though the line is dropped unless
    debug logging is on: py-spy put it at 19% of daphne's CPU during a connect storm. Its
    module calls `pformat` by that global name; a lazy stand-in keeps the debug output
    identical when it is enabled. (autobahn 26.10; feature-detected, so a later release
    without the name is left alone.)
    """
    try:
        from autobahn.websocket import protocol as autobahn_protocol
    except ImportError:
        return False
    if getattr(autobahn_protocol, "pformat", None) is not pprint.pformat:
        return False
    autobahn_protocol.pformat = _Pretty  # type: ignore[attr-defined]
    return True


def prepare_server() -> None:
    """Called when the ASGI application is imported by daphne or runserver."""
    _watch_gc()
    _lazy_autobahn_debug_text()
    limit = raise_open_file_limit()
    logger.info("Open-file limit %d: room for about %d connections", limit, max(limit - 64, 0))
    # Starts the embedded Redis now when it is the one in use, so a problem shows at start-up.
    store.redis_url()
    logger.info("Using Redis at %s", store.display_url())
