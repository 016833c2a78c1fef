"""The broadcast log and tokens in the Django admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from broadcaster.models import BroadcastRecord, PublishToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_log_is_listed_searchable_and_read_only(admin_client):
    """The log lists and searches broadcasts; nobody can add, change or delete entries."""
    BroadcastRecord.objects.create(
        sender="console:ann", text="<b>deploy</b> at five", status="sent", clients=3
    )
    BroadcastRecord.objects.create(sender="api:billing", text="invoice run", status="failed")
    listing = admin_client.get("/admin/broadcaster/broadcastrecord/", {"q": "deploy"})
    assert listing.status_code == 200
    body = listing.content.decode()
    assert "&lt;b&gt;deploy&lt;/b&gt; at five" in body and "invoice run" not in body
    assert admin_client.get("/admin/broadcaster/broadcastrecord/add/").status_code == 403
    filtered = admin_client.get("/admin/broadcaster/broadcastrecord/", {"status__exact": "failed"})
    assert "invoice run" in filtered.content.decode()


def test_token_created_in_admin_shows_secret_once_and_stores_hash(admin_client):
    """Adding a token in the admin shows its secret in a message; only the hash is stored."""
    response = admin_client.post("/admin/broadcaster/publishtoken/add/", {"name": "crm"}, follow=True)
    messages = [str(m) for m in response.context["messages"]]
    [shown] = [m for m in messages if m.startswith("Secret for crm")]
    secret = shown.rsplit(": ", 1)[1]
    token = PublishToken.objects.get(name="crm")
    assert secret not in token.secret_hash and len(token.secret_hash) == 64


def test_revoke_action_says_what_it_did(admin_client):
    """The admin's Revoke action names the tokens it revoked, and says so when there were none."""
    PublishToken.objects.create(name="crm", secret_hash="a" * 64)
    pk = PublishToken.objects.get(name="crm").pk
    url = "/admin/broadcaster/publishtoken/"
    response = admin_client.post(url, {"action": "revoke", "_selected_action": [pk]}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "Revoked 1 token(s): crm. Their secrets no longer work; a new token may take the same name."
    ]
    response = admin_client.post(url, {"action": "revoke", "_selected_action": [pk]}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "The selected tokens were revoked already; nothing changed."
    ]
