"""Sending from code and the API across real processes: the outbox with Redis stopped and
started, idempotency keys on two servers at once and after a lost answer, and the broadcast
log's database refusing writes (locked, read-only, full)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from broadcaster.backend.embedded_redis import server_binary
from tests import support
from tests.support import (
    Client,
    Daphne,
    RedisServer,
    base_env,
    create_token,
    free_port,
    http_request,
    manage,
    scrape,
    wait_until,
)

pytestmark = pytest.mark.integration


class Listener(Client):
    """A receiver that reconnects by itself (a Redis restart may close it), keeping every text."""

    async def keep_connected(self) -> None:
        while True:
            try:
                await self.connect()
                assert self.task is not None
                await self.task
            except OSError:
                pass
            await asyncio.sleep(0.2)  # (between reconnects, as a browser's backoff)


def post(token: str, text: str, key: str | None = None) -> tuple[dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers, json.dumps({"text": text}).encode()


async def test_committed_sends_with_redis_stopped_arrive_once_in_order_when_it_is_back(
    daphne, env_for, tmp_path
):
    """Redis stopped; a separate process commits two sends (it is told they are pending);
    Redis started again: the server's outbox sends them, once each, in commit order."""
    own = RedisServer(binary=server_binary(), port=free_port(), workdir=tmp_path)
    own.start()
    try:
        server = daphne(url=own.url)
        listener = Listener(server.ws)
        keeper = asyncio.create_task(listener.keep_connected())
        await listener.wait_for(lambda c: c.last_count() is not None, timeout=20, what="connected")
        own.stop()
        code = ("from django.db import transaction\nimport broadcaster\n"
                "for text in ('outbox one', 'outbox two'):\n"
                "    with transaction.atomic():\n"
                "        print(broadcaster.send(text).pending)\n")  # fmt: skip
        done = await asyncio.to_thread(manage, ["shell", "-c", code], env=env_for(own.url), timeout=120)
        assert (done.returncode, done.stdout.split()[-2:]) == (0, ["True", "True"]), done.stderr
        assert "kept pending: it goes out when Redis is back" in done.stderr
        own.start()
        await listener.wait_for(lambda c: "outbox two" in c.messages(), timeout=30, what="the outbox")
        # Once each: a later broadcast arrives after them with nothing repeated before it.
        sent = await asyncio.to_thread(manage, ["broadcast", "-m", "outbox after"], env=env_for(own.url))
        assert sent.returncode == 0, sent.stderr
        await listener.wait_for(lambda c: "outbox after" in c.messages(), timeout=30, what="the marker")
        assert [t for t in listener.messages() if t.startswith("outbox")] == ["outbox one", "outbox two",
                                                                             "outbox after"]  # fmt: skip
        keeper.cancel()
    finally:
        own.stop()


async def test_fifty_requests_with_one_key_on_two_servers_make_one_broadcast(daphne, redis_url):
    """50 POSTs at once with one Idempotency-Key, split over two server processes: one
    broadcast, 50 identical answers (status and body); the same key with another text: 422."""
    first, second = daphne(), daphne()
    token = create_token("idem-fifty", env=first.env)
    listener = await Listener(second.ws).connect()
    await listener.wait_for(lambda c: c.last_count() is not None, timeout=20, what="connected")
    headers, body = post(token, "idem fifty", key="deploy-7")
    requests = [http_request(s.port, "POST", "/api/broadcasts/", headers=headers, body=body)
                for s in [first, second] * 25]  # fmt: skip
    answers = await asyncio.gather(*requests)
    assert {a.status for a in answers} == {201}, [(a.status, a.body) for a in answers if a.status != 201]
    assert len({a.body for a in answers}) == 1, {a.body for a in answers}
    other_headers, other_body = post(token, "idem other", key="deploy-7")
    conflict = await http_request(
        first.port, "POST", "/api/broadcasts/", headers=other_headers, body=other_body
    )
    assert conflict.status == 422 and "used for a different broadcast" in conflict.json()["error"]
    marker_headers, marker_body = post(token, "idem marker")
    assert (await http_request(first.port, "POST", "/api/broadcasts/", headers=marker_headers,
                               body=marker_body)).status == 201  # fmt: skip
    await listener.wait_for(lambda c: "idem marker" in c.messages(), timeout=20, what="the marker")
    assert [t for t in listener.messages() if t.startswith("idem")] == ["idem fifty", "idem marker"]
    replayed = [a for a in answers if a.headers.get("idempotent-replayed") == "true"]
    print(f"50 requests: 1 sent, {len(replayed)} answered from the first's row before sending")


async def test_a_client_whose_answer_was_lost_retries_and_gets_one_broadcast(daphne, redis_url):
    """The first request is sent and its answer never read (the client timed out: its
    connection is closed once the broadcast is out); the retry with the same key gets the
    first broadcast's answer; one broadcast."""
    server = daphne()
    token = create_token("idem-retry", env=server.env)
    listener = await Listener(server.ws).connect()
    await listener.wait_for(lambda c: c.last_count() is not None, timeout=20, what="connected")
    headers, body = post(token, "idem retried", key="export-42")
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = ["POST /api/broadcasts/ HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    await listener.wait_for(lambda c: "idem retried" in c.messages(), timeout=20, what="the first send")
    writer.close()  # the client gave up: the server's answer is lost
    retry = await http_request(server.port, "POST", "/api/broadcasts/", headers=headers, body=body)
    assert retry.status == 201 and retry.headers.get("idempotent-replayed") == "true", retry.body
    marker_headers, marker_body = post(token, "idem marker 2")
    await http_request(server.port, "POST", "/api/broadcasts/", headers=marker_headers, body=marker_body)
    await listener.wait_for(lambda c: "idem marker 2" in c.messages(), timeout=20, what="the marker")
    assert [t for t in listener.messages() if t.startswith("idem")] == ["idem retried", "idem marker 2"]
    assert retry.json()["id"] == next(f["id"] for f in listener.frames if f.get("text") == "idem retried")


async def test_a_client_that_hangs_up_at_once_and_retries_gets_one_broadcast(daphne, redis_url):
    """Written and closed at once, three times over (the server may be anywhere in it: not
    started, the row written, the broadcast out), then retried until answered: one broadcast."""
    server = daphne()
    token = create_token("idem-hangup", env=server.env)
    listener = await Listener(server.ws).connect()
    await listener.wait_for(lambda c: c.last_count() is not None, timeout=20, what="connected")
    headers, body = post(token, "idem hung up", key="hangup-1")
    head = ["POST /api/broadcasts/ HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()
    retry = await http_request(server.port, "POST", "/api/broadcasts/", headers=headers, body=body)
    assert retry.status == 201, retry.body
    marker_headers, marker_body = post(token, "idem marker 3")
    await http_request(server.port, "POST", "/api/broadcasts/", headers=marker_headers, body=marker_body)
    await listener.wait_for(lambda c: "idem marker 3" in c.messages(), timeout=20, what="the marker")
    assert [t for t in listener.messages() if t.startswith("idem")] == ["idem hung up", "idem marker 3"]


def _private_database(tmp_path: Path, *, then: str = "") -> tuple[list[str], Path]:
    """A command prefix that runs daphne in a mount namespace of its own, its database on a
    64 MB tmpfs there (a copy of the suite's migrated one), after the shell step `then`."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs unshare and nsenter (util-linux)")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")
    source = Path(support.SHARED_DATABASE_URL.removeprefix("sqlite:///"))
    where = tmp_path / "db"
    where.mkdir()
    # (Copied by SQLite's backup, not cp: the suite's database is in WAL mode.)
    backup = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))"
    copy = f"{sys.executable} -c '{backup}'"
    script = (f'mount -t tmpfs -o size=64m tmpfs "$1" && {copy} "$2" "$1/db.sqlite3" && {then or "true"} '
              '&& shift 2 && exec "$@"')  # fmt: skip
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(where),
        str(source),
    ], where


def _inside(pid: int, *command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `command` in the mount namespace of process `pid`."""
    return subprocess.run(["nsenter", "-t", str(pid), "-m", *command], capture_output=True, text=True,
                          timeout=30, **kwargs)  # fmt: skip


async def test_a_broadcast_whose_row_cannot_be_written_is_refused_and_nothing_is_sent(redis_url, tmp_path):
    """The rule: the row first. With the database locked, read-only and full in turn, a POST
    is refused with 503 naming the cause, nothing reaches the receiver, /health/ready/ says
    unready and the write-failure counter moves; once the database takes writes, ready again
    and the next broadcast goes out."""
    prefix, where = _private_database(tmp_path)
    token = create_token("db-rule", env=base_env(redis_url, tmp_path / "var"))  # (before the copy)
    # A 2 s lock wait (20 s by default): the locked case's refusal comes sooner.
    env = base_env(redis_url, tmp_path / "var", DATABASE_URL=f"sqlite:///{where}/db.sqlite3?timeout=2")
    server = Daphne(env=env, log=tmp_path / "daphne.log", prefix=prefix).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        listener = await Listener(server.ws).connect()
        await listener.wait_for(lambda c: c.last_count() is not None, timeout=20, what="connected")

        async def ready() -> tuple[int, dict[str, Any]]:
            return await asyncio.to_thread(ready_now)

        def ready_now() -> tuple[int, dict[str, Any]]:
            try:
                with urllib.request.urlopen(server.http + "/health/ready/", timeout=30) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        def failures() -> float:
            return scrape(server.http)[1].get("broadcaster_log_write_failures_total", 0.0)

        async def refused(text: str, cause: str) -> None:
            headers, body = post(token, text)
            answer = await http_request(server.port, "POST", "/api/broadcasts/", headers=headers, body=body)
            print(f"{text}: {answer.status} {answer.json()['error']}")
            assert answer.status == 503 and cause in answer.json()["error"], answer.body
            assert "nothing was sent" in answer.json()["error"]
            status, said = await ready()
            assert status == 503 and cause in said["database"], said

        async def recovered(text: str) -> None:
            await asyncio.to_thread(wait_until, lambda: ready_now()[0] == 200, timeout=20, what="ready again")
            headers, body = post(token, text)
            answer = await http_request(server.port, "POST", "/api/broadcasts/", headers=headers, body=body)
            assert answer.status == 201, answer.body
            await listener.wait_for(lambda c: text in c.messages(), timeout=20, what=text)

        counted = failures()
        # Locked: another process holds an exclusive lock (SQLite waits its 2 s, then refuses).
        lock = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.read()"
        )
        command = ["nsenter", "-t", str(pid), "-m", sys.executable, "-c", lock, f"{where}/db.sqlite3"]
        locker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        await refused("db locked", "the database is locked")
        locker.communicate("", timeout=10)
        await recovered("db after lock")
        # Read-only: a read-only mount over the folder (SQLite says so as "readonly", or, on a
        # connection it opened before, as its journal that cannot be created: either way read-only).
        assert _inside(pid, "mount", "--bind", "-o", "ro", str(where), str(where)).returncode == 0
        await refused("db read-only", "the database is read-only")
        assert _inside(pid, "umount", str(where)).returncode == 0
        await recovered("db after read-only")
        # Full: the tmpfs filled up.
        _inside(pid, "sh", "-c", f"dd if=/dev/zero of={where}/fill bs=64k 2>/dev/null; sync")
        await refused("db full", "disk is full")
        assert _inside(pid, "rm", f"{where}/fill").returncode == 0
        await recovered("db after full")

        assert [t for t in listener.messages() if t.startswith("db ")] == [
            "db after lock", "db after read-only", "db after full"]  # fmt: skip
        assert failures() >= counted + 3
        log = server.log()
        for cause in ("the database is locked", "the database is read-only", "the database's disk is full"):
            assert f"The broadcast log could not be written (broadcast from api:db-rule): {cause}" in log
    finally:
        server.stop()


def test_a_read_only_database_is_said_at_start_up(redis_url, tmp_path):
    """A server whose database file cannot be written warns as it starts, and is not ready."""
    prefix, where = _private_database(tmp_path, then='mount -o remount,ro "$1"')
    env = base_env(redis_url, tmp_path / "var", DATABASE_URL=f"sqlite:///{where}/db.sqlite3")
    server = Daphne(env=env, log=tmp_path / "daphne.log", prefix=prefix).start()
    try:
        assert ("Every broadcast will be refused until the database takes writes: the database is read-only"
                in server.log())  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as unready:
            urllib.request.urlopen(server.http + "/health/ready/", timeout=30)
        assert unready.value.code == 503 and "read-only" in json.loads(unready.value.read())["database"]
    finally:
        server.stop()
