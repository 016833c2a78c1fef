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
import contextlib
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel
import redis.sentinel
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from broadcaster import metrics
from broadcaster.backend import embedded_redis

# Seconds to wait for a connection to Redis, and for an answer, before calling it unreachable.
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 2.0
# ... and for a Sentinel's answer (where the master is), before asking the next Sentinel.
SENTINEL_TIMEOUT = 0.5
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


@contextlib.contextmanager
def _failures_counted() -> Iterator[None]:
    """Around one retry loop: a failure that escapes the outermost one counts once
    (`broadcaster_redis_errors_total`). A script not yet cached (NOSCRIPT, which redis-py
    answers by sending the script) is routine."""
    token = _retry_depth.set(_retry_depth.get() + 1)
    try:
        yield
    except (RedisError, OSError) as exc:
        if _retry_depth.get() == 1 and not isinstance(exc, NoScriptError):
            metrics.REDIS_ERRORS.inc()
        raise
    finally:
        _retry_depth.reset(token)


class _CountingRetry(AsyncRetry):
    """The asyncio retry policy, counting each operation that fails after its retries: every
    command of every client built here runs through it, the channel layer's included."""

    async def call_with_retry(self, *args: Any, **kwargs: Any) -> Any:
        with _failures_counted():
            return await super().call_with_retry(*args, **kwargs)


class _CountingSyncRetry(Retry):
    """The same, for synchronous clients."""

    def call_with_retry(self, *args: Any, **kwargs: Any) -> Any:
        with _failures_counted():
            return super().call_with_retry(*args, **kwargs)


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


SENTINEL_SCHEME = "sentinel://"


def sentinel_url(sentinels: list[str], master: str) -> str:
    """The project's own name for a Sentinel-managed Redis (REDIS_SENTINELS and
    REDIS_SENTINEL_MASTER): `sentinel://host:port,host:port/master`. Passwords stay out of it."""
    return f"{SENTINEL_SCHEME}{','.join(sentinels)}/{master}"


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str] | None:
    """(sentinel addresses, master name) of a `sentinel_url()`, or None for an ordinary URL."""
    if not url.startswith(SENTINEL_SCHEME):
        return None
    hosts, _, master = url.removeprefix(SENTINEL_SCHEME).partition("/")
    addresses = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    return addresses, master


def _sentinel_kwargs(sentinel_password: str, *, asyncio_client: bool = True) -> dict[str, Any]:
    """How the project talks to the Sentinels themselves: short timeouts, no retries (redis-py
    asks the next Sentinel instead; its default of 10 retries per Sentinel made one command
    wait 45 s with three Sentinels down), their own password."""
    retry = (AsyncRetry if asyncio_client else Retry)(NoBackoff(), 0)
    return {"socket_connect_timeout": SENTINEL_TIMEOUT, "socket_timeout": SENTINEL_TIMEOUT, "retry": retry,
            **({"password": sentinel_password} if sentinel_password else {})}  # fmt: skip


def passwords() -> tuple[str, str]:
    """(data password, Sentinel password): settings REDIS_PASSWORD and REDIS_SENTINEL_PASSWORD."""
    return getattr(settings, "REDIS_PASSWORD", ""), getattr(settings, "REDIS_SENTINEL_PASSWORD", "")


def _password_kwargs(url: str, password: str) -> dict[str, Any]:
    """REDIS_PASSWORD, unless the URL carries its own."""
    return {"password": password} if password and not urlparse(url).password else {}


class _SentinelBlockingPool(aioredis.sentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Finds the master through Sentinel (and follows a failover), and waits for a free
    connection like every other pool here instead of failing."""


class _SyncSentinelBlockingPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """The same, for synchronous clients."""


def new_client(url: str | None = None) -> aioredis.Redis:
    """A client with its own blocking pool; the caller closes it (`await client.aclose()`)."""
    url = url or redis_url()
    password, sentinel_password = passwords()
    sentinel = parse_sentinel_url(url)
    if sentinel is not None:
        addresses, master = sentinel
        kwargs = {**connection_kwargs(), **_password_kwargs("", password)}
        manager = aioredis.sentinel.Sentinel(
            addresses, sentinel_kwargs=_sentinel_kwargs(sentinel_password), **kwargs
        )
        return manager.master_for(master, connection_pool_class=_SentinelBlockingPool,
                                  max_connections=POOL_SIZE, timeout=POOL_TIMEOUT)  # fmt: skip
    kwargs = {**connection_kwargs(), **_password_kwargs(url, password)}
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_TIMEOUT, **kwargs
    )
    return aioredis.Redis.from_pool(pool)


def sync_client(url: str) -> redis.Redis:
    """A synchronous client (code without an event loop), configured the same way."""
    password, sentinel_password = passwords()
    sentinel = parse_sentinel_url(url)
    kwargs = connection_kwargs(asyncio_client=False)
    if sentinel is not None:
        addresses, master = sentinel
        kwargs |= _password_kwargs("", password)
        sentinel_kwargs = _sentinel_kwargs(sentinel_password, asyncio_client=False)
        manager = redis.sentinel.Sentinel(addresses, sentinel_kwargs=sentinel_kwargs, **kwargs)
        return manager.master_for(master, connection_pool_class=_SyncSentinelBlockingPool,
                                  max_connections=POOL_SIZE, timeout=POOL_TIMEOUT)  # fmt: skip
    return redis.Redis.from_url(url, **kwargs, **_password_kwargs(url, password))


def layer_hosts(url: str, *, password: str = "", sentinel_password: str = "") -> list[dict[str, Any]]:
    """The channel layer's `hosts` for `url`: channels_redis passes the extra keys to its pool
    (for Sentinel, channels_redis's own `sentinels`/`master_name` form)."""
    sentinel = parse_sentinel_url(url)
    if sentinel is not None:
        addresses, master = sentinel
        return [{"sentinels": addresses, "master_name": master,
                 "sentinel_kwargs": _sentinel_kwargs(sentinel_password),
                 **connection_kwargs(), **_password_kwargs("", password)}]  # fmt: skip
    return [{"address": url, **connection_kwargs(), **_password_kwargs(url, password)}]


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
