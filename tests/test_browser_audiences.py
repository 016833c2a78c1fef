"""Audiences in real Chromium tabs: signed in through the admin's login form, the receiver page
says who it is, and a group, user or staff broadcast reaches only its members' tabs, on two
processes; after logging out, a tab hears what is for everyone only."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import expect

from tests.support import log_in, manage

pytestmark = pytest.mark.browser

# ann: staff, in browser-ops; bob: staff, not in it (conftest's operators; both can log in to
# the admin, whose login form is the one the tests use).
OPS = """
from django.contrib.auth.models import Group, User
ops, _ = Group.objects.get_or_create(name="browser-ops")
ops.user_set.set([User.objects.get(username="ann")])
"""


async def tab_of(browser, base: str, username: str | None):
    """A browser context signed in as `username` (None: anonymous) with the receiver page open."""
    context = await browser.new_context()
    page = await context.new_page()
    if username is not None:
        await log_in(page, base, username)
        await expect(page).to_have_url(base + "/operator/")
    await page.goto(base + "/")
    await expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=15_000)
    return context, page


async def test_group_user_and_staff_broadcasts_reach_only_their_members_tabs(browser, daphne, operators):
    """ann (in browser-ops, staff), bob (staff) and an anonymous tab, on two processes:
    each shows exactly the broadcasts whose audience it belongs to; the page says who it is;
    ann's tab, logged out in its own context, then hears what is for everyone only."""
    first, second = daphne(), daphne()
    done = await asyncio.to_thread(manage, ["shell", "-c", OPS], env=first.env)
    assert done.returncode == 0, done.stderr
    people = {"ann": first, "bob": second, None: second}
    tabs = {who: await tab_of(browser, server.http, who) for who, server in people.items()}
    for who, (_, page) in tabs.items():
        said = f"Signed in as {who}" if who else "Anonymous: you hear broadcasts to everyone"
        await expect(page.locator("#who")).to_have_text(said)
    await asyncio.to_thread(first.wait_for_clients, 3)
    sends = [("to ops", ["group:browser-ops"]), ("to bob", ["user:bob"]), ("to staff", ["staff"]),
             ("to ops or carl", ["group:browser-ops", "user:carl"]), ("to all", [])]  # fmt: skip
    for text, audience in sends:
        args = ["broadcast", "-m", f"aud-browser {text}"] + [
            a for name in audience for a in ("--audience", name)
        ]
        done = await asyncio.to_thread(manage, args, env=first.env)
        assert done.returncode == 0, done.stderr
    expected = {
        "ann": ["to all", "to ops or carl", "to staff", "to ops"],
        "bob": ["to all", "to staff", "to bob"],
        None: ["to all"],
    }
    for who, (_, page) in tabs.items():
        items = page.locator("#messages li .text", has_text="aud-browser")
        # Newest first; "to all" went last, so once it shows, everything before it had its chance.
        await expect(items.first).to_have_text("aud-browser to all", timeout=15_000)
        assert [t.removeprefix("aud-browser ") for t in await items.all_inner_texts()] == expected[who], who
    # Logged out (the admin's own logout, in ann's context): her tab hears `everyone` only.
    context, page = tabs["ann"]
    logout = await context.new_page()
    await logout.goto(first.http + "/admin/")
    await logout.click("#logout-form button")
    await expect(logout).to_have_url(first.http + "/admin/logout/")
    for n in range(20):  # until ann's tab no longer gets what is for ops (within 5 s, polled)
        done = await asyncio.to_thread(manage, ["broadcast", "-m", f"aud-after {n} ops", "--audience",
                                                "group:browser-ops"], env=first.env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        done = await asyncio.to_thread(manage, ["broadcast", "-m", f"aud-after {n} all"], env=first.env)
        await expect(page.locator("#messages li .text").first).to_have_text(
            f"aud-after {n} all", timeout=15_000
        )
        if not await page.locator("#messages li .text", has_text=f"aud-after {n} ops").count():
            break
    else:
        raise AssertionError("ann's tab still got what was for ops after logging out")
    for _, (context, _) in tabs.items():
        await context.close()
