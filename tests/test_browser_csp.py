"""The pages under their Content-Security-Policy, in real Chromium: the receiver page and the
operator page carry a strict policy (no inline script or style, this origin only) and do all
they do under it, with no violation reported; operator answers are not cacheable."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.support import log_in, open_tab

pytestmark = pytest.mark.browser

# Every violation the page's policy reports, kept where the test can read it.
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


async def test_receiver_and_operator_pages_work_under_a_strict_policy(browser, daphne, operators):
    """The receiver tab connects and shows what the operator sends; the operator page counts
    it, sends and lists the broadcast; neither reports a violation of its policy."""
    server = daphne()
    context = await browser.new_context()
    await context.add_init_script(WATCH)
    tab = await open_tab(context, server.http + "/", [])
    operator = await context.new_page()
    answers = []
    operator.on("response", lambda r: answers.append(r))
    await log_in(operator, server.http, "ann")
    await expect(operator).to_have_url(server.http + "/operator/")
    await expect(operator.locator("#count")).to_have_text("1", timeout=15_000)
    await operator.fill("#id_text", "under the policy")
    await operator.click("#send")
    await expect(tab.locator("#messages li .text")).to_have_text(["under the policy"], timeout=15_000)
    await expect(operator.locator("td.text").first).to_have_text("under the policy", timeout=15_000)

    pages = {r.url.removeprefix(server.http): r for r in answers if r.request.resource_type == "document"}
    page = await pages["/operator/"].all_headers()
    assert "script-src 'self'" in page["content-security-policy"]
    assert "'unsafe-inline'" not in page["content-security-policy"]
    assert page["cache-control"] == "no-store"
    status = await operator.evaluate("fetch('/operator/status/').then((r) => r.headers.get('cache-control'))")
    assert status == "no-store"
    receiver = await tab.evaluate("fetch('/').then((r) => r.headers.get('content-security-policy'))")
    assert "connect-src 'self'" in receiver
    for each in (tab, operator):
        assert await each.evaluate("window.__violations") == [], each.url
    await context.close()
