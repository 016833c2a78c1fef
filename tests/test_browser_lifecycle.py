"""Announcement lifecycle and reach in a real headless Chromium (Playwright): levels shown,
expiry hiding on a timer, retraction from the operator page reaching connected and resuming
tabs, delivered and seen on the operator page, and a hidden tab not counted until visible."""

from __future__ import annotations

import asyncio
import getpass
import re
import time
import uuid
from typing import Any

import pytest
from playwright.async_api import expect

from tests.support import create_token, http_request, log_in, manage, open_tab

pytestmark = pytest.mark.browser


async def operator_page(browser: Any, base: str) -> Any:
    """ann's operator page, every dialog (send and retract confirmations) accepted."""
    page = await (await browser.new_context()).new_page()

    async def accept(dialog: Any) -> None:
        await dialog.accept()

    page.on("dialog", accept)
    await log_in(page, base, "ann")
    await expect(page).to_have_url(base + "/operator/")
    return page


async def send(operator: Any, text: str, *, level: str = "info", expires_in: str = "") -> None:
    await operator.fill("#id_text", text)
    await operator.select_option("#id_level", level)
    await operator.fill("#id_expires_in", expires_in)
    await operator.click("#send")
    await expect(operator.locator(".messagelist .success")).to_contain_text("Sent to")


async def test_levels_expiry_and_live_reach_on_the_operator_page(browser, daphne, operators):
    """Sent from the operator page with a level and an expiry: the tab styles it by level and
    says the level in words, hides it when it expires, and the operator page's row counts it
    delivered and seen, updating by itself."""
    server = daphne()
    tab = await open_tab(browser, server.http + "/", [])
    operator = await operator_page(browser, server.http)
    await send(operator, "Disk almost full", level="warning")
    await send(operator, "Release train leaves at 17:00", level="critical", expires_in="4")

    items = tab.locator("#messages li")
    await expect(items).to_have_count(2, timeout=15_000)
    critical, warning = items.nth(0), items.nth(1)
    await expect(critical).to_have_attribute("data-level", "critical")
    await expect(critical.locator(".level")).to_have_text("Critical:")
    await expect(critical).to_have_attribute("role", "alert")
    await expect(warning).to_have_attribute("data-level", "warning")
    await expect(warning.locator(".level")).to_have_text("Warning:")
    colours = [
        await item.evaluate("e => getComputedStyle(e).backgroundColor") for item in (critical, warning)
    ]
    assert colours[0] != colours[1]  # styled apart, not only labelled

    row = operator.locator("#recent tbody tr", has_text="Release train leaves at 17:00")
    await expect(row.locator("td.level")).to_have_text("critical")
    await expect(row.locator("td.delivered")).to_have_text("1", timeout=15_000)
    await expect(row.locator("td.seen")).to_have_text("1", timeout=15_000)
    await expect(row.locator(".expires")).to_contain_text("expires")

    await expect(critical).to_be_hidden(timeout=15_000)  # on its timer, without a new frame
    await expect(critical).to_have_attribute("data-state", "expired")
    await expect(warning).to_be_visible()
    await expect(row.locator("td.status")).to_have_text("expired", timeout=15_000)  # polled, no reload


async def test_retraction_reaches_connected_and_resuming_tabs(browser, daphne, operators):
    """Retract on the operator page (confirmed): the connected tab strikes the message through.
    A retraction sent while a tab is disconnected reaches it when it resumes. A new tab is not
    shown a retracted message as the current announcement."""
    server = daphne()
    tab = await open_tab(browser, server.http + "/", [])
    operator = await operator_page(browser, server.http)
    await send(operator, "Lunch is free today")
    item = tab.locator("#messages li", has_text="Lunch is free today")
    await expect(item).to_be_visible(timeout=15_000)

    row = operator.locator("#recent tbody tr", has_text="Lunch is free today")
    await row.locator("button.retract").click()
    await expect(operator.locator(".messagelist .success")).to_have_text(
        "Retracted: every client was told (retraction #2)."
    )
    await expect(item).to_have_attribute("data-state", "retracted", timeout=15_000)
    await expect(item.locator(".retracted")).to_have_text(" (retracted)")
    await expect(row.locator("td.status")).to_have_text("retracted by ann")
    await expect(row.locator("button.retract")).to_have_count(0)

    done = await asyncio.to_thread(manage, ["broadcast", "-m", "Fire drill at 3"], env=server.env)
    assert done.returncode == 0, done.stderr
    drill = tab.locator("#messages li", has_text="Fire drill at 3")
    await expect(drill).to_be_visible(timeout=15_000)
    drill_id = await drill.get_attribute("data-id")
    await asyncio.to_thread(server.stop)
    await expect(tab.locator("#state")).to_have_attribute("data-state", "closed", timeout=15_000)
    done = await asyncio.to_thread(manage, ["broadcast", "--retract", str(drill_id)], env=server.env)
    assert (done.returncode, done.stdout.strip()) == (0, "Retracted (retraction #4)."), done.stderr
    await asyncio.to_thread(server.start)  # the tab reconnects by itself, resuming
    await expect(drill).to_have_attribute("data-state", "retracted", timeout=30_000)
    await expect(tab.locator("#messages li")).to_have_count(2)  # nothing twice

    fresh = await open_tab(browser, server.http + "/", [])
    await expect(fresh.locator("#count")).to_have_text("2", timeout=15_000)  # its backlog came first
    await expect(fresh.locator("#messages li")).to_have_count(0)
    await expect(fresh.locator("#empty")).to_be_visible()

    # The broadcast log says who retracted what.
    await operator.click("#log-link")
    for text, who in (("Lunch is free today", "ann"), ("Fire drill at 3", f"console:{getpass.getuser()}")):
        logged = operator.locator("#result_list tbody tr", has_text=text)
        await expect(logged.locator(".field-retraction")).to_have_text(re.compile(rf"^\d{{4}}-.* by {who}$"))


# Chromium under Playwright reports every page visible, always (playwright#2286: no API makes
# a page hidden; minimising its window or opening another tab changes nothing headless). The
# one thing this test does not run for real is the browser's visibility: the page is made to
# report "hidden", then "visible" with the event a real tab switch fires. Everything else is real.
HIDDEN_TAB = """
window.__visibility = "hidden";
Object.defineProperty(Document.prototype, "visibilityState", {
  configurable: true, get() { return window.__visibility; } });
Object.defineProperty(Document.prototype, "hidden", {
  configurable: true, get() { return window.__visibility !== "visible"; } });
"""
SHOW_TAB = "window.__visibility = 'visible'; document.dispatchEvent(new Event('visibilitychange'))"


async def test_hidden_tab_is_not_counted_seen_until_it_becomes_visible(browser, daphne, env_for, redis_url):
    server = daphne()
    secret = await asyncio.to_thread(create_token, f"seen-{uuid.uuid4().hex[:8]}", env=env_for(redis_url))
    auth = {"Authorization": f"Bearer {secret}"}
    visible = await open_tab(browser, server.http + "/", [])
    hidden_context = await browser.new_context()
    await hidden_context.add_init_script(HIDDEN_TAB)
    hidden = await hidden_context.new_page()
    await hidden.goto(server.http + "/")
    await expect(hidden.locator("#state")).to_have_attribute("data-state", "open", timeout=15_000)
    states = [await tab.evaluate("document.visibilityState") for tab in (visible, hidden)]
    assert states == ["visible", "hidden"]

    async def report(id: str) -> dict[str, Any]:
        return (await http_request(server.port, "GET", f"/api/broadcasts/{id}/", headers=auth)).json()

    async def until(id: str, delivered: int, seen: int) -> None:
        deadline = time.monotonic() + 15
        while ((found := await report(id))["delivered"], found["seen"]) != (delivered, seen):
            assert found["seen"] <= seen, found
            assert time.monotonic() < deadline, found

    first = (await http_request(server.port, "POST", "/api/broadcasts/", headers=auth,
                                body=b'{"text": "Seen or not"}')).json()["id"]  # fmt: skip
    for tab in (visible, hidden):
        await expect(tab.locator("#messages li .text")).to_have_text(["Seen or not"], timeout=15_000)
    await until(first, delivered=2, seen=1)  # the visible tab only
    # Acks go out as a message is shown: one the hidden tab had sent would have reached the
    # server before this second message was even published, and be in the same flush or an
    # earlier one than the visible tab's ack of the second.
    second = (await http_request(server.port, "POST", "/api/broadcasts/", headers=auth,
                                 body=b'{"text": "Second"}')).json()["id"]  # fmt: skip
    await expect(hidden.locator("#messages li .text")).to_have_text(["Second", "Seen or not"], timeout=15_000)
    await until(second, delivered=2, seen=1)
    assert ((await report(first))["seen"], (await report(second))["seen"]) == (1, 1)

    await hidden.evaluate(SHOW_TAB)
    await until(first, delivered=2, seen=2)
    await until(second, delivered=2, seen=2)
