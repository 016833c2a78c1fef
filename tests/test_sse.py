"""The SSE fallback (/sse/broadcast/) against real daphne and Redis: the same frames as the
WebSocket for the same broadcasts (batches, retractions, expiry, audiences), resume by
Last-Event-ID, and the WebSocket's rules: count, slow-consumer bound, connection ceiling,
drain, sign-in, origin, and `seen` acks posted to any process, counted once per stream."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from broadcaster import sse_client
from tests.support import (
    ROOT,
    Client,
    Daphne,
    LineReader,
    SseClient,
    create_token,
    http_request,
    manage,
    sse_url,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

# A user in group `<name>-ops` with a receiver token; prints the token's secret.
USER = """
from django.contrib.auth.models import Group, User
from broadcaster.models import ReceiverToken
user = User.objects.create(username=NAME)
user.groups.add(Group.objects.get_or_create(name=NAME + "-ops")[0])
token = ReceiverToken(user=user)
secret = token.issue_secret()
token.save()
print(secret)
"""


def user_with_token(name: str, env: dict[str, str]) -> str:
    done = manage(["shell", "-c", f"NAME = {name!r}\n{USER}"], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


async def post(server: Daphne, token: str, body: dict[str, Any], path: str = "/api/broadcasts/") -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return await http_request(server.port, "POST", path, body=json.dumps(body).encode(), headers=headers)


def shown(client: Client) -> list[dict[str, Any]]:
    """The frames a receiver shows: all but the count (whose value depends on who else is on)."""
    return [f for f in client.frames if f["type"] != "count"]


def numbered(client: Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for frame in client.frames:
        if frame["type"] != "position":
            out.extend(frame["messages"] if frame["type"] == "batch" else [frame] if "seq" in frame else [])
    return out


async def test_sse_and_websocket_carry_the_same_frames(daphne, env_for, redis_url):
    """Anonymous and signed-in receivers on both transports, live and resumed (where history
    comes in batches): for the same broadcasts (to everyone, to a group, expiring, retracted),
    each SSE receiver gets exactly the frames its WebSocket twin gets, and each event's id is
    the place of the newest message in it."""
    server = daphne(BROADCAST_API_RATE_LIMIT="100000")
    env = env_for(redis_url)
    publisher = await asyncio.to_thread(create_token, f"sse-{uuid.uuid4().hex[:8]}", env=env)
    name = f"sse{uuid.uuid4().hex[:8]}"
    secret = await asyncio.to_thread(user_with_token, name, env)
    bearer = {"Authorization": f"Bearer {secret}"}
    pairs = [
        (await Client(server.ws).connect(), await SseClient(server.ws).connect()),
        (await Client(server.ws).connect(additional_headers=bearer),
         await SseClient(server.ws).connect(additional_headers=bearer)),
    ]  # fmt: skip
    await asyncio.to_thread(server.wait_for_clients, 4)
    sent = [
        (await post(server, publisher, {"text": "to all"})).json(),
        (await post(server, publisher, {"text": "to ops", "audience": f"group:{name}-ops"})).json(),
        (await post(server, publisher, {"text": "soon gone", "expires_in": 0.5})).json(),
        (await post(server, publisher, {"text": "critical", "level": "critical"})).json(),
    ]
    retracted = await http_request(server.port, "DELETE", f"/api/broadcasts/{sent[0]['id']}/",
                                   headers={"Authorization": f"Bearer {publisher}"})  # fmt: skip
    assert retracted.status == 204, retracted.body
    end = (await post(server, publisher, {"text": "end"})).json()["id"]
    for pair in pairs:
        for client in pair:
            await client.wait_for(lambda c: end in [f.get("id") for f in numbered(c)], timeout=20, what="end")
    for ws, sse in pairs:
        assert shown(sse) == shown(ws)
    anonymous, member = (ws for ws, _ in pairs)
    assert "to ops" not in anonymous.messages() and "to ops" in member.messages()
    assert any(f["type"] == "retract" for f in numbered(member))

    # Resumed from the start: history in batches, the same on both transports.
    first = numbered(member)[0]
    query = f"?since={first['seq'] - 1}&epoch={first['epoch']}"
    url = server.ws + query
    resumed = [(await Client(url).connect(**kw), await SseClient(url).connect(**kw))
               for kw in ({}, {"additional_headers": bearer})]  # fmt: skip
    for pair in resumed:
        for client in pair:
            await client.wait_for(lambda c: end in [f.get("id") for f in numbered(c)], timeout=20, what="end")
    for ws, sse in resumed:
        assert shown(sse) == shown(ws)
        assert any(f["type"] == "batch" for f in ws.frames)
    for ws, sse in [*pairs, *resumed]:
        assert [f["id"] for f in numbered(sse)] == [f["id"] for f in numbered(ws)]
        for frame, event_id in zip(sse.frames, sse.event_ids, strict=True):
            if frame["type"] in ("message", "retract", "batch"):
                newest = frame["messages"][-1] if frame["type"] == "batch" else frame
                assert event_id == f"{newest['epoch']}:{newest['seq']}"
    for client in [c for pair in [*pairs, *resumed] for c in pair]:
        await client.close()


async def test_last_event_id_resumes_with_no_loss_and_no_duplicate(daphne, env_for, redis_url):
    """A stream closed and reopened with the Last-Event-ID it had (as an EventSource does),
    on another process: it gets exactly what was sent meanwhile; an unknown id (another
    numbering) gets a reset and all that is kept; and the header beats a stale `since`."""
    servers = [daphne(), daphne()]
    env = env_for(redis_url)
    sse = await SseClient(servers[0].ws).connect()
    await sse.wait_for(lambda c: c.last_count() is not None, timeout=15, what="the first count")
    for text in ("one", "two"):
        assert (await asyncio.to_thread(manage, ["broadcast", "-m", text], env=env)).returncode == 0
    await sse.wait_for(lambda c: c.messages()[-1:] == ["two"], timeout=15, what="two")
    await sse.close()
    place = sse.last_id
    for text in ("three", "four"):
        assert (await asyncio.to_thread(manage, ["broadcast", "-m", text], env=env)).returncode == 0
    # The URL's since=0 is stale: the header wins.
    again = await SseClient(servers[1].ws + "?since=0", last_id=place).connect()
    await again.wait_for(lambda c: c.messages()[-1:] == ["four"], timeout=15, what="four")
    assert again.messages() == ["three", "four"]
    await again.close()
    # A Last-Event-ID that is not one (digits of another script): a new client's stream, not an error.
    odd = await SseClient(servers[0].ws, last_id="e:1\u00b2").connect()
    await odd.wait_for(lambda c: c.messages() == ["four"], timeout=15, what="the current announcement")
    await odd.close()
    assert "Traceback" not in servers[0].log()
    other = await SseClient(servers[1].ws, last_id="not-this-epoch:2").connect()
    await other.wait_for(lambda c: c.messages()[-1:] == ["four"], timeout=15, what="all kept")
    # A reset leaves the stream's place as it was (its reconnect works the same reset out again).
    assert other.frames[0]["type"] == "reset" and other.event_ids[0] == "not-this-epoch:2"
    assert other.messages() == ["one", "two", "three", "four"]
    await other.close()


def _raw_stream(port: int) -> socket.socket:
    """A GET of the stream from a client with a tiny receive window that then reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /sse/broadcast/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    return sock


async def test_sse_receivers_count_and_keep_the_bound(daphne, env_for, redis_url):
    """An SSE receiver counts as a client; one that stops reading is dropped as a slow consumer
    once BROADCAST_MAX_UNSENT_BYTES wait for it, and when it reads again the stream ends with
    `close` 4408 after what was queued."""
    server = daphne(BROADCAST_MAX_UNSENT_BYTES="65536", BROADCAST_SOCKET_SEND_BUFFER="65536",
                    BROADCAST_MAX_LENGTH="100000")  # fmt: skip
    env = env_for(redis_url, BROADCAST_MAX_LENGTH="100000")
    reader = await SseClient(server.ws).connect()
    stalled = await asyncio.to_thread(_raw_stream, server.port)
    await asyncio.to_thread(server.wait_for_clients, 2)
    await reader.wait_for(lambda c: c.last_count() == 2, timeout=15, what="a count of 2")
    # Words, not one 99,000-character word: the log these land in is shown in the admin (test_browser).
    text = ("x" * 99 + " ") * 989 + "x" * 9
    for _ in range(12):
        done = await asyncio.to_thread(manage, ["broadcast", "-m", text], env=env)
        assert done.returncode == 0, done.stderr
    await asyncio.to_thread(server.wait_for_clients, 1)
    await reader.wait_for(lambda c: len(c.messages()) == 12, timeout=30, what="12 messages")
    assert "slow consumer" in server.log()
    stalled.settimeout(15)
    received = b""
    while b"0\r\n\r\n" not in received[-16:]:
        chunk = await asyncio.to_thread(stalled.recv, 65536)
        if not chunk:
            break
        received += chunk
    stalled.close()
    assert len(received) < 12 * 99_000
    last = received.rstrip(b"\r\n0").rsplit(b"data: ", 1)[1].split(b"\n", 1)[0]
    assert json.loads(last)["code"] == 4408
    await reader.close()


async def test_ceiling_drain_sign_in_and_origin(daphne, env_for, redis_url):
    """BROADCAST_MAX_CONNECTIONS refuses an SSE receiver with `close` 1013; under
    BROADCAST_RECEIVERS=authenticated an anonymous one gets 4401; another site's origin gets
    403; a POST to the stream 405; and on SIGTERM an open stream ends with 1012."""
    full = daphne(BROADCAST_MAX_CONNECTIONS="1")
    first = await SseClient(full.ws).connect()
    await first.wait_for(lambda c: c.last_count() == 1, timeout=15, what="the first count")
    second = await SseClient(full.ws).connect()
    await second.wait_for(lambda c: c.ended, timeout=15, what="the refusal")
    assert (second.closed_with or {}).get("code") == 1013 and second.frames == []

    private = daphne(BROADCAST_RECEIVERS="authenticated")
    anonymous = await SseClient(private.ws).connect()
    await anonymous.wait_for(lambda c: c.ended, timeout=15, what="the refusal")
    assert anonymous.closed_with == {"type": "close", "code": 4401, "reason": "sign in to receive broadcasts"}

    with pytest.raises(sse_client.HttpError, match="403"):
        await sse_client.open_stream(sse_url(full.ws), headers={"Origin": "https://elsewhere.example"})
    answer = await http_request(full.port, "POST", "/sse/broadcast/", body=b"{}")
    assert answer.status == 405 and answer.headers.get("allow") == "GET"

    assert full.proc is not None
    full.proc.send_signal(signal.SIGTERM)
    await first.wait_for(lambda c: c.ended, timeout=30, what="the drain's close")
    assert (first.closed_with or {}).get("code") == 1012
    await first.close()


async def test_acks_reach_the_stream_from_any_process_once(daphne, env_for, redis_url):
    """`seen` acks posted to the stream's process (204) or to another one (202, relayed over
    Redis) count in the reach report, once per stream however often they are posted; an unknown
    stream is 404, a malformed post 400, an oversized one 413."""
    servers = [daphne(), daphne()]
    env = env_for(redis_url)
    publisher = await asyncio.to_thread(create_token, f"ack-{uuid.uuid4().hex[:8]}", env=env)
    streams = [await SseClient(servers[0].ws).connect(), await SseClient(servers[1].ws).connect()]
    await asyncio.to_thread(servers[0].wait_for_clients, 2)
    sent = (await post(servers[0], publisher, {"text": "ack me"})).json()
    for stream in streams:
        await stream.wait_for(lambda c: "ack me" in c.messages(), timeout=15, what="the message")
    assert await streams[0].ack(servers[0].http, [sent["id"]]) == 204
    assert await streams[1].ack(servers[0].http, [sent["id"]]) == 202
    for _ in range(3):  # repeats count for nothing
        assert await streams[0].ack(servers[1].http, [sent["id"]]) == 202
    report_path = f"/api/broadcasts/{sent['id']}/"
    deadline = time.monotonic() + 15
    while True:
        answer = await http_request(servers[0].port, "GET", report_path,
                                    headers={"Authorization": f"Bearer {publisher}"})  # fmt: skip
        report = answer.json()
        if report["seen"] >= 2 or time.monotonic() > deadline:
            break
    assert (report["delivered"], report["seen"]) == (2, 2), report
    seen_url = servers[0].http + "/sse/broadcast/seen/"
    # Not signed by this site (a made-up secret for a real process): 404, nothing relayed.
    forged = streams[1].token.split(".")[0] + ".nosuchstream.0123456789abcdef01234567"
    assert await sse_client.post_json(seen_url, {"stream": forged, "seen": [sent["id"]]}) == 404
    assert await sse_client.post_json(seen_url, {"stream": streams[0].token, "seen": ["nope"]}) == 400
    assert await sse_client.post_json(seen_url, {"stream": streams[0].token, "seen": ["a" * 32] * 200}) in (
        400,
        413,
    )
    assert await sse_client.post_json(seen_url, ["not", "an", "object"]) == 400
    # Acks that count for nothing, past the allowance (20 at once): the stream ends with 4429.
    flood = {"stream": streams[1].token, "seen": [uuid.uuid4().hex for _ in range(25)]}
    assert await sse_client.post_json(seen_url, flood) == 202
    await streams[1].wait_for(lambda c: c.ended, timeout=15, what="the 4429 close")
    assert (streams[1].closed_with or {}).get("code") == 4429
    for stream in streams:
        await stream.close()


async def test_listen_over_sse_prints_resumes_and_reports_seen(daphne, env_for, redis_url):
    """`manage.py listen --transport sse` with the WebSocket URL: it prints each broadcast,
    reports it seen (the report counts it), and after the server restarts it resumes with
    no loss and no duplicate."""
    server = daphne()
    env = env_for(redis_url)
    publisher = await asyncio.to_thread(create_token, f"lsse-{uuid.uuid4().hex[:8]}", env=env)
    command = [sys.executable, "manage.py", "listen", "--transport", "sse", server.ws]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        errors = LineReader(proc.stderr)
        errors.wait_for(
            lambda line: line.startswith("Connected") and "(SSE)" in line, timeout=30, what="connect"
        )
        out = LineReader(proc.stdout)
        sent = (await post(server, publisher, {"text": "Over SSE", "level": "warning"})).json()
        await asyncio.to_thread(out.wait_for, lambda line: line.endswith("] WARNING: Over SSE"),
                                timeout=15, what="the line")  # fmt: skip
        deadline = time.monotonic() + 15
        while (report := (await http_request(server.port, "GET", f"/api/broadcasts/{sent['id']}/",
                          headers={"Authorization": f"Bearer {publisher}"})).json())["seen"] < 1:  # fmt: skip
            assert time.monotonic() < deadline, report
        server.stop()
        assert (await asyncio.to_thread(manage, ["broadcast", "-m", "While away"], env=env)).returncode == 0
        server.start()
        await asyncio.to_thread(out.wait_for, lambda line: line.endswith("] While away"),
                                timeout=30, what="the missed line")  # fmt: skip
        assert (await asyncio.to_thread(manage, ["broadcast", "-m", "After"], env=env)).returncode == 0
        await asyncio.to_thread(out.wait_for, lambda line: line.endswith("] After"), timeout=15, what="after")
        printed = [line for line in out.seen if line.startswith("[")]
        assert [line.split("] ", 1)[1] for line in printed] == ["WARNING: Over SSE", "While away", "After"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
