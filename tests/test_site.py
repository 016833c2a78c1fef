"""End to end: real daphne processes, real clients, the console command as a subprocess."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis
import websockets

from tests.support import ROOT, Client, manage


@pytest.mark.serial  # measures time or memory: runs alone
async def test_200_clients_count_broadcast_once_and_disconnects(daphne, env_for, redis_url):
    """200 clients are counted, a piped line reaches each exactly once, 50 leave and the count drops."""
    server = daphne()
    clients = await asyncio.gather(*(Client(server.ws).connect() for _ in range(200)))
    await asyncio.to_thread(server.wait_for_clients, 200)
    await asyncio.gather(
        *(c.wait_for(lambda c: c.last_count() == 200, timeout=10, what="count 200") for c in clients)
    )
    # Coalesced: a burst of 200 connects is a few count frames per client, not one per connect.
    count_frames = [sum(f["type"] == "count" for f in c.frames) for c in clients]
    assert max(count_frames) <= 5, count_frames

    r = redis.Redis.from_url(redis_url)
    publishes_before = r.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
    done = await asyncio.to_thread(manage, ["broadcast"], env=env_for(redis_url), stdin="hello everyone\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "Sent 1 message.\n", "")
    # One PUBLISH for 200 receivers: fan-out cost in Redis does not grow with clients.
    publishes = r.info("commandstats")["cmdstat_publish"]["calls"] - publishes_before
    assert publishes == 1

    # A second message marks the end: anything duplicated would arrive before it.
    done = await asyncio.to_thread(manage, ["broadcast", "-m", "end"], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    await asyncio.gather(
        *(c.wait_for(lambda c: "end" in c.messages(), timeout=20, what="end") for c in clients)
    )
    assert [c.messages() for c in clients] == [["hello everyone", "end"]] * 200

    await asyncio.gather(*(c.close() for c in clients[:50]))
    await asyncio.to_thread(server.wait_for_clients, 150)
    await clients[50].wait_for(lambda c: c.last_count() == 150, timeout=10, what="count 150")
    await asyncio.gather(*(c.close() for c in clients[50:]))
    r.close()


@pytest.mark.serial  # measures time or memory: runs alone
async def test_two_processes_global_count_and_sigkill_heals(daphne, env_for, redis_url):
    """The count spans processes; after SIGKILL of one, it falls to the survivors' within the
    presence TTL (5 s here; 30 by default) and two heartbeats."""
    ttl = {"BROADCAST_PRESENCE_TTL": "5"}
    a, b = daphne(**ttl), daphne(**ttl)
    on_a = await asyncio.gather(*(Client(a.ws).connect() for _ in range(40)))
    on_b = await asyncio.gather(*(Client(b.ws).connect() for _ in range(25)))
    await asyncio.to_thread(a.wait_for_clients, 65)
    await asyncio.to_thread(b.wait_for_clients, 65)

    done = await asyncio.to_thread(manage, ["broadcast", "-m", "to both"], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    await asyncio.gather(
        *(c.wait_for(lambda c: c.messages() == ["to both"], timeout=20, what="to both")
          for c in on_a + on_b)
    )  # fmt: skip

    killed_at = time.monotonic()
    a.stop(signal.SIGKILL)
    await asyncio.to_thread(b.wait_for_clients, 25, timeout=40)
    healed_after = time.monotonic() - killed_at
    assert healed_after <= 7, f"count healed only after {healed_after:.1f} s"
    await on_b[0].wait_for(lambda c: c.last_count() == 25, timeout=5, what="count 25 pushed")

    done = await asyncio.to_thread(manage, ["broadcast", "-m", "survivors"], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    await asyncio.gather(
        *(c.wait_for(lambda c: c.messages() == ["to both", "survivors"], timeout=20, what="survivors")
          for c in on_b)
    )  # fmt: skip
    await asyncio.gather(*(c.close() for c in on_a + on_b))


async def test_broadcast_reaches_live_clients_when_others_die_mid_broadcast(daphne, env_for, redis_url):
    """Clients that vanish without a close handshake do not stop delivery to the others."""
    server = daphne()
    clients = await asyncio.gather(*(Client(server.ws).connect() for _ in range(30)))
    await asyncio.to_thread(server.wait_for_clients, 30)
    for c in clients[:10]:
        c.ws.transport.abort()  # the TCP connection dies; no close frame
    done = await asyncio.to_thread(manage, ["broadcast", "-m", "still here"], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    await asyncio.gather(
        *(c.wait_for(lambda c: c.messages() == ["still here"], timeout=20, what="still here")
          for c in clients[10:])
    )  # fmt: skip
    await asyncio.to_thread(server.wait_for_clients, 20)
    await asyncio.gather(*(c.close() for c in clients[10:]), return_exceptions=True)


async def test_foreign_origin_refused_and_logged(daphne):
    """A browser page from another site cannot connect, and the refusal is logged with the origin."""
    server = daphne()
    try:
        await websockets.connect(server.ws, origin="http://evil.example", open_timeout=10)
    except websockets.InvalidStatus as exc:
        assert exc.response.status_code == 403
    else:
        raise AssertionError("a foreign origin was accepted")
    allowed = await Client(server.ws).connect(origin=f"http://127.0.0.1:{server.port}")
    await allowed.close()
    assert "Refused receiver: origin http://evil.example" in server.log()


async def test_health_and_receivers_when_redis_is_down(daphne, dead_redis_url):
    """With Redis unreachable, /health/ answers 503 saying which part failed (not where it is:
    the answer is public) and receivers are told to retry."""
    server = daphne(url=dead_redis_url)
    status, body = await asyncio.to_thread(server.health)
    assert status == 503
    assert body == {"status": "unavailable", "redis": "unreachable", "clients": None}
    host = dead_redis_url.split("//")[1].split("/")[0]
    assert host.split(":")[0] not in json.dumps(body) and host.split(":")[1] not in json.dumps(body)
    client = await Client(server.ws).connect()
    await client.task
    assert client.ws.close_code == 4503
    assert "Refusing receiver" in server.log()
    assert "Traceback" not in server.log()


async def test_server_raises_open_file_limit_and_logs_capacity(daphne):
    """At start-up the soft open-file limit is raised to the hard one, and the capacity logged."""
    import resource

    server = daphne()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with open(f"/proc/{server.proc.pid}/limits") as f:
        line = next(row for row in f if row.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)]
    assert f"Open-file limit {hard}; at most {hard - 128} receivers" in server.log()


def test_runserver_on_a_busy_port_exits_1_saying_why(env_for, redis_url):
    """`make run`'s runserver, on a port something else holds: status 1 and the reason, instead
    of a process that serves nothing (the autoreloader kept daphne's alive)."""
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        done = subprocess.run([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}"], cwd=ROOT,
                              env=env_for(redis_url), capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        holder.close()
    assert done.returncode == 1, done.stderr
    assert f"Error: Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use." in done.stderr
