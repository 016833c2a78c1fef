"""The embedded Redis: started once per checkout when REDIS_URL is unset, shared by all its processes."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from broadcaster.backend import embedded_redis
from tests.support import Client, Daphne, base_env, manage


@pytest.fixture
def var_dir():
    # A short path: a unix socket path must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="bcast-"))
    yield path
    embedded_redis.stop(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.integration  # starts the embedded Redis
def test_started_once_and_reused(var_dir):
    """The first call starts redis-server; later calls find it running; stop shuts it down."""
    socket_path = embedded_redis.ensure_running(var_dir)
    pid = (var_dir / "redis.pid").read_text()
    assert embedded_redis.ensure_running(var_dir) == socket_path
    assert (var_dir / "redis.pid").read_text() == pid
    assert embedded_redis.stop(var_dir) is True
    assert embedded_redis.stop(var_dir) is False


def test_too_long_socket_path_is_a_clear_error(tmp_path):
    """A var folder too deep for a unix socket gets an error that says what to do."""
    deep = tmp_path / ("d" * 120)
    with pytest.raises(embedded_redis.EmbeddedRedisError, match="set BROADCAST_VAR_DIR to a shorter folder"):
        embedded_redis.ensure_running(deep)


@pytest.mark.integration  # starts the embedded Redis
async def test_server_and_console_share_it_without_redis_url(var_dir, tmp_path):
    """No REDIS_URL: daphne starts the embedded Redis and `manage.py broadcast` reaches its clients."""
    env = base_env("", var_dir)
    del env["REDIS_URL"]
    server = Daphne(env=env, log=tmp_path / "daphne.log").start()
    try:
        client = await Client(server.ws).connect()
        await asyncio.to_thread(server.wait_for_clients, 1)
        done = await asyncio.to_thread(manage, ["broadcast", "-m", "embedded"], env=env)
        assert (done.returncode, done.stdout, done.stderr) == (0, "Sent.\n", "")
        await client.wait_for(lambda c: c.messages() == ["embedded"], timeout=15, what="the message")
        await client.close()
    finally:
        server.stop()
    assert (var_dir / "redis.sock").exists()


@pytest.mark.integration  # starts the embedded Redis
def test_make_stop_redis_stops_it(var_dir):
    """`make stop-redis` (the README's way to shut it down) stops a running embedded Redis."""
    import subprocess

    from tests.support import ROOT

    embedded_redis.ensure_running(var_dir)
    env = base_env("", var_dir)
    del env["REDIS_URL"]
    stopped = subprocess.run(["make", "-s", "stop-redis"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "stopped"), stopped.stderr
    assert not embedded_redis.answers(var_dir / "redis.sock")
