"""The SSE fallback in a real Chromium, behind the shipped HAProxy configuration with one rule
added that strips the WebSocket upgrade (as some corporate proxies do): the receiver page and
the banner show a broadcast within 5 s of load, count as clients, report what they showed,
and resume after the servers restart, nothing lost and nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from tests.support import ROOT, Daphne, create_token, free_port, http_request, manage, open_tab, wait_until
from tests.test_haproxy import HAPROXY, state

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Added to the shipped frontend: what a proxy that does not pass WebSockets does.
STRIP_UPGRADE = """    http-request del-header Upgrade
    http-request set-header Connection close
"""


@dataclass
class Proxied:
    hosts: list[Daphne]
    url: str
    admin: str

    def clients(self) -> int:
        """The global count (each host answers it)."""
        return int(self.hosts[0].health()[1].get("clients", -1))


@pytest.fixture
def stripping_proxy(daphne, tmp_path: Path) -> Iterator[Proxied]:
    if not os.path.exists(HAPROXY):
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    hosts = [daphne(), daphne()]
    shipped = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert "    default_backend broadcast\n" in shipped
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        shipped.replace("    default_backend broadcast\n", STRIP_UPGRADE + "    default_backend broadcast\n")
    )
    port, admin = free_port(), str(tmp_path / "lb.sock")
    env = {**os.environ, "BROADCAST_LB_BIND": f"127.0.0.1:{port}", "BROADCAST_LB_ADMIN": admin}
    env.update({f"BROADCAST_HOST_{i + 1}": f"127.0.0.1:{host.port}" for i, host in enumerate(hosts)})
    lb = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: os.path.exists(admin) and {state(admin, "host1"), state(admin, "host2")} == {"up"},
                   timeout=20, what="both hosts up in HAProxy")  # fmt: skip
        yield Proxied(hosts=hosts, url=f"http://127.0.0.1:{port}", admin=admin)
    finally:
        lb.terminate()
        lb.wait(timeout=10)


async def test_page_falls_back_to_sse_counts_reports_and_resumes(
    browser, stripping_proxy, env_for, redis_url
):
    proxied = stripping_proxy
    env = env_for(redis_url)
    publisher = await asyncio.to_thread(create_token, f"bsse-{uuid.uuid4().hex[:8]}", env=env)
    headers = {"Authorization": f"Bearer {publisher}", "Content-Type": "application/json"}
    sent = await http_request(proxied.hosts[0].port, "POST", "/api/broadcasts/",
                              body=b'{"text": "Before load"}', headers=headers)  # fmt: skip
    assert sent.status == 201
    loaded = time.monotonic()
    tab = await open_tab(browser, proxied.url + "/", [])
    await expect(tab.locator("#messages li .text")).to_have_text(["Before load"], timeout=5_000)
    print(f"shown {time.monotonic() - loaded:.2f} s after the page was asked for")
    await expect(tab.locator("#state")).to_have_text("connected (SSE)")
    assert await tab.locator("#state").get_attribute("data-transport") == "sse"
    await asyncio.to_thread(wait_until, lambda: proxied.clients() == 1, timeout=15, what="the tab counted")
    await expect(tab.locator("#count")).to_have_text("1", timeout=15_000)
    # Shown, so reported seen: through the proxy, to whichever host, counted once.
    path = f"/api/broadcasts/{sent.json()['id']}/"
    deadline = time.monotonic() + 15
    while (await http_request(proxied.hosts[1].port, "GET", path, headers=headers)).json()["seen"] < 1:
        assert time.monotonic() < deadline, "the tab's seen report was not counted"

    # Both hosts restart; a broadcast goes out meanwhile: shown once, in order, with the next.
    for host in proxied.hosts:
        await asyncio.to_thread(host.stop)
    await expect(tab.locator("#state")).to_have_attribute("data-state", "closed", timeout=15_000)
    assert (await asyncio.to_thread(manage, ["broadcast", "-m", "While down"], env=env)).returncode == 0
    for host in proxied.hosts:
        await asyncio.to_thread(host.start)
    await expect(tab.locator("#messages li .text")).to_have_text(
        ["While down", "Before load"], timeout=40_000
    )
    assert (await asyncio.to_thread(manage, ["broadcast", "-m", "After"], env=env)).returncode == 0
    await expect(tab.locator("#messages li .text")).to_have_text(["After", "While down", "Before load"],
                                                                 timeout=15_000)  # fmt: skip
    await expect(tab.locator("#state")).to_have_text("connected (SSE)")


BANNER = "{% load broadcaster %}{% broadcast_banner %}"

# Puts markup (a banner as its tag renders it) in the page and runs its scripts. The page is a
# real answer of the server (its /health/), not one Playwright makes up: Chromium's local network
# access checks block a made-up page's WebSockets to loopback, which would fake the fallback.
INSERT = """(html) => {
  const t = document.createElement("template");
  t.innerHTML = html;
  for (const el of t.content.querySelectorAll(".broadcast-banner")) document.body.appendChild(el);
  for (const old of t.content.querySelectorAll("script")) {
    const s = document.createElement("script");
    s.type = old.type;
    s.src = old.src;
    document.body.appendChild(s);
  }
}"""


async def test_banner_falls_back_to_sse(browser, stripping_proxy, env_for, redis_url):
    """The banner's markup as the tag renders it, put in a page of the proxied origin."""
    proxied = stripping_proxy
    env = env_for(redis_url)
    code = f"from django.template import engines; print(engines['django'].from_string({BANNER!r}).render())"
    rendered = await asyncio.to_thread(manage, ["shell", "-c", code], env=env)
    assert rendered.returncode == 0, rendered.stderr
    assert (await asyncio.to_thread(manage, ["broadcast", "-m", "Banner news"], env=env)).returncode == 0
    page = await browser.new_page()
    await page.goto(proxied.url + "/health/")
    loaded = time.monotonic()
    await page.evaluate(INSERT, rendered.stdout)
    banner = page.locator(".broadcast-banner")
    await expect(banner).to_be_visible(timeout=5_000)
    print(f"banner shown {time.monotonic() - loaded:.2f} s after it was put in the page")
    await expect(banner).to_have_attribute("data-transport", "sse")
    assert "Banner news" in await banner.evaluate("e => e.shadowRoot.querySelector('.text').textContent")
    await asyncio.to_thread(wait_until, lambda: proxied.clients() == 1, timeout=15, what="the banner counted")
    for host in proxied.hosts:
        await asyncio.to_thread(host.stop)
    for host in proxied.hosts:
        await asyncio.to_thread(host.start)
    assert (await asyncio.to_thread(manage, ["broadcast", "-m", "Banner again"], env=env)).returncode == 0
    await expect(banner).to_be_visible(timeout=40_000)
    await page.wait_for_function(
        "() => document.querySelector('.broadcast-banner').shadowRoot.querySelector('.text')"
        ".textContent.includes('Banner again')",
        timeout=40_000,
    )
    await page.close()


class UpgradeRefusingProxy:
    """A TCP proxy in front of one daphne that, while `refuse` is set, answers every WebSocket
    handshake with 400 and closes (a proxy that does not pass WebSockets), and pipes the rest."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.refuse = True
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> UpgradeRefusingProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        if self.refuse and b"upgrade: websocket" in head.lower():
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        up_writer.write(head)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


# client.js with `options`, recording what it shows and on which transport.
START_CLIENT = """async (options) => {
  const { BroadcastClient } = await import("/static/broadcaster/client.js");
  window.log = { texts: [], transports: [] };
  const client = new BroadcastClient({ ...options, on: {
    message: (frame) => window.log.texts.push(frame.text),
    open: (transport) => window.log.transports.push(transport),
  } });
  client.connect();
}"""


@contextlib.asynccontextmanager
async def client_behind_proxy(browser: Any, server: Daphne, options: dict[str, Any]) -> AsyncIterator[Any]:
    """A page of the server's origin, reached through an UpgradeRefusingProxy (yielded with it),
    running client.js with `options`."""
    proxy = await UpgradeRefusingProxy(server.port).start()
    page = await browser.new_page()
    try:
        await page.goto(f"http://127.0.0.1:{proxy.port}/health/")
        await page.evaluate(START_CLIENT, options)
        yield proxy, page
    finally:
        await page.close()
        await proxy.stop()


async def test_client_comes_back_to_the_websocket_with_nothing_lost_or_doubled(
    browser, daphne, env_for, redis_url
):
    """client.js on SSE after a fallback tries the WebSocket again (here after 1 s): once the
    proxy passes WebSockets again the WebSocket takes over, and broadcasts sent all along, across
    the switch, are each shown once, in order."""
    server = daphne()
    env = env_for(redis_url)
    async with client_behind_proxy(browser, server, {"retryWebSocketAfter": 1000}) as (proxy, page):
        await page.wait_for_function(
            "() => window.log && window.log.transports.includes('sse')", timeout=5_000
        )
        sent = []
        for i in range(4):
            sent.append(f"on SSE {i}")
            assert (await asyncio.to_thread(manage, ["broadcast", "-m", sent[-1]], env=env)).returncode == 0
        proxy.refuse = False
        for i in range(8):
            sent.append(f"across {i}")
            assert (await asyncio.to_thread(manage, ["broadcast", "-m", sent[-1]], env=env)).returncode == 0
        # (Tries at 1, 3, 7, 15 s after the fallback: the proxy passes WebSockets again by about 5 s.)
        await page.wait_for_function("() => window.log.transports.at(-1) === 'websocket'", timeout=30_000)
        sent.append("after")
        assert (await asyncio.to_thread(manage, ["broadcast", "-m", "after"], env=env)).returncode == 0
        await page.wait_for_function("() => window.log.texts.at(-1) === 'after'", timeout=15_000)
        assert await page.evaluate("() => window.log.texts") == sent
        assert await page.evaluate("() => window.log.transports") == ["sse", "websocket"]
        await asyncio.to_thread(server.wait_for_clients, 1)


HIDE = """(hidden) => {
  const state = hidden ? "hidden" : "visible";
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


async def test_a_hidden_tab_lets_its_stream_go_and_resumes_when_shown(browser, daphne, env_for, redis_url):
    """On SSE, a tab hidden for `closeHiddenStreamAfter` (here 0.5 s) closes its stream (a
    browser has 6 connections per site for all its tabs) and, shown again, resumes it: what was
    sent meanwhile arrives, once."""
    server = daphne()
    env = env_for(redis_url)
    async with client_behind_proxy(browser, server, {"closeHiddenStreamAfter": 500}) as (_, page):
        await page.wait_for_function("() => window.log.transports.includes('sse')", timeout=5_000)
        assert (await asyncio.to_thread(manage, ["broadcast", "-m", "seen"], env=env)).returncode == 0
        await page.wait_for_function("() => window.log.texts.includes('seen')", timeout=15_000)
        await page.evaluate(HIDE, True)
        await asyncio.to_thread(server.wait_for_clients, 0)
        assert (await asyncio.to_thread(manage, ["broadcast", "-m", "while hidden"], env=env)).returncode == 0
        await page.evaluate(HIDE, False)
        await page.wait_for_function("() => window.log.texts.includes('while hidden')", timeout=15_000)
        await asyncio.to_thread(server.wait_for_clients, 1)
        assert await page.evaluate("() => window.log.texts") == ["seen", "while hidden"]
