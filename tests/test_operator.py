"""The operator page's access rules, send path and errors (in-process client, real Redis).

The browser side (login, live count, two receiver tabs) is in tests/test_browser.py.
"""

from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.test import AsyncClient, override_settings

from broadcaster.backend import redis_client
from broadcaster.history.kept import group_history
from broadcaster.models import BroadcastRecord
from broadcaster.presence import group_presence
from broadcaster.sending.publish import EMPTY
from tests.conftest import point_django_at
from tests.support import Subscriber

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "/operator/"
STATUS = "/operator/status/"


async def client_for(username: str | None, *, staff: bool = True, can_send: bool = False) -> AsyncClient:
    """A client logged in as a new user (or anonymous for None)."""
    client = AsyncClient()
    if username is None:
        return client
    user = await User.objects.acreate_user(username, password="pw", is_staff=staff)
    if can_send:
        permission = await Permission.objects.aget(codename="send_broadcast")
        await sync_to_async(user.user_permissions.add)(permission)
    await client.aforce_login(user)
    return client


async def kept_seqs() -> list[int]:
    return [entry.seq for entry in (await group_history(redis_client.shared_client()).since(0)).entries]


async def post_form(client: AsyncClient, fields: dict[str, str], **kwargs):
    """POST the send form as the page gives it: with the form id of a fresh rendering."""
    page = (await client.get(PAGE)).content.decode()
    [send_id] = re.findall(r'name="send_id" value="([0-9a-f]{32})"', page)
    return await client.post(PAGE, {"send_id": send_id, **fields}, **kwargs)


async def test_anonymous_is_sent_to_login_and_gets_no_status():
    """Anonymous: the page redirects to the admin login; the status JSON is 403."""
    client = await client_for(None)
    page = await client.get(PAGE)
    assert (page.status_code, page["Location"]) == (302, "/admin/login/?next=/operator/")
    status = await client.get(STATUS)
    assert (status.status_code, status.json()) == (403, {"error": "Staff only: log in to the admin."})


async def test_non_staff_user_gets_no_operator_data_and_cannot_send():
    """A logged-in user who is not staff is redirected, refused the status, and sends nothing."""
    await BroadcastRecord.objects.acreate(sender="console:ann", text="secret plan", status="sent", clients=1)
    client = await client_for("pat", staff=False, can_send=True)
    page = await client.get(PAGE)
    assert (page.status_code, page["Location"]) == (302, "/admin/login/?next=/operator/")
    assert b"secret plan" not in page.content
    assert (await client.get(STATUS)).status_code == 403
    sent = await client.post(PAGE, {"text": "let me in"})
    assert sent.status_code == 302
    assert await kept_seqs() == []
    assert await BroadcastRecord.objects.filter(text="let me in").aexists() is False


async def test_staff_without_permission_watches_but_cannot_send():
    """Staff without send_broadcast see the count and log but no form; a forged POST gets 403."""
    await BroadcastRecord.objects.acreate(sender="console:ann", text="earlier", status="sent", clients=4)
    client = await client_for("bob")
    page = await client.get(PAGE)
    body = page.content.decode()
    assert page.status_code == 200
    assert 'id="no-permission"' in body and "<textarea" not in body and 'id="log-link"' not in body
    assert '<td class="sender">console:ann</td>' in body and '<td class="text">earlier</td>' in body
    forged = await client.post(PAGE, {"text": "forged"})
    assert forged.status_code == 403
    assert await kept_seqs() == []
    assert await BroadcastRecord.objects.filter(text="forged").aexists() is False


async def test_permitted_staff_sends_through_the_publish_path(redis_url):
    """A send goes out on the group, is numbered in history and logged with the user as sender."""
    sub = Subscriber(redis_url)
    await group_presence(redis_client.shared_client()).report(server_id="other-process", count=3)
    client = await client_for("ann", can_send=True)
    response = await post_form(client, {"text": "line one\r\nline two"})
    assert (response.status_code, response["Location"]) == (303, "/operator/")
    assert sub.texts(1) == ["line one\nline two"]
    record = await BroadcastRecord.objects.aget()
    assert (record.sender, record.text, record.status, record.clients, record.seq) == (
        "ann", "line one\nline two", "sent", 3, 1)  # fmt: skip
    page = (await client.get(PAGE)).content.decode()
    assert "Sent to 3 clients (broadcast #1)." in page
    assert '<a id="log-link" href="/admin/broadcaster/broadcastrecord/">' in page
    status = (await client.get(STATUS)).json()
    assert (status["clients"], status["redis"]) == (3, "ok")
    assert [(r["sender"], r["clients"], r["status"], r["text"]) for r in status["recent"]] == [
        ("ann", 3, "sent", "line one\nline two")
    ]


async def test_the_same_form_sent_twice_broadcasts_once():
    """A double submit (same form id) sends once; the second post says so and sends nothing."""
    client = await client_for("ann", can_send=True)
    page = (await client.get(PAGE)).content.decode()
    [send_id] = re.findall(r'name="send_id" value="([0-9a-f]{32})"', page)
    first = await client.post(PAGE, {"text": "once", "send_id": send_id})
    second = await client.post(PAGE, {"text": "once", "send_id": send_id}, follow=True)
    assert first.status_code == 303
    assert "That form was sent already; it was not sent again." in second.content.decode()
    assert await kept_seqs() == [1]
    assert await BroadcastRecord.objects.acount() == 1
    fresh = re.findall(r'name="send_id" value="([0-9a-f]{32})"', second.content.decode())
    assert len(fresh) == 1 and fresh != [send_id]


async def test_a_post_without_the_form_id_sends_nothing():
    """A POST that did not come from a rendering of the form (no form id) is refused with a
    message; the text is kept in a fresh form, and nothing is sent or logged."""
    client = await client_for("ann", can_send=True)
    response = await client.post(PAGE, {"text": "from nowhere"})
    body = response.content.decode()
    assert response.status_code == 400
    assert "This form is out of date: nothing was sent. Check the text and send it again." in body
    assert ">from nowhere</textarea>" in body and re.search(r'name="send_id" value="[0-9a-f]{32}"', body)
    assert await kept_seqs() == []
    assert await BroadcastRecord.objects.acount() == 0


async def test_the_same_text_again_is_asked_about_first():
    """A new form with the text this operator just sent is held (409) with when and which
    broadcast it was; "Send it again" sends it; another operator's same text is not held."""
    client = await client_for("ann", can_send=True)
    assert (await post_form(client, {"text": "fire drill at 3"})).status_code == 303
    again = await post_form(client, {"text": "fire drill at 3"})
    body = again.content.decode()
    assert again.status_code == 409
    assert "You sent this same message at" in body and "(broadcast #1)." in body
    assert ">fire drill at 3</textarea>" in body
    assert await kept_seqs() == [1]
    [send_id] = re.findall(r'name="send_id" value="([0-9a-f]{32})"', body)
    sent = await client.post(PAGE, {"text": "fire drill at 3", "send_id": send_id, "repeat": "yes"})
    assert sent.status_code == 303
    other = await client_for("bea", can_send=True)
    assert (await post_form(other, {"text": "fire drill at 3"})).status_code == 303
    assert await kept_seqs() == [1, 2, 3]


async def test_markup_is_escaped_in_the_page():
    """Message text is never HTML on the operator page."""
    client = await client_for("ann", can_send=True)
    payload = "<img src=x onerror=alert(1)>"
    assert (await post_form(client, {"text": payload})).status_code == 303
    body = (await client.get(PAGE)).content.decode()
    assert payload not in body
    assert '<td class="text">&lt;img src=x onerror=alert(1)&gt;</td>' in body


async def test_empty_and_too_long_are_refused_and_the_text_is_kept():
    """Bad input gets the shared error, the form keeps the text, nothing is sent or logged."""
    client = await client_for("ann", can_send=True)
    empty = await client.post(PAGE, {"text": "   "})
    assert empty.status_code == 400
    refusal = f'<p class="errornote" id="error">{EMPTY}</p>'
    assert refusal in empty.content.decode()
    invisible = await client.post(PAGE, {"text": "\u200b\u2060\ufeff\u200e"})
    assert invisible.status_code == 400 and refusal in invisible.content.decode()
    with override_settings(BROADCAST_MAX_LENGTH=5):
        long = await client.post(PAGE, {"text": "123456"})
    body = long.content.decode()
    assert long.status_code == 400
    assert "The message is 6 characters long; the limit is 5 (BROADCAST_MAX_LENGTH)." in body
    assert ">123456</textarea>" in body
    assert await kept_seqs() == []
    assert await BroadcastRecord.objects.acount() == 0


async def test_large_audience_needs_confirmation():
    """Above BROADCAST_CONFIRM_ABOVE a send without confirmation is held and asked again."""
    await group_presence(redis_client.shared_client()).report(server_id="other-process", count=3)
    client = await client_for("ann", can_send=True)
    with override_settings(BROADCAST_CONFIRM_ABOVE=2):
        held = await post_form(client, {"text": "to everyone", "confirmed": ""})
        body = held.content.decode()
        assert held.status_code == 409
        assert "This message would reach 3 clients, more than\n      2 (BROADCAST_CONFIRM_ABOVE)." in body
        assert ">to everyone</textarea>" in body
        assert await kept_seqs() == []
        sent = await post_form(client, {"text": "to everyone", "confirmed": "yes"})
    assert sent.status_code == 303
    assert await kept_seqs() == [1]


async def test_redis_down_is_reported_recorded_and_keeps_the_text(dead_redis_url):
    """With Redis unreachable the page says nothing was sent, keeps the text and logs a failure."""
    client = await client_for("ann", can_send=True)
    point_django_at(dead_redis_url)
    response = await post_form(client, {"text": "during the outage"})
    body = response.content.decode()
    assert response.status_code == 503
    assert (
        "Cannot reach Redis: nothing was sent. Try again in a moment." in body
        and dead_redis_url.split("//")[1].split("/")[0] not in body
    )
    assert ">during the outage</textarea>" in body
    record = await BroadcastRecord.objects.aget()
    assert (record.sender, record.status, record.clients, record.seq) == ("ann", "failed", None, None)
    assert record.error == "Cannot reach Redis: nothing was sent. Try again in a moment."
    status = await client.get(STATUS)
    assert status.status_code == 200
    assert status.json()["clients"] is None
    assert status.json()["redis"] == "Redis unreachable"


async def test_post_without_csrf_token_is_refused():
    """The send form is CSRF-protected."""
    client = AsyncClient(enforce_csrf_checks=True)
    user = await User.objects.acreate_user("ann", password="pw", is_staff=True, is_superuser=True)
    await client.aforce_login(user)
    response = await client.post(PAGE, {"text": "no token"})
    assert response.status_code == 403
    assert b"CSRF verification failed" in response.content
    assert await kept_seqs() == []


def test_admin_pages_link_to_the_operator_page(admin_client_for_links):
    """Every admin page, the index included, links to the operator page for staff."""
    body = admin_client_for_links.get("/admin/").content.decode()
    assert '<a id="operator-link" href="/operator/">Operator page</a>' in body


@pytest.fixture
def admin_client_for_links():
    from django.test import Client

    client = Client()
    client.force_login(User.objects.create_user("sam", password="pw", is_staff=True))
    return client


async def test_level_and_expiry_go_out_and_bad_ones_are_refused_with_the_form_kept(redis_url):
    """The form's level and expiry reach the frame and the log; a bad expiry is refused (400)
    and the page keeps the text, level and expiry as typed."""
    sub = Subscriber(redis_url)
    client = await client_for("ida", can_send=True)
    refused = await post_form(client, {"text": "Deploy", "level": "critical", "expires_in": "soon"})
    assert refused.status_code == 400
    page = refused.content.decode()
    assert "expires_in must be a number of seconds above 0; got &#x27;soon&#x27;." in page
    assert '<option value="critical" selected>' in page and 'value="soon"' in page
    assert await kept_seqs() == []
    sent = await post_form(client, {"text": "Deploy", "level": "critical", "expires_in": "90"})
    assert sent.status_code == 303
    [frame] = sub.frames(1)
    assert (frame["level"], frame["text"]) == ("critical", "Deploy")
    record = await BroadcastRecord.objects.aget(message_id=frame["id"])
    assert (record.level, round((record.expires - record.created).total_seconds())) == ("critical", 90)


async def test_retract_asks_first_then_retracts_and_needs_the_permission(redis_url):
    """Without `confirmed` the page asks (409, nothing sent); confirmed, it retracts and the log
    says who; staff without the permission get 403; an unknown id is 404."""
    sub = Subscriber(redis_url)
    ida = await client_for("ida", can_send=True)
    assert (await post_form(ida, {"text": "Oops"})).status_code == 303
    [message] = sub.frames(1)
    asked = await ida.post("/operator/retract/", {"id": message["id"]})
    assert asked.status_code == 409
    assert "Retract broadcast #1 (“Oops”)?" in asked.content.decode()
    assert await kept_seqs() == [1]
    watcher = await client_for("walt")
    assert (
        await watcher.post("/operator/retract/", {"id": message["id"], "confirmed": "yes"})
    ).status_code == 403
    gone = await ida.post("/operator/retract/", {"id": "0" * 32, "confirmed": "yes"})
    assert gone.status_code == 404
    done = await ida.post("/operator/retract/", {"id": message["id"], "confirmed": "yes"})
    assert (done.status_code, done["Location"]) == (303, PAGE)
    [retraction] = sub.frames(1)
    assert (retraction["type"], retraction["id"], retraction["seq"]) == ("retract", message["id"], 2)
    record = await BroadcastRecord.objects.aget(message_id=message["id"])
    assert record.retracted_by == "ida" and record.retracted is not None
    status = (await ida.get(STATUS)).json()["recent"][0]
    assert (status["retracted_by"], status["delivered"], status["seen"]) == ("ida", 0, 0)
