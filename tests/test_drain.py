"""SIGTERM to a server process drains it (broadcaster/server/drain.py): real daphne, real clients."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

import pytest
import websockets

from broadcaster.backend import redis_client
from broadcaster.presence import group_presence
from tests.support import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def ready(port: int) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready/", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.serial  # measures time or memory: runs alone
async def test_sigterm_drains_receivers_with_1012_spread_over_the_drain_time(daphne):
    """Readiness turns 503 at once, new receivers are refused with 1012, the process's clients
    leave the global count at once, its receivers are closed with 1012 spread over
    BROADCAST_DRAIN_SECONDS, and it exits 0 when they are gone."""
    server = daphne(BROADCAST_DRAIN_SECONDS="3")
    assert ready(server.port) == (200, {"status": "ready"})
    closes: list[tuple[float, int | None, str]] = []

    async def receiver() -> None:
        try:
            async with websockets.connect(server.ws) as ws:
                async for _ in ws:
                    pass
        except websockets.ConnectionClosed as exc:
            closes.append((time.monotonic(), exc.rcvd.code if exc.rcvd else None,
                           exc.rcvd.reason if exc.rcvd else ""))  # fmt: skip

    tasks = [asyncio.create_task(receiver()) for _ in range(30)]
    await asyncio.to_thread(server.wait_for_clients, 30)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(wait_until, lambda: ready(server.port)[0] == 503, timeout=1.5, what="not ready")
    assert ready(server.port) == (503, {"status": "draining"})
    try:
        async with websockets.connect(server.ws) as late:
            await late.recv()
        raise AssertionError("a new receiver was taken while draining")
    except websockets.ConnectionClosed as exc:
        assert (exc.rcvd.code, exc.rcvd.reason) == (1012, "server restarting; reconnect now")
    presence = group_presence(redis_client.shared_client())
    while await presence.total() != 0:
        await asyncio.sleep(0.05)
    withdrawn_after = time.monotonic() - started
    still_open = 30 - len(closes)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert await asyncio.to_thread(server.proc.wait, 30) == 0
    times = sorted(t - started for t, _, _ in closes)
    print(
        f"withdrawn from the count after {withdrawn_after:.2f} s with {still_open} still open; "
        f"1012 closes from {times[0]:.2f} s to {times[-1]:.2f} s"
    )
    assert {(code, reason) for _, code, reason in closes} == {(1012, "server restarting; reconnect now")}
    assert still_open >= 20, "the count was withdrawn only as receivers left"
    assert times[-1] - times[0] >= 2.0, times
    assert "Drained 30 receiver(s)" in server.log()
