"""The operator page's audience field in real Chromium: what is typed there is shown with how
many connected clients it reaches now, following a member's tab as it opens and closes, and a
malformed or unknown audience with why nothing could be sent to it."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import expect

from tests.support import log_in, manage, open_tab

pytestmark = pytest.mark.browser

# bob (conftest's operators: staff, may not send) is count-ops' only member.
OPS = """
from django.contrib.auth.models import Group, User
ops, _ = Group.objects.get_or_create(name="count-ops")
ops.user_set.set([User.objects.get(username="bob")])
"""


async def test_the_audience_field_shows_how_many_it_reaches_now(browser, daphne, operators):
    """ann, who may send, types group:count-ops: it reaches 0 clients, still 0 with an anonymous
    tab open (which the page's total counts), 1 once bob's tab is open, 0 again once it
    closes. A malformed audience, an unknown kind and a group that does not exist each show
    why they cannot be sent to."""
    server = daphne()
    done = await asyncio.to_thread(manage, ["shell", "-c", OPS], env=server.env)
    assert done.returncode == 0, done.stderr
    operator = await (await browser.new_context()).new_page()
    await log_in(operator, server.http, "ann")
    await expect(operator).to_have_url(server.http + "/operator/")
    reached = operator.locator("#audience-count")
    await operator.fill("#id_audience", "group:count-ops")
    await expect(reached).to_have_text("reaches 0 clients now", timeout=15_000)

    anonymous = await open_tab(browser, server.http + "/", [])
    await expect(operator.locator("#count")).to_have_text("1", timeout=15_000)
    await expect(reached).to_have_text("reaches 0 clients now")  # (from the same refresh)
    bob = await browser.new_context()
    page = await bob.new_page()
    await log_in(page, server.http, "bob")
    await expect(page).to_have_url(server.http + "/operator/")
    await page.goto(server.http + "/")
    await expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=15_000)
    await expect(reached).to_have_text("reaches 1 client now", timeout=15_000)
    await bob.close()
    await expect(reached).to_have_text("reaches 0 clients now", timeout=15_000)
    await expect(operator.locator("#count")).to_have_text("1")

    refused = {
        "group:": "The audience 'group:' names no group (an empty or blank value).",
        "team:ops": "Unknown audience 'team:ops'; an audience is one of everyone, authenticated, staff, "
        "group:<value>, perm:<value>, user:<value>.",
        "group:nobody": "No group 'nobody' exists: nothing was sent.",
    }
    for typed, why in refused.items():
        await operator.fill("#id_audience", typed)
        await expect(reached).to_have_text(why, timeout=15_000)
    await anonymous.close()


async def test_a_late_answer_for_an_audience_no_longer_typed_is_not_shown(browser, daphne, operators):
    """The answer for `group:nobody` is held back 1.5 s; meanwhile `staff` is typed. The late
    answer (its error) never shows: only answers for what is typed now do."""
    server = daphne()
    operator = await (await browser.new_context()).new_page()
    await log_in(operator, server.http, "ann")
    await expect(operator).to_have_url(server.http + "/operator/")

    async def slow(route):
        await asyncio.sleep(1.5)  # (the server's answer, delayed: the stale case itself)
        await route.continue_()

    await operator.route("**/operator/status/?audience=group%3Anobody", slow)
    # Every text the field shows, in order, from a MutationObserver in the page.
    await operator.evaluate("""() => { window.shown = []; const e = document.querySelector('#audience-count');
        new MutationObserver(() => window.shown.push(e.textContent)).observe(e, {childList: true,
        characterData: true, subtree: true}); }""")  # fmt: skip
    async with operator.expect_request("**/operator/status/?audience=group%3Anobody"):
        await operator.fill("#id_audience", "group:nobody")
    await operator.fill("#id_audience", "staff")
    async with operator.expect_response("**/operator/status/?audience=group%3Anobody", timeout=15_000):
        pass
    await expect(operator.locator("#audience-count")).to_have_text("reaches 0 clients now", timeout=15_000)
    # One more answer after the late one (the next refresh, for staff): had the late one been shown,
    # it would be in the list.
    async with operator.expect_response("**/operator/status/?audience=staff", timeout=15_000):
        pass
    shown = await operator.evaluate("window.shown")
    assert "No group 'nobody' exists: nothing was sent." not in shown, shown
