"""The SSE fallback in a real Chromium, behind the shipped HAProxy configuration with one rule
added that strips the WebSocket upgrade (as some corporate proxies do): the receiver page and
the banner show a broadcast within 5 s of load, count as clients, report what they showed,
and resume after the servers restart, nothing lost and nothing twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


BANNER_PAGE = """{% load broadcaster %}<!doctype html><html><head><title>Host page</title></head>
<body><h1>A host page</h1>{% broadcast_banner %}</body></html>"""


async def test_banner_falls_back_to_sse(browser, stripping_proxy, env_for, redis_url):
    """The banner's markup as the tag renders it, on a page of the proxied origin."""
    proxied = stripping_proxy
    env = env_for(redis_url)
    rendered = await asyncio.to_thread(manage, ["shell", "-c", "from django.template import engines; "
                                                f"print(engines['django'].from_string({BANNER_PAGE!r}).render())"],
                                       env=env)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert (await asyncio.to_thread(manage, ["broadcast", "-m", "Banner news"], env=env)).returncode == 0
    page = await browser.new_page()
    await page.route(proxied.url + "/host-page", lambda route: route.fulfill(
        status=200, content_type="text/html", body=rendered.stdout))  # fmt: skip
    loaded = time.monotonic()
    await page.goto(proxied.url + "/host-page")
    banner = page.locator(".broadcast-banner")
    await expect(banner).to_be_visible(timeout=5_000)
    print(f"banner shown {time.monotonic() - loaded:.2f} s after load")
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
