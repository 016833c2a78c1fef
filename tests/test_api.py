"""POST /api/broadcasts/: every status code, the rate limit, and tokens stored only hashed."""

from __future__ import annotations

import io
import json

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import AsyncClient, override_settings
from django.utils import timezone

from broadcaster.models import BroadcastRecord, PublishToken, hash_secret
from broadcaster.sending import ratelimit
from broadcaster.sending.publish import EMPTY
from tests.conftest import point_django_at
from tests.support import Subscriber

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/broadcasts/"


@pytest.fixture
def secret() -> str:
    out = io.StringIO()
    call_command("create_publish_token", "billing", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Token 'billing' created. Its secret, shown this once:"
    return lines[1]


async def post(body: object, *, secret: str | None = None, raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    data = raw if raw is not None else json.dumps(body).encode()
    return await AsyncClient().post(URL, data=data, content_type="application/json", headers=headers)


async def test_201_publishes_and_reports_id_seq_and_clients(secret, redis_url):
    """A good request publishes through the one publish path and says what went out."""
    sub = Subscriber(redis_url)
    response = await post({"text": "from billing"}, secret=secret)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "seq", "time", "clients", "level", "expires", "audience"}
    assert body["audience"] == ["everyone"]
    assert (body["seq"], body["clients"]) == (1, 0)
    assert sub.texts(1) == ["from billing"]
    record = await BroadcastRecord.objects.aget(seq=1)
    assert (record.sender, record.text, record.status, record.message_id) == (
        "api:billing", "from billing", "sent", body["id"])  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        (b"{not json", 400, "The body is not JSON."),
        (b'{"text": 5}', 400, 'Send a JSON object with a string "text".'),
        (b'["text"]', 400, 'Send a JSON object with a string "text".'),
        (b'{"text": "   "}', 400, EMPTY),
        (b'{"text": "a\\ud800b"}', 400, "The message is not valid UTF-8 text (at character 2)."),
        # Only zero-width and invisible characters: a blank announcement (issue 26, item 8).
        ('{"text": "\u200b\u2060\ufeff\u200e\u200f"}'.encode(), 400, EMPTY),
        ('{"text": "\u202a \u2066\u3164\u2800\U000e0041\\n\\t"}'.encode(), 400, EMPTY),
        # 2,000 deep: RecursionError in the parser, once answered with Django's HTML 500 (item 6).
        (
            b'{"text": ' + b"[" * 2000 + b"]" * 2000 + b"}",
            400,
            "The body is nested too deep to be a broadcast.",
        ),
        (b"[" * 100_000, 400, "The body is nested too deep to be a broadcast."),
    ],
)
async def test_400_for_malformed_bodies(secret, raw, status, error):
    """Malformed JSON, a wrong type and an empty text each get a JSON error."""
    response = await post(None, secret=secret, raw=raw)
    assert (response.status_code, response.json()) == (status, {"error": error})
    assert response["Cache-Control"] == "no-store"


async def test_413_over_the_size_limit(secret):
    """Text over BROADCAST_MAX_LENGTH is refused with 413 and the limit named."""
    with override_settings(BROADCAST_MAX_LENGTH=5):
        response = await post({"text": "123456"}, secret=secret)
    assert (response.status_code, response.json()) == (
        413,
        {"error": "The message is 6 characters long; the limit is 5 (BROADCAST_MAX_LENGTH)."},
    )


async def test_413_for_a_body_over_the_upload_limit(secret):
    """A body bigger than Django accepts gets a JSON 413, not Django's HTML error page."""
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        response = await post({"text": "x" * 2000}, secret=secret)
    assert (response.status_code, response.json()) == (
        413,
        {"error": "The body is over 1000 bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."},
    )


async def test_405_for_anything_but_post(secret):
    """GET (or any other method) gets a JSON 405 naming the one allowed."""
    response = await AsyncClient().get(URL, headers={"Authorization": f"Bearer {secret}"})
    assert (response.status_code, response["Allow"], response.json()) == (405, "POST", {"error": "Use POST."})


async def test_401_missing_or_unknown_token_and_403_revoked(secret):
    """No token or a wrong one: 401 with WWW-Authenticate; a revoked one: 403."""
    missing = await post({"text": "x"})
    assert (missing.status_code, missing["WWW-Authenticate"]) == (401, "Bearer")
    wrong = await post({"text": "x"}, secret="not-a-token")
    assert (wrong.status_code, wrong.json()) == (401, {"error": "Unknown token."})
    from django.utils import timezone

    await PublishToken.objects.filter(name="billing").aupdate(revoked=timezone.now())
    revoked = await post({"text": "x"}, secret=secret)
    assert (revoked.status_code, revoked.json()) == (403, {"error": "This token was revoked."})


async def test_429_with_retry_after_past_the_rate_limit(secret):
    """The third send in a window of two is refused with Retry-After."""
    with override_settings(BROADCAST_API_RATE_LIMIT=2, BROADCAST_API_RATE_WINDOW=60):
        codes = [(await post({"text": f"n{i}"}, secret=secret)).status_code for i in range(2)]
        limited = await post({"text": "one too many"}, secret=secret)
    assert codes == [201, 201]
    assert limited.status_code == 429
    assert 1 <= int(limited["Retry-After"]) <= 60


class FromAddress(AsyncClient):
    """A test client whose requests come from `address` (the ASGI scope's client)."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def _base_scope(self, **request):
        return {**super()._base_scope(**request), "client": [self.address, 0]}


async def test_failed_token_checks_are_limited_per_address(secret, caplog):
    """Past BROADCAST_API_FAILED_AUTH_LIMIT wrong tokens from one address in a window, that
    address gets 429 with Retry-After, even with the right token; another address is not
    affected, and one WARNING says so."""
    client = FromAddress("203.0.113.7")
    other = FromAddress("198.51.100.9")

    async def try_token(c: FromAddress, token: str):
        return await c.post(URL, data=b'{"text": "x"}', content_type="application/json",
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip

    with override_settings(BROADCAST_API_FAILED_AUTH_LIMIT=3, BROADCAST_API_RATE_WINDOW=60):
        codes = [(await try_token(client, f"guess-{i}")).status_code for i in range(3)]
        blocked = await try_token(client, secret)
        elsewhere = await try_token(other, secret)
    assert codes == [401, 401, 401]
    assert (blocked.status_code, blocked.json()) == (
        429, {"error": "Too many failed token checks from this address; retry later."})  # fmt: skip
    assert 1 <= int(blocked["Retry-After"]) <= 60
    assert elsewhere.status_code == 201
    ours = [r.getMessage() for r in caplog.records if r.name == "broadcaster.sending.api"]
    assert ours == ["Refusing token checks from 203.0.113.7 for up to 60 s: 3 failed"]


async def _post_from(address: str, token: str) -> int:
    """The status of one publish from `address` with `token`."""
    client = FromAddress(address)
    response = await client.post(URL, data=b'{"text": "x"}', content_type="application/json",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    return response.status_code


async def test_ipv4_clients_on_a_dual_stack_socket_are_counted_as_ipv4(secret):
    """HOST=:: gives IPv4 clients IPv4-mapped addresses: each is its own address, not one /64
    that all IPv4 clients would share."""

    with override_settings(BROADCAST_API_FAILED_AUTH_LIMIT=1):
        codes = [
            await _post_from("::ffff:203.0.113.20", "wrong"),
            await _post_from("::ffff:203.0.113.21", secret),
        ]
        codes.append(await _post_from("203.0.113.20", secret))
    assert codes == [401, 201, 429]


async def test_ipv6_clients_are_counted_by_their_64(secret):
    """Two addresses in one IPv6 /64 share one budget (a host can pick from its whole /64);
    another /64 has its own."""

    with override_settings(BROADCAST_API_FAILED_AUTH_LIMIT=1):
        tries = [
            ("2001:db8:1:2::10", "wrong"),
            ("2001:db8:1:2:ffff::1", secret),
            ("2001:db8:1:3::10", secret),
        ]
        codes = [await _post_from(address, token) for address, token in tries]
    assert codes == [401, 429, 201]


async def test_failed_token_limit_window_ends(secret, redis_url):
    """Once the window is over (its Redis key expired), the address may try again."""
    import redis.asyncio as aioredis

    client = FromAddress("203.0.113.8")

    async def try_token(token: str) -> int:
        response = await client.post(URL, data=b'{"text": "x"}', content_type="application/json",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        return response.status_code

    with override_settings(BROADCAST_API_FAILED_AUTH_LIMIT=1):
        assert [await try_token("wrong"), await try_token(secret)] == [401, 429]
        r = aioredis.Redis.from_url(redis_url)
        await r.delete(ratelimit.failures_key("203.0.113.8"))  # what the window's expiry does
        await r.aclose()
        assert await try_token(secret) == 201


async def test_503_when_redis_is_down(secret, dead_redis_url):
    """With Redis unreachable the API answers 503 without naming where Redis is; the log records it
    as failed."""
    point_django_at(dead_redis_url)
    response = await post({"text": "x"}, secret=secret)
    assert response.status_code == 503
    assert response.json() == {"error": "Cannot reach Redis: nothing was sent. Try again in a moment."}
    assert "127.0.0.1" not in response.content.decode()
    record = await BroadcastRecord.objects.aget()
    assert (record.sender, record.text, record.status) == ("api:billing", "x", "failed")


def test_secret_is_stored_only_hashed(secret):
    """The database holds the SHA-256 of the secret, never the secret."""
    token = PublishToken.objects.get(name="billing")
    assert token.secret_hash == hash_secret(secret)
    assert secret not in {token.secret_hash, token.name}


def test_duplicate_name_is_a_clear_error(secret):
    """Creating a second token with the same name fails with a message."""
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="An active token named 'billing' exists already"):
        call_command("create_publish_token", "billing", stdout=io.StringIO())


async def test_a_revoked_name_can_be_reused_and_only_the_new_secret_works(secret):
    """Revoke 'billing', create 'billing' again: the old secret gets 403, the new one 201."""
    await PublishToken.objects.filter(name="billing").aupdate(revoked=timezone.now())
    out = io.StringIO()
    await sync_to_async(call_command)("create_publish_token", "billing", stdout=out)
    new_secret = out.getvalue().splitlines()[1]
    assert (await post({"text": "old"}, secret=secret)).status_code == 403
    assert (await post({"text": "new"}, secret=new_secret)).status_code == 201
    assert await PublishToken.objects.filter(name="billing").acount() == 2


async def test_audience_is_checked_named_in_the_answer_and_the_log(secret, redis_url):
    """A bad audience is a 400 saying which, and nothing is sent or numbered; a good one with
    nobody connected is sent (kept for when they connect) and says 0 clients."""
    from django.contrib.auth.models import Group

    await Group.objects.acreate(name="ops")
    for audience, error in [
        ("group:dev", "No group 'dev' exists: nothing was sent."),
        (["group:ops", "user:nobody"], "No user 'nobody' exists: nothing was sent."),
        ("ops", "Unknown audience 'ops'; an audience is one of everyone, authenticated, staff, "
                "group:<value>, perm:<value>, user:<value>."),
        ({"group": "ops"},
         "The audience must be a string or a non-empty list of strings; got {'group': 'ops'}."),
    ]:  # fmt: skip
        response = await post({"text": "hi", "audience": audience}, secret=secret)
        assert (response.status_code, response.json()) == (400, {"error": error})
    assert await BroadcastRecord.objects.acount() == 0
    response = await post({"text": "to ops", "audience": ["staff", "group:ops", "staff"]}, secret=secret)
    assert response.status_code == 201
    body = response.json()
    assert (body["seq"], body["clients"], body["audience"]) == (1, 0, ["group:ops", "staff"])
    record = await BroadcastRecord.objects.aget(seq=1)
    assert record.audience == ["group:ops", "staff"]
