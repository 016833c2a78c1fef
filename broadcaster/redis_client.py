"""The project's Redis: its URL, and the one configuration every client of it uses.

Every Redis user in the project (history, presence, rate limits, health, the console, the
operator page and the channel layer) connects with `connection_kwargs()`: the same timeouts
and the same retry policy. Pools are `BlockingConnectionPool`s: past `POOL_SIZE` commands
in flight, the next one waits up to `POOL_TIMEOUT` seconds for a free connection instead of
failing ("Too many connections") while Redis is healthy.

Settings are read at call time, so tests and commands can point at another Redis.
"""

from __future__ import annotations

import asyncio
import weakref
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from broadcaster import embedded_redis, metrics

# Seconds to wait for a connection to Redis, and for an answer, before calling it unreachable.
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 2.0
# Connections one event loop's pool opens at most, and how long a command waits for one.
POOL_SIZE = 50
POOL_TIMEOUT = 5.0
# A dropped connection (a Redis restart closes every pooled one) is retried on a new
# connection, after 10, 20, 40 ms (with jitter). Only connection errors are retried, not
# timeouts. A connection can drop after Redis ran a command and before the reply, so every
# write here is safe to run twice: history's append is idempotent by message id, presence
# reports and withdrawals set values (a rate-limit hit may count one send twice).
RETRIES = 3
BACKOFF_BASE = 0.01
BACKOFF_CAP = 0.5


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
    """The Redis URL with any password hidden, for logs."""
    url: str = settings.REDIS_URL
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


# How deep in nested retry calls this task or thread is: redis-py retries a command, and the
# connect inside it has a retry of its own; a failure is counted once, at the outermost.
_retry_depth: ContextVar[int] = ContextVar("redis_retry_depth", default=0)


def _count_failure(exc: BaseException) -> None:
    # A script not yet cached (NOSCRIPT, which redis-py answers by sending the script) is routine.
    if (
        _retry_depth.get() == 1
        and isinstance(exc, RedisError | OSError)
        and not isinstance(exc, NoScriptError)
    ):
        metrics.REDIS_ERRORS.inc()


class _CountingRetry(AsyncRetry):
    """The asyncio retry policy, counting each operation that fails after its retries
    (`broadcaster_redis_errors_total`): every command of every client built here runs
    through it, the channel layer's included."""

    async def call_with_retry(self, *args: Any, **kwargs: Any) -> Any:
        token = _retry_depth.set(_retry_depth.get() + 1)
        try:
            return await super().call_with_retry(*args, **kwargs)
        except BaseException as exc:
            _count_failure(exc)
            raise
        finally:
            _retry_depth.reset(token)


class _CountingSyncRetry(Retry):
    """The same, for synchronous clients."""

    def call_with_retry(self, *args: Any, **kwargs: Any) -> Any:
        token = _retry_depth.set(_retry_depth.get() + 1)
        try:
            return super().call_with_retry(*args, **kwargs)
        except BaseException as exc:
            _count_failure(exc)
            raise
        finally:
            _retry_depth.reset(token)


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=BACKOFF_BASE, cap=BACKOFF_CAP)


def connection_kwargs(*, asyncio_client: bool = True) -> dict[str, Any]:
    """Keyword arguments for a redis-py connection (or pool) of this project."""
    retry_class = _CountingRetry if asyncio_client else _CountingSyncRetry
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "retry": retry_class(_backoff(), RETRIES, supported_errors=(RedisConnectionError,)),
        "retry_on_error": [RedisConnectionError],
    }


def new_client(url: str | None = None) -> aioredis.Redis:
    """A client with its own blocking pool; the caller closes it (`await client.aclose()`)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url or redis_url(), max_connections=POOL_SIZE, timeout=POOL_TIMEOUT, **connection_kwargs()
    )
    return aioredis.Redis.from_pool(pool)


def sync_client(url: str) -> redis.Redis:
    """A synchronous client (code without an event loop), configured the same way."""
    return redis.Redis.from_url(url, **connection_kwargs(asyncio_client=False))


def layer_hosts(url: str) -> list[dict[str, Any]]:
    """The channel layer's `hosts` for `url`: channels_redis passes the extra keys to its pool."""
    return [{"address": url, **connection_kwargs()}]


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


def shared_client() -> aioredis.Redis:
    """The client (a blocking pool) of the running event loop for the Redis in force: one
    per process in daphne and in each command, shared by presence, history and health."""
    loop = asyncio.get_running_loop()
    url = redis_url()
    found = _shared.get(loop)
    if found is None or found[0] != url:
        found = _shared[loop] = (url, new_client(url))
    return found[1]
