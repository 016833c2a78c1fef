"""The project's Redis: its URL, and clients for it.

Settings are read at call time, so tests and commands can point at another Redis.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

import redis.asyncio as aioredis
from django.conf import settings

from broadcaster import embedded_redis

# Seconds to wait for Redis before calling it unreachable.
CONNECT_TIMEOUT = 2.0


_embedded_checked: set[Path] = set()


def redis_url() -> str:
    """The Redis URL in force, starting the embedded Redis first when it is the one in use.

    The embedded Redis is checked once per process (a blocking ping), not on every call.
    """
    if settings.EMBEDDED_REDIS:
        var_dir = Path(settings.VAR_DIR)
        if var_dir not in _embedded_checked:
            embedded_redis.ensure_running(var_dir)
            _embedded_checked.add(var_dir)
    return settings.REDIS_URL


def display_url() -> str:
    """The Redis URL with any password hidden, for error messages and logs."""
    from urllib.parse import urlparse

    url: str = settings.REDIS_URL
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def _new_client() -> aioredis.Redis:
    return aioredis.Redis.from_url(
        redis_url(), socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
    )


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


def shared_client() -> aioredis.Redis:
    """The client (a connection pool) of the running event loop for the Redis in force: one
    per process in daphne and in each command, shared by presence, history and health."""
    loop = asyncio.get_running_loop()
    url = redis_url()
    found = _shared.get(loop)
    if found is None or found[0] != url:
        found = _shared[loop] = (url, _new_client())
    return found[1]
