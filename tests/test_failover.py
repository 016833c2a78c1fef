"""Redis failover under Sentinel: a real master, a real replica and three real Sentinels; a
real daphne that finds the master through them; clients that resume with `since`; broadcasts
through the API at 20/s, retried until acknowledged; the master SIGKILLed in the middle.
Every acknowledged broadcast reaches every client exactly once, in order."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time

import pytest

from broadcaster.embedded_redis import server_binary
from tests.support import Daphne, ResumingClient, SentinelGroup, base_env, http_request, manage

pytestmark = pytest.mark.django_db(transaction=True)

RATE = 20  # broadcasts per second
SECONDS = 12
KILL_AT = 3.0


@pytest.fixture
def sentinel_group(tmp_path):
    (tmp_path / "redis").mkdir()
    group = SentinelGroup(server_binary(), tmp_path / "redis").start()
    yield group
    group.stop()


async def test_master_killed_mid_stream_loses_no_acknowledged_broadcast(sentinel_group, tmp_path):
    env = base_env("", tmp_path / "var", **sentinel_group.env, BROADCAST_MIN_REPLICAS="1",
                   BROADCAST_API_RATE_LIMIT="100000")  # fmt: skip
    del env["REDIS_URL"]
    created = manage(["create_publish_token", "failover"], env=env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.splitlines()[1].strip()
    server = Daphne(env=env, log=tmp_path / "daphne.log").start()
    clients = [ResumingClient(server.ws) for _ in range(20)]
    acked: list[int] = []
    failures: list[float] = []
    gaps: list[float] = []
    try:
        deadline = time.monotonic() + 20
        while not all(c.connects for c in clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert all(c.connects for c in clients)
        started = time.monotonic()
        last_ok = started
        killed = False
        i = 0
        while time.monotonic() - started < SECONDS:
            if not killed and time.monotonic() - started >= KILL_AT:
                sentinel_group.servers["master"].stop()  # SIGKILL
                killed = True
            body = json.dumps({"text": f"m{i}"}).encode()
            try:
                answer = await http_request(server.port, "POST", "/api/broadcasts/", body=body, timeout=10,
                                            headers={"Authorization": f"Bearer {secret}",
                                                     "Content-Type": "application/json"})  # fmt: skip
            except (OSError, TimeoutError):
                answer = None
            now = time.monotonic()
            if answer is not None and answer.status == 201:
                acked.append(answer.json()["seq"])
                gaps.append(now - last_ok)
                last_ok = now
                i += 1
                await asyncio.sleep(max(0.0, 1 / RATE - (time.monotonic() - now)))
            else:
                failures.append(now)
                await asyncio.sleep(0.05)  # the sender retries what was not acknowledged
        assert killed and sentinel_group.master_port() != sentinel_group.servers["master"].port
        unavailable = max(gaps)
        print(
            f"acknowledged {len(acked)} broadcasts; {len(failures)} attempts not acknowledged; "
            f"publishing unavailable for {unavailable:.1f} s at most"
        )
        for client in clients:
            deadline = time.monotonic() + 30
            while client.seqs[-1:] != acked[-1:] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        for client in clients:
            assert len(client.seqs) == len(set(client.seqs)), "a broadcast arrived twice"
            assert client.seqs == sorted(client.seqs), "out of order"
            missing = sorted(set(acked) - set(client.seqs))
            assert not missing, f"acknowledged but never received: {missing[:10]}"
        assert unavailable < 10
    finally:
        for client in clients:
            await client.stop()
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log[-3000:]


async def test_a_broadcast_no_replica_copied_is_not_acknowledged(sentinel_group, tmp_path):
    """BROADCAST_MIN_REPLICAS=1 and the replica stopped (SIGSTOP: connected, taking nothing): the
    API answers 503 with Retry-After, the log records it as failed; once the replica runs again,
    broadcasts are acknowledged."""
    from broadcaster.models import BroadcastRecord

    env = base_env("", tmp_path / "var", **sentinel_group.env, BROADCAST_MIN_REPLICAS="1")
    del env["REDIS_URL"]
    created = manage(["create_publish_token", "replicas"], env=env)
    assert created.returncode == 0, created.stderr
    headers = {"Authorization": f"Bearer {created.stdout.splitlines()[1].strip()}",
               "Content-Type": "application/json"}  # fmt: skip
    server = Daphne(env=env, log=tmp_path / "daphne.log").start()
    replica = sentinel_group.servers["replica"].proc
    assert replica is not None
    try:
        ok = await http_request(
            server.port, "POST", "/api/broadcasts/", headers=headers, body=b'{"text": "one"}'
        )
        assert ok.status == 201, ok.body
        replica.send_signal(signal.SIGSTOP)
        try:
            refused = await http_request(server.port, "POST", "/api/broadcasts/", headers=headers,
                                         body=b'{"text": "two"}')  # fmt: skip
        finally:
            replica.send_signal(signal.SIGCONT)
        assert refused.status == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"].startswith("Not confirmed: Redis did not copy it")
        ok = await http_request(
            server.port, "POST", "/api/broadcasts/", headers=headers, body=b'{"text": "three"}'
        )
        assert ok.status == 201, ok.body
    finally:
        server.stop()
    # The broadcast log, in the database the server used.
    with sqlite3.connect(env["DATABASE_URL"].removeprefix("sqlite:///")) as db:
        query = f"SELECT text, error FROM {BroadcastRecord._meta.db_table} WHERE status = ? AND sender = ?"
        failed = db.execute(query, [BroadcastRecord.FAILED, "api:replicas"]).fetchall()
    assert [text for text, _ in failed] == ["two"] and failed[0][1].startswith("Not confirmed")
    assert "not acknowledged: 0 of 1 replicas had it" in server.log()
