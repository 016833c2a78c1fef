"""Announcement lifecycle through the console and the API, against real daphne and Redis:
levels, expiry (not the current announcement once expired, still replayed in order), and
retraction (live, on resume, never current), with the numbering whole."""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
import sys
import time
import uuid
from datetime import datetime
from typing import Any

from tests.support import ROOT, Client, Daphne, LineReader, create_token, http_request, manage


def numbered(client: Client) -> list[dict[str, Any]]:
    """The client's numbered frames (messages and retractions), batches unpacked, in order."""
    out: list[dict[str, Any]] = []
    for frame in client.frames:
        if frame["type"] in ("message", "retract"):
            out.append(frame)
        elif frame["type"] == "batch":
            out.extend(frame["messages"])
    return out


async def first_frames(url: str) -> list[dict[str, Any]]:
    """What a client connecting to `url` is sent before its first count update: its backlog."""
    client = await Client(url).connect()
    await client.wait_for(lambda c: c.last_count() is not None, timeout=15, what="the first count")
    await client.close()
    before = client.frames[: next(i for i, f in enumerate(client.frames) if f["type"] == "count")]
    return numbered(Client(url, frames=before))


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def api(server: Daphne, method: str, path: str, secret: str | None, body: Any = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    payload = b"" if body is None else json.dumps(body).encode()
    return await http_request(server.port, method, path, headers=headers, body=payload)


async def report_when(server: Daphne, path: str, secret: str, done: Any, *, timeout: float = 15) -> Any:
    """GET `path` until `done(report)` (reach counts reach Redis once per count interval)."""
    deadline = time.monotonic() + timeout
    while not done(report := (await api(server, "GET", path, secret)).json()):
        assert time.monotonic() < deadline, f"the report did not come to pass: {report}"
    return report


async def test_console_levels_retraction_and_current_announcement(daphne, env_for, redis_url):
    """`broadcast --level/--expires-in/--retract`: frames carry the level and expiry, a
    retraction reaches a live client and a resuming one, in order, and a retracted message is
    not a new client's current announcement."""
    server = daphne()
    env = env_for(redis_url)
    live = await Client(server.ws).connect()
    await live.wait_for(lambda c: c.last_count() == 1, timeout=15, what="the count")

    done = await asyncio.to_thread(manage, ["broadcast", "--level", "critical", "--expires-in", "600",
                                            "-m", "Deploy at 17:00"], env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = await asyncio.to_thread(
        manage, ["broadcast", "--level", "warning", "-m", "Deploy at 71:00"], env=env
    )
    assert done.returncode == 0, done.stderr
    await live.wait_for(lambda c: len(numbered(c)) == 2, timeout=15, what="two messages")
    critical, mistake = numbered(live)
    assert (critical["level"], critical["text"], mistake["level"]) == (
        "critical",
        "Deploy at 17:00",
        "warning",
    )
    assert abs(seconds(critical["expires"]) - seconds(critical["time"]) - 600) < 0.01
    assert "expires" not in mistake

    # A new client now: the newest message is the current announcement.
    assert [f["id"] for f in await first_frames(server.ws)] == [mistake["id"]]

    done = await asyncio.to_thread(manage, ["broadcast", "--retract", mistake["id"]], env=env)
    assert (done.returncode, done.stdout.strip()) == (0, "Retracted (retraction #3)."), done.stderr
    await live.wait_for(lambda c: len(numbered(c)) == 3, timeout=15, what="the retraction")
    retraction = numbered(live)[2]
    assert {k: retraction[k] for k in ("type", "seq", "epoch", "id")} == {
        "type": "retract", "seq": 3, "epoch": critical["epoch"], "id": mistake["id"]}  # fmt: skip

    again = await asyncio.to_thread(manage, ["broadcast", "--retract", mistake["id"]], env=env)
    assert again.returncode == 0 and again.stdout.startswith(
        f"Retracted already, by console:{getpass.getuser()}"
    )
    unknown = await asyncio.to_thread(manage, ["broadcast", "--retract", "0" * 32], env=env)
    assert unknown.returncode == 1
    assert (
        "Not retracted: No broadcast with id '00000000000000000000000000000000' went out." in unknown.stderr
    )
    bad = await asyncio.to_thread(manage, ["broadcast", "--expires-in", "0", "-m", "x"], env=env)
    assert (bad.returncode, bad.stderr.strip()) == (
        1, "CommandError: expires_in must be a number of seconds above 0; got 0.0.")  # fmt: skip
    bad = await asyncio.to_thread(manage, ["broadcast", "--level", "urgent", "-m", "x"], env=env)
    assert bad.returncode == 2 and "invalid choice: 'urgent'" in bad.stderr

    # The newest message is retracted: a new client gets no current announcement (an older
    # one does not come back), from memory and from Redis alike (the first connect of a
    # process reads Redis; later ones, memory).
    assert await first_frames(server.ws) == []
    other = daphne()
    assert await first_frames(other.ws) == []
    # A resuming client gets all of it, in order, the retraction included: numbering whole.
    resumed = await Client(f"{server.ws}?since=0&epoch={critical['epoch']}").connect()
    await resumed.wait_for(lambda c: len(numbered(c)) == 3, timeout=15, what="the catch-up")
    assert [(f["seq"], f["type"]) for f in numbered(resumed)] == [
        (1, "message"),
        (2, "message"),
        (3, "retract"),
    ]
    await resumed.close()
    assert len(numbered(live)) == 3  # nothing twice, nothing more
    await live.close()


async def test_expired_message_is_not_current_but_is_replayed_in_order(daphne, env_for, redis_url):
    """An expiring message is the current announcement until it expires, then not; a resuming
    client still gets it in order, with its `expires` in the past."""
    server = daphne()
    env = env_for(redis_url)
    done = await asyncio.to_thread(manage, ["broadcast", "-m", "before"], env=env)
    assert done.returncode == 0, done.stderr
    done = await asyncio.to_thread(manage, ["broadcast", "--expires-in", "2", "-m", "Short-lived"], env=env)
    assert done.returncode == 0, done.stderr
    current = await first_frames(server.ws)
    assert [f["text"] for f in current] == ["Short-lived"]
    expires = seconds(current[0]["expires"])
    assert expires > time.time()
    # Wait for it to expire by asking as new clients do, until the answer changes.
    deadline = time.monotonic() + 15
    while (await first_frames(server.ws)) != []:
        assert time.monotonic() < deadline, "the expired message was still sent as current"
    assert time.time() >= expires - 0.05  # not before it expired (50 ms: the two clocks' rounding)
    resumed = await Client(f"{server.ws}?since=0&epoch={current[0]['epoch']}").connect()
    await resumed.wait_for(lambda c: len(numbered(c)) == 2, timeout=15, what="the catch-up")
    assert [(f["seq"], f["text"]) for f in numbered(resumed)] == [(1, "before"), (2, "Short-lived")]
    assert seconds(numbered(resumed)[1]["expires"]) <= time.time()
    await resumed.close()


async def test_api_levels_report_and_retraction(daphne, env_for, redis_url):
    """POST takes level and expires_in (400 for bad ones); GET reports the broadcast; DELETE
    retracts it (204, then 204 again without a second retraction; 404 unknown; 401 no token)."""
    server = daphne()
    env = env_for(redis_url)
    secret = await asyncio.to_thread(create_token, f"ops-{uuid.uuid4().hex[:8]}", env=env)
    live = await Client(server.ws).connect()
    await live.wait_for(lambda c: c.last_count() == 1, timeout=15, what="the count")

    for body, error in [
        ({"text": "x", "level": "urgent"}, "The level must be one of info, warning, critical; got 'urgent'."),
        ({"text": "x", "expires_in": "60"}, "expires_in must be a number of seconds above 0; got '60'."),
        ({"text": "x", "expires_in": -1}, "expires_in must be a number of seconds above 0; got -1."),
        ({"text": "x", "expires_in": 10**9}, "expires_in may be at most 2592000 seconds (30 days)."),
    ]:
        answer = await api(server, "POST", "/api/broadcasts/", secret, body)
        assert (answer.status, answer.json()) == (400, {"error": error})
    answer = await api(server, "POST", "/api/broadcasts/", secret,
                       {"text": "Disk 91% full", "level": "warning", "expires_in": 90})  # fmt: skip
    assert answer.status == 201, answer.body
    sent = answer.json()
    assert (sent["level"], round(seconds(sent["expires"]) - seconds(sent["time"]), 3)) == ("warning", 90.0)
    await live.wait_for(lambda c: len(numbered(c)) == 1, timeout=15, what="the message")
    assert {k: numbered(live)[0][k] for k in ("id", "level", "expires")} == {
        "id": sent["id"], "level": "warning", "expires": sent["expires"]}  # fmt: skip

    path = f"/api/broadcasts/{sent['id']}/"
    assert (await api(server, "GET", path, None)).status == 401
    assert (await api(server, "DELETE", path, None)).status == 401
    assert (await api(server, "PUT", path, secret)).status == 405
    assert (await api(server, "GET", f"/api/broadcasts/{'f' * 32}/", secret)).status == 404
    for slash in ("/", ""):  # without the trailing slash too (APPEND_SLASH cannot redirect a DELETE)
        gone = await api(server, "DELETE", f"/api/broadcasts/{'f' * 32}{slash}", secret)
        assert (gone.status, gone.json()) == (404, {"error": f"No broadcast with id '{'f' * 32}' went out."})
    unslashed = await api(server, "POST", "/api/broadcasts", secret, {"text": "x", "level": "urgent"})
    assert unslashed.status == 400

    answer = await api(server, "DELETE", path, secret)
    assert (answer.status, answer.body) == (204, b"")
    await live.wait_for(lambda c: len(numbered(c)) == 2, timeout=15, what="the retraction")
    assert numbered(live)[1]["type"] == "retract" and numbered(live)[1]["id"] == sent["id"]
    assert (await api(server, "DELETE", path, secret)).status == 204  # again: nothing new sent
    report = await report_when(server, path, secret, lambda r: r["delivered"] == 1)
    sender = report.pop("retracted_by")
    assert sender.startswith("api:ops-")
    assert seconds(report.pop("retracted")) <= time.time()
    assert report == {"id": sent["id"], "seq": 1, "time": sent["time"], "sender": sender,
                      "text": "Disk 91% full", "level": "warning", "audience": ["everyone"],
                      "expires": sent["expires"],
                      "clients": 1, "delivered": 1, "seen": 0}  # fmt: skip
    resumed = await Client(f"{server.ws}?since=0&epoch={numbered(live)[0]['epoch']}").connect()
    await resumed.wait_for(lambda c: len(numbered(c)) == 2, timeout=15, what="the catch-up")
    assert [f["type"] for f in numbered(resumed)] == ["message", "retract"]
    await resumed.close()
    assert len(numbered(live)) == 2
    await live.close()


async def test_listen_prefixes_levels_says_retracted_and_reports_seen(daphne, env_for, redis_url):
    """`listen` prints the level, says what a retraction took back, and reports each printed
    message seen: the API's report counts it."""
    server = daphne()
    env = env_for(redis_url)
    secret = await asyncio.to_thread(create_token, f"listen-{uuid.uuid4().hex[:8]}", env=env)
    proc = subprocess.Popen([sys.executable, "manage.py", "listen", server.ws], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        LineReader(proc.stderr).wait_for(
            lambda line: line.startswith("Connected"), timeout=30, what="connect"
        )
        out = LineReader(proc.stdout)
        answer = await api(
            server, "POST", "/api/broadcasts/", secret, {"text": "Fire drill", "level": "critical"}
        )
        sent = answer.json()
        await asyncio.to_thread(out.wait_for, lambda line: line.endswith("] CRITICAL: Fire drill"),
                                timeout=15, what="the critical line")  # fmt: skip
        path = f"/api/broadcasts/{sent['id']}/"
        report = await report_when(server, path, secret, lambda r: r["seen"] == 1)
        assert report["delivered"] == 1
        assert (await api(server, "DELETE", path, secret)).status == 204
        await asyncio.to_thread(out.wait_for, lambda line: line.endswith("] (Retracted: 'Fire drill')"),
                                timeout=15, what="the retraction line")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)
