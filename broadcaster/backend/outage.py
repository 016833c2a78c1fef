"""This process's view of Redis: reachable, or lost since a failure (one per event loop, held
by its hub: `get_hub().redis`).

Every place that finds Redis failing on its own schedule (the hub's presence loop, once a
second while receivers are connected; the channel layer's subscription; a receiver refused at
its handshake) reports here. A loss
is logged once, as a WARNING, and its end once, as an INFO line with how long it lasted and
how many attempts failed in between: never a traceback a second. The hub tells its receivers
(`status` frames, docs/PROTOCOL.md) on each change.

Only the presence loop reports success: it runs a real command against Redis every second,
where the subscription's reads succeed trivially while nothing is subscribed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class RedisLink:
    """Up, or down since the first failure; tells `on_change` (the hub) of each change."""

    def __init__(self, on_change: Callable[[bool], None] | None = None) -> None:
        self.down_since: float | None = None
        self.failures = 0
        self.on_change = on_change

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, exc: BaseException, *, what: str) -> None:
        """`what` (e.g. "presence report") failed with `exc`."""
        self.failures += 1
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        logger.warning("Lost Redis (%s: %s); broadcasts to this process's receivers are delayed "
                       "until it is back", what, str(exc) or type(exc).__name__)  # fmt: skip
        if self.on_change is not None:
            self.on_change(False)

    def succeeded(self) -> None:
        """A command just worked."""
        if self.down_since is None:
            return
        lasted = time.monotonic() - self.down_since
        logger.info("Redis is back after %.1f s (failed attempts: %d); broadcasts flow again",
                    lasted, self.failures)  # fmt: skip
        self.down_since, self.failures = None, 0
        if self.on_change is not None:
            self.on_change(True)
