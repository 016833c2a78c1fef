"""The channel layer's fast path relies on private channels_redis internals: checked at start-up.
A layer without the fast path works (slower); one whose fast path is silently bypassed refuses
to start. Real daphne processes, real Redis, real clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from broadcaster.backend.embedded_redis import server_binary
from tests.support import ROOT, Client, Daphne, RedisServer, base_env, free_port, manage, wait_until


async def _broadcast_reaches_two_clients(server, env) -> None:
    clients = [await Client(server.ws).connect() for _ in range(2)]
    await asyncio.to_thread(server.wait_for_clients, 2)
    done = await asyncio.to_thread(manage, ["broadcast", "-m", "through any layer"], env=env)
    assert done.returncode == 0, done.stderr
    for c in clients:
        await c.wait_for(lambda c: c.messages() == ["through any layer"], timeout=10, what="the broadcast")
    late = await Client(f"{server.ws}?since=0").connect()
    await late.wait_for(lambda c: c.messages() == ["through any layer"], timeout=10, what="the resume")
    for c in [*clients, late]:
        await c.close()


async def test_plain_channels_redis_layer_delivers_everything(daphne, env_for, redis_url):
    """channels_redis's own pub/sub layer: per-consumer dispatch, every broadcast delivered."""
    settings = {"DJANGO_SETTINGS_MODULE": "tests.settings_plain_layer"}
    server = daphne(**settings)
    await _broadcast_reaches_two_clients(server, env_for(redis_url, **settings))
    assert "Fan-out fast path verified" not in server.log()


async def test_renamed_internals_turn_the_fast_path_off_loudly_and_lose_nothing(daphne, env_for, redis_url):
    """A channels_redis without the hook the fast path overrides: one ERROR line, then the plain layer."""
    settings = {"DJANGO_SETTINGS_MODULE": "tests.settings_renamed_internals"}
    server = daphne(**settings)
    await _broadcast_reaches_two_clients(server, env_for(redis_url, **settings))
    log = server.log()
    assert log.count("ERROR broadcaster.server.startup: The fan-out fast path is off: the installed "
                     "channels_redis lacks RedisSingleShardConnection._receive_message") == 1  # fmt: skip
    assert "Dropped a message" not in log


@pytest.mark.integration  # starts daphne
def test_fast_path_that_is_never_reached_refuses_to_start(redis_url, tmp_path):
    """The names are there but a broadcast never reaches the fast path: daphne exits with a clear message."""
    env = base_env(redis_url, tmp_path / "var", DJANGO_SETTINGS_MODULE="tests.settings_silent_fast_path")
    endpoint = f"tcp:port={free_port()}:interface=127.0.0.1"
    done = subprocess.run([sys.executable, "-m", "daphne", "-e", endpoint, "broadcast_site.asgi:application"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert "did not reach the channel layer's fan-out fast path: receivers would get nothing" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration  # starts daphne and redis-server
@pytest.mark.parametrize("settings", ["broadcast_site.settings", "tests.settings_silent_fast_path"])
def test_redis_down_at_start_up_the_fast_path_is_verified_once_it_answers(tmp_path, settings):
    """A server started while Redis is down cannot check the fast path then: it checks once
    Redis answers, and a fast path that is never reached ends the process (status 1) instead
    of serving receivers nothing."""
    redis_server = RedisServer(binary=server_binary(), port=free_port(), workdir=tmp_path)
    env = base_env(redis_server.url, tmp_path / "var", DJANGO_SETTINGS_MODULE=settings)
    server = Daphne(env=env, log=tmp_path / "daphne.log").start()
    try:
        assert "Could not verify the fan-out fast path at start-up (Redis unreachable" in server.log()
        redis_server.start()
        if settings == "broadcast_site.settings":
            wait_until(lambda: "Fan-out fast path verified through Redis (after start-up" in server.log(),
                       timeout=30, what="the fast path verified")  # fmt: skip
            assert server.proc is not None and server.proc.poll() is None
        else:
            assert server.proc is not None
            assert server.proc.wait(timeout=30) == 1
            assert "did not reach the channel layer's fan-out fast path" in server.log()
    finally:
        server.stop()
        redis_server.stop()
