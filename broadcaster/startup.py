"""What a server process does once, before it accepts connections."""

from __future__ import annotations

import logging
import resource

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


def prepare_server() -> None:
    """Called when the ASGI application is imported by daphne or runserver."""
    limit = raise_open_file_limit()
    logger.info("Open-file limit %d: room for about %d connections", limit, max(limit - 64, 0))
    # Starts the embedded Redis now when it is the one in use, so a problem shows at start-up.
    store.redis_url()
    logger.info("Using Redis at %s", store.display_url())
