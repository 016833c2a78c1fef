"""At most one log line per kind of event every few seconds: refusals can come by the thousand."""

from __future__ import annotations

import time


class Throttle:
    """Says whether a line is due (none in the last `every` seconds), counting the ones skipped."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.skipped = 0
        self._logged_at = float("-inf")

    def due(self) -> bool:
        """Whether a line may go out now; if not, it is counted as skipped."""
        now = time.monotonic()
        if now - self._logged_at < self.every:
            self.skipped += 1
            return False
        self._logged_at = now
        return True

    def more(self, what: str = "more") -> str:
        """The line's ending: how many were skipped since the last line (or nothing), and
        start counting again."""
        skipped, self.skipped = self.skipped, 0
        return f" ({skipped} {what} since the last such line)" if skipped else ""
