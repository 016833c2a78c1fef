"""The per-process connection ceiling: past BROADCAST_MAX_CONNECTIONS, new receivers are
refused with 1013 (try again later) instead of the process running out of file descriptors
or memory.

There is no per-address cap: offices and mobile carriers put thousands of tabs behind one
address, and a cap that fits them stops nobody. A flood from one address is for the load
balancer or firewall in front (README, "Production").
"""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from broadcaster.log_throttle import Throttle

logger = logging.getLogger(__name__)

# File descriptors kept for everything but receivers: the listening socket, Redis connections
# (up to 50 per event loop, plus the channel layer's), the database, logs, files.
RESERVED_FILES = 128


class Admission:
    """Counts this process's receivers from handshake to close; refuses past the ceiling."""

    def __init__(self) -> None:
        self.open = 0
        self.refused = 0
        self.ceiling: int | None = None
        # A refusal is logged at most every 10 s (a full process may be asked thousands of times).
        self._log = Throttle()
        # Set while no receiver is open (a drain waits on it).
        self.none_open = asyncio.Event()
        self.none_open.set()

    def configure(self, open_file_limit: int) -> int:
        """Set the ceiling from settings, or from the open-file limit; return it."""
        configured = settings.BROADCAST_MAX_CONNECTIONS
        self.ceiling = configured or max(open_file_limit - RESERVED_FILES, 1)
        return self.ceiling

    def enter(self) -> bool:
        """Count one more receiver, or refuse it (False) when at the ceiling."""
        ceiling = self.ceiling if self.ceiling is not None else settings.BROADCAST_MAX_CONNECTIONS
        if ceiling and self.open >= ceiling:
            self.refused += 1
            if self._log.due():
                logger.warning("Refusing receivers with 1013: at BROADCAST_MAX_CONNECTIONS (%d open); "
                               "%d refused by this process so far", ceiling, self.refused)  # fmt: skip
            return False
        self.open += 1
        self.none_open.clear()
        return True

    def leave(self) -> None:
        """Count a receiver admitted by enter() as gone."""
        self.open -= 1
        if not self.open:
            self.none_open.set()


admission = Admission()
