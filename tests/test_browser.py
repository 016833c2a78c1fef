"""The receiver page in a real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.support import manage

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The closed network here refuses Chromium's background connections; keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def open_tab(browser: Browser, url: str, dialogs: list[str]) -> Page:
    page = await browser.new_page()
    page.on("dialog", lambda d: dialogs.append(d.message))
    await page.goto(url)
    await expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=15_000)
    return page


async def test_two_tabs_show_console_message_and_same_count(browser, daphne, env_for, redis_url):
    """Both tabs show a line sent from the console command, and the same live count."""
    server = daphne()
    dialogs: list[str] = []
    tabs = [await open_tab(browser, server.http + "/", dialogs) for _ in range(2)]
    for tab in tabs:
        await expect(tab.locator("#count")).to_have_text("2", timeout=15_000)
    assert await asyncio.to_thread(server.health) == (200, {"status": "ok", "redis": "ok", "clients": 2})

    done = await asyncio.to_thread(
        manage, ["broadcast"], env=env_for(redis_url), stdin="hello tabs\nsecond line\n"
    )
    assert done.returncode == 0, done.stderr
    for tab in tabs:
        # Newest first, each with its time.
        await expect(tab.locator("#messages li .text")).to_have_text(
            ["second line", "hello tabs"], timeout=15_000
        )
        assert await tab.locator("#messages time").first.get_attribute("datetime")
        await expect(tab.locator("#empty")).to_be_hidden()
    assert dialogs == []


async def test_markup_arrives_as_literal_text_and_runs_nothing(browser, daphne, env_for, redis_url):
    """`<img src=x onerror=alert(1)>` is shown as text; no element is created, no script runs."""
    server = daphne()
    dialogs: list[str] = []
    tab = await open_tab(browser, server.http + "/", dialogs)
    payload = "<img src=x onerror=alert(1)>"
    done = await asyncio.to_thread(manage, ["broadcast", "-m", payload], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    await expect(tab.locator("#messages li .text")).to_have_text([payload], timeout=15_000)
    assert await tab.locator("#messages img").count() == 0
    assert dialogs == []


async def test_tab_reconnects_after_server_restart(browser, daphne, env_for, redis_url):
    """When the server goes away the tab says so, then reconnects by itself and receives again."""
    server = daphne()
    tab = await open_tab(browser, server.http + "/", [])
    await asyncio.to_thread(server.stop)
    await expect(tab.locator("#state")).to_have_attribute("data-state", "closed", timeout=15_000)
    await asyncio.to_thread(server.start)
    await expect(tab.locator("#state")).to_have_attribute("data-state", "open", timeout=30_000)
    done = await asyncio.to_thread(manage, ["broadcast", "-m", "after restart"], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    await expect(tab.locator("#messages li .text")).to_have_text(["after restart"], timeout=15_000)


async def test_tab_offline_then_online_shows_every_message_once_in_order(browser, daphne, env_for, redis_url):
    """A tab goes offline, messages are sent, it comes back: each shows once, in order."""
    server = daphne()
    context = await browser.new_context()
    tab = await context.new_page()
    await tab.goto(server.http + "/")
    await expect(tab.locator("#state")).to_have_attribute("data-state", "open", timeout=15_000)
    done = await asyncio.to_thread(manage, ["broadcast", "-m", "before"], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    await expect(tab.locator("#messages li .text")).to_have_text(["before"], timeout=15_000)

    await context.set_offline(True)
    # Offline emulation does not cut an open WebSocket in Chromium: restart the server too,
    # so the tab really loses its connection while the messages go out.
    await asyncio.to_thread(server.stop)
    await expect(tab.locator("#state")).to_have_attribute("data-state", "closed", timeout=15_000)
    missed = [f"while away {i}" for i in range(5)]
    done = await asyncio.to_thread(manage, ["broadcast"], env=env_for(redis_url), stdin="\n".join(missed))
    assert done.returncode == 0, done.stderr
    await asyncio.to_thread(server.start)
    await context.set_offline(False)
    await expect(tab.locator("#state")).to_have_attribute("data-state", "open", timeout=30_000)
    newest_first = [*reversed(missed), "before"]
    await expect(tab.locator("#messages li .text")).to_have_text(newest_first, timeout=15_000)
    done = await asyncio.to_thread(manage, ["broadcast", "-m", "live again"], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    await expect(tab.locator("#messages li .text")).to_have_text(
        ["live again", *newest_first], timeout=15_000
    )
    await expect(tab.locator("#notice")).to_be_hidden()
    await context.close()


async def test_tab_too_far_behind_shows_reset_notice(browser, daphne, env_for, redis_url):
    """When what a tab missed is no longer kept, it says so visibly."""
    server = daphne(BROADCAST_HISTORY_COUNT="2")
    env = env_for(redis_url, BROADCAST_HISTORY_COUNT="2")
    tab = await open_tab(browser, server.http + "/", [])
    assert (await asyncio.to_thread(manage, ["broadcast", "-m", "first"], env=env)).returncode == 0
    await expect(tab.locator("#messages li .text")).to_have_text(["first"], timeout=15_000)
    await asyncio.to_thread(server.stop)
    await expect(tab.locator("#state")).to_have_attribute("data-state", "closed", timeout=15_000)
    done = await asyncio.to_thread(manage, ["broadcast"], env=env, stdin="a\nb\nc\nd\n")
    assert done.returncode == 0, done.stderr
    await asyncio.to_thread(server.start)
    await expect(tab.locator("#notice")).to_be_visible(timeout=30_000)
    await expect(tab.locator("#messages li .text")).to_have_text(["d", "c", "first"], timeout=15_000)
