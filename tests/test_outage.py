"""A Redis outage seen from a real daphne: receivers are told within 5 s that broadcasts are
delayed and again when they flow (a WebSocket client, `manage.py listen` and the page in
Chromium), the log says it once each way with no traceback, and broadcasts flow afterwards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from playwright.async_api import expect

from tests.support import ROOT, Client, LineReader, default_sigint, manage, open_tab

pytestmark = pytest.mark.browser

DELAYED = {"type": "status", "broadcasts": "delayed"}
LIVE = {"type": "status", "broadcasts": "live"}


async def test_redis_outage_is_told_to_every_receiver_and_logged_once(browser, daphne, env_for, redis_server,
                                                                      redis_url):  # fmt: skip
    server = daphne()
    client = await Client(server.ws).connect()
    listener = subprocess.Popen([sys.executable, "manage.py", "listen", server.ws], cwd=ROOT,
                                env=env_for(redis_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=default_sigint)  # fmt: skip
    out = LineReader(listener.stdout)
    try:
        tab = await open_tab(browser, server.http + "/", [])
        await asyncio.to_thread(
            out.wait_for, lambda s: s.startswith("Total clients:"), timeout=20, what="count"
        )
        await client.wait_for(lambda c: c.last_count() is not None, timeout=10, what="a count")

        lost_at = time.monotonic()
        redis_server.stop()  # SIGKILL
        await client.wait_for(lambda c: DELAYED in c.frames, timeout=5, what="the delayed frame within 5 s")
        print(f"told after {time.monotonic() - lost_at:.1f} s")
        await expect(tab.locator("#state")).to_have_attribute("data-state", "delayed", timeout=5_000)
        await expect(tab.locator("#state")).to_have_text("connected, broadcasts delayed")
        await expect(tab.locator("#count")).to_have_class("stale")
        await asyncio.to_thread(out.wait_for, lambda s: s.startswith("(Broadcasts are delayed"), timeout=5,
                                what="listen's delayed line")  # fmt: skip
        assert client.ws.close_code is None, "the outage must not close receivers"

        redis_server.start()  # the same port, empty
        await client.wait_for(lambda c: LIVE in c.frames, timeout=15, what="the live frame")
        await expect(tab.locator("#state")).to_have_attribute("data-state", "open", timeout=5_000)
        await expect(tab.locator("#count")).not_to_have_class("stale")
        await asyncio.to_thread(out.wait_for, lambda s: s == "(Broadcasts flow again.)", timeout=5,
                                what="listen's live line")  # fmt: skip
        assert client.frames.count(DELAYED) == 1 and client.frames.count(LIVE) == 1

        done = await asyncio.to_thread(
            manage, ["broadcast", "-m", "after the outage"], env=env_for(redis_url)
        )
        assert done.returncode == 0, done.stderr
        await client.wait_for(lambda c: "after the outage" in c.messages(), timeout=15, what="a broadcast")
        await expect(tab.locator("#messages li .text").first).to_have_text("after the outage", timeout=15_000)
    finally:
        await client.close()
        listener.terminate()
        listener.wait(timeout=20)
    log = server.log()
    print(
        "\n".join(
            line for line in log.splitlines() if "Redis" in line and "broadcaster.backend.outage" in line
        )
    )
    assert log.count("Lost Redis") == 1, log[-4000:]
    assert log.count("Redis is back after") == 1, log[-4000:]
    assert "Traceback" not in log and "Unexpected exception" not in log, log[-4000:]
