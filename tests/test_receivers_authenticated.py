"""BROADCAST_RECEIVERS=authenticated: anonymous receivers and unknown tokens are refused with
4401 and a clear error, a revoked token's open connection is closed with 4401 within 5 s, and
`manage.py listen` says what to do instead of retrying for ever."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid

import pytest
import websockets

from tests.support import ROOT, Client, manage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

ERROR = {"type": "error", "code": 4401, "reason": "sign in to receive broadcasts"}


async def refused(url: str, headers: dict[str, str] | None = None) -> tuple[list[dict[str, object]], int]:
    """What the server sends a receiver it refuses: its frames and the close code."""
    frames = []
    async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
        try:
            async for raw in ws:
                frames.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
    assert ws.close_code is not None
    return frames, ws.close_code


def receiver_token(env: dict[str, str], username: str) -> str:
    create = f"from django.contrib.auth.models import User; User.objects.create_user({username!r})"
    done = manage(["shell", "-c", create], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    done = manage(["create_receiver_token", username], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.splitlines()[0]
        == f"Receiver token for {username!r} created. Its secret, shown this once:"
    )
    return done.stdout.splitlines()[1].strip()


async def closed_after(taken: Client, code: str, env: dict[str, str]) -> float:
    """Run `code` (which prints the time.time() of its change) in another process; the seconds
    from that change until the server closed `taken`."""
    done = manage(["shell", "-c", code], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    changed_at = float(done.stdout.strip().splitlines()[-1])
    assert taken.task is not None
    await asyncio.wait_for(asyncio.shield(taken.task), 10)  # the reader ends with the connection
    return time.time() - changed_at


@pytest.mark.parametrize(
    "revoke", ["t.save()", "ReceiverToken.objects.filter(pk=t.pk).update(revoked=t.revoked)"]
)
async def test_only_authenticated_receivers_are_taken_and_a_revoked_token_is_closed(
    revoke, daphne, env_for, redis_url
):
    """No credential, an unknown token, a made-up session: 4401 after an error frame saying
    why. A valid receiver token is taken; revoked in another process (saved, or by a queryset
    update, which sends no signal), its connection is closed with 4401 within 5 s."""
    env = env_for(redis_url)
    server = daphne(BROADCAST_RECEIVERS="authenticated")
    name = f"svc-{uuid.uuid4().hex[:8]}"
    secret = receiver_token(env, name)
    assert await refused(server.ws) == ([ERROR], 4401)
    assert await refused(server.ws, {"Authorization": "Bearer rcv_nonsense"}) == ([ERROR], 4401)
    assert await refused(server.ws, {"Cookie": "sessionid=notasession"}) == ([ERROR], 4401)
    taken = await Client(server.ws).connect(additional_headers={"Authorization": f"Bearer {secret}"})
    try:
        await asyncio.to_thread(server.wait_for_clients, 1)
        code = ("import time\nfrom django.utils import timezone\n"
                  "from broadcaster.models import ReceiverToken\n"
                  f"t = ReceiverToken.objects.get(user__username={name!r}); t.revoked = timezone.now(); "
                  f"{revoke}; print(time.time())")  # fmt: skip
        took = await closed_after(taken, code, env)
        print(f"revoked token closed after {took:.2f} s")
        assert took <= 5
        assert taken.ws.close_code == 4401
        assert taken.frames[-1] == ERROR
    finally:
        await taken.close()


def test_listen_without_a_token_says_what_to_do(daphne, env_for, redis_url):
    """`manage.py listen` refused with 4401 exits 1 with one line naming --token."""
    server = daphne(BROADCAST_RECEIVERS="authenticated")
    done = subprocess.run([sys.executable, "manage.py", "listen", server.ws], cwd=ROOT,
                          env=env_for(redis_url), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "CommandError: The server refused this receiver (close code 4401: it takes only signed-in "
        "receivers): pass a receiver token (--token)."
    )


@pytest.mark.parametrize(
    "end_it",
    [
        "Session.objects.filter(session_key=key).update(expire_date=timezone.now() - timedelta(seconds=1))",
        "Session.objects.filter(session_key=key).delete()",
    ],
)
async def test_a_session_that_expires_or_is_deleted_without_a_logout_is_closed_within_5_s(
    end_it, daphne, env_for, redis_url
):
    """A receiver signed in by its session cookie (the admin's login form); the session then
    expires, or is deleted by a queryset (as `clearsessions` or a cache eviction would), in
    another process, with no logout signal: the sweep closes it with 4401 within 5 s."""
    from tests.support import AdminSession

    env = env_for(redis_url)
    server = daphne(BROADCAST_RECEIVERS="authenticated")
    name = f"ses-{uuid.uuid4().hex[:8]}"
    # Staff: the admin's login form is the one that signs it in.
    made = ("from django.contrib.auth.models import User\n"
            f"User.objects.create_user({name!r}, password='pw', is_staff=True)")  # fmt: skip
    assert manage(["shell", "-c", made], env=env, timeout=60).returncode == 0
    session = await asyncio.to_thread(lambda: AdminSession(server.http).log_in(name, "pw"))
    taken = await Client(server.ws).connect(additional_headers=session.headers())
    try:
        await asyncio.to_thread(server.wait_for_clients, 1)
        code = ("import time\nfrom datetime import timedelta\nfrom django.utils import timezone\n"
                "from django.contrib.sessions.models import Session\n"
                f"key = {session.session_key!r}\n{end_it}\nprint(time.time())")  # fmt: skip
        took = await closed_after(taken, code, env)
        print(f"session {'expired' if 'update' in end_it else 'deleted'}: closed after {took:.2f} s")
        assert took <= 5 and taken.ws.close_code == 4401 and taken.frames[-1] == ERROR
    finally:
        await taken.close()
