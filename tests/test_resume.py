"""Nothing missed across a reconnect, a Redis restart or a publisher's death (real daphne, real Redis)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from broadcaster.backend.embedded_redis import server_binary
from broadcaster.history.kept import History
from tests.support import (
    ROOT,
    Client,
    Daphne,
    RedisServer,
    base_env,
    free_port,
    manage,
    raw_receiver,
    read_frames,
)


def numbered(client: Client) -> list[tuple[int, str]]:
    """(seq, text) of every message the client got, batches unpacked, in arrival order."""
    out = []
    for f in client.frames:
        for m in f["messages"] if f["type"] == "batch" else [f]:
            if m["type"] == "message":
                out.append((m["seq"], m["text"]))
    return out


async def test_reconnect_with_since_gets_exactly_what_was_missed(daphne, env_for, redis_url):
    """Message 1, disconnect, 10 published, reconnect with since: exactly those 10 in order, then live."""
    server = daphne()
    first = await Client(server.ws).connect()
    await asyncio.to_thread(manage, ["broadcast", "-m", "one"], env=env_for(redis_url))
    await first.wait_for(lambda c: c.messages() == ["one"], timeout=15, what="one")
    epoch = first.frames[-1]["epoch"]
    await first.close()

    missed = [f"missed {i}" for i in range(10)]
    done = await asyncio.to_thread(manage, ["broadcast"], env=env_for(redis_url), stdin="\n".join(missed))
    assert done.returncode == 0, done.stderr
    again = await Client(f"{server.ws}?since=1&epoch={epoch}").connect()
    await again.wait_for(lambda c: len(c.messages()) >= 10, timeout=15, what="the 10 missed")
    await asyncio.to_thread(manage, ["broadcast", "-m", "live"], env=env_for(redis_url))
    await again.wait_for(lambda c: "live" in c.messages(), timeout=15, what="live")
    assert numbered(again) == [(i + 2, text) for i, text in enumerate([*missed, "live"])]
    assert not any(f["type"] == "reset" for f in again.frames)
    await again.close()


async def test_too_far_behind_gets_reset_then_what_is_kept(daphne, env_for, redis_url):
    """With 5 kept, a client behind by 10 is told to reset, then gets the 5 kept, in order."""
    server = daphne(BROADCAST_HISTORY_COUNT="5")
    env = env_for(redis_url, BROADCAST_HISTORY_COUNT="5")
    texts = [f"m{i}" for i in range(1, 12)]  # seqs 1-11; 7-11 kept
    assert (await asyncio.to_thread(manage, ["broadcast"], env=env, stdin="\n".join(texts))).returncode == 0
    client = await Client(f"{server.ws}?since=1").connect()
    await client.wait_for(lambda c: len(c.messages()) >= 5, timeout=15, what="the kept 5")
    kinds = [f["type"] for f in client.frames if f["type"] != "count"]
    assert kinds[0] == "reset"
    reset = next(f for f in client.frames if f["type"] == "reset")
    assert reset["seq"] == 11
    assert numbered(client) == [(s, f"m{s}") for s in range(7, 12)]
    await client.close()


async def test_new_client_gets_the_current_announcement(daphne, env_for, redis_url):
    """A tab opened after an announcement still shows it (the latest, if young enough)."""
    server = daphne()
    await asyncio.to_thread(manage, ["broadcast"], env=env_for(redis_url), stdin="older\ncurrent\n")
    client = await Client(server.ws).connect()
    await client.wait_for(lambda c: c.messages() == ["current"], timeout=15, what="the latest")
    await client.close()


async def test_publisher_dying_between_history_and_live_leaves_no_hole(daphne, env_for, redis_url):
    """A message kept but never sent live (the publisher died in between) reaches clients before the next."""
    server = daphne()
    client = await Client(server.ws).connect()
    await asyncio.to_thread(server.wait_for_clients, 1)
    # Exactly what a publisher killed after the history step leaves behind.
    redis = aioredis.Redis.from_url(redis_url)
    await History(redis, count=1000, age=3600).append(id="orphan", text="kept, never live", time="t")
    await redis.aclose()
    await asyncio.to_thread(manage, ["broadcast", "-m", "next"], env=env_for(redis_url))
    await client.wait_for(lambda c: "next" in c.messages(), timeout=15, what="next")
    assert numbered(client) == [(1, "kept, never live"), (2, "next")]
    await client.close()


async def test_publisher_sigkilled_mid_stream_leaves_no_hole(daphne, env_for, redis_url, tmp_path):
    """SIGKILL a console publishing a stream; after one more message, clients hold every seq, in order."""
    server = daphne()
    client = await Client(server.ws).connect(max_size=None)
    await asyncio.to_thread(server.wait_for_clients, 1)
    # From a file, not a pipe written here: writing 20,000 lines to a pipe blocks this event
    # loop until the publisher has read most of them, and the client above stops reading.
    lines = tmp_path / "stream.txt"
    lines.write_text("".join(f"stream {i}\n" for i in range(20000)))
    with lines.open() as stdin:
        publisher = subprocess.Popen([sys.executable, "manage.py", "broadcast"], cwd=ROOT,
                                     env=env_for(redis_url), stdin=stdin, text=True)  # fmt: skip
    await client.wait_for(lambda c: len(c.messages()) >= 200, timeout=30, what="the stream to flow")
    publisher.send_signal(signal.SIGKILL)
    publisher.wait(timeout=10)
    done = await asyncio.to_thread(manage, ["broadcast", "-m", "after the crash"], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    await client.wait_for(lambda c: "after the crash" in c.messages(), timeout=30, what="the last")
    seqs = [s for s, _ in numbered(client)]
    assert seqs == list(range(1, len(seqs) + 1))
    await client.close()


@pytest.mark.integration  # starts a Redis of its own
async def test_redis_restart_nothing_silently_missing(tmp_path):
    """Redis restarts (its data lost) under a running daphne: clients get every later message, or a reset."""
    redis_server = RedisServer(binary=server_binary(), port=free_port(), workdir=tmp_path)
    redis_server.start()
    env = base_env(redis_server.url, tmp_path / "var")
    server = Daphne(env=env, log=tmp_path / "daphne.log").start()
    try:
        clients = [await Client(server.ws).connect() for _ in range(5)]
        await asyncio.to_thread(server.wait_for_clients, 5)
        assert (await asyncio.to_thread(manage, ["broadcast", "-m", "before"], env=env)).returncode == 0
        for c in clients:
            await c.wait_for(lambda c: c.messages() == ["before"], timeout=15, what="before")

        redis_server.stop()
        redis_server.start()  # same port, empty: numbering restarts under a new epoch
        after = ["after 1", "after 2", "after 3"]
        done = await asyncio.to_thread(manage, ["broadcast"], env=env, stdin="\n".join(after))
        assert done.returncode == 0, done.stderr
        for c in clients:
            await c.wait_for(lambda c: c.messages()[-3:] == after, timeout=30, what="every message after")
            assert c.messages() == ["before", *after]
    finally:
        server.stop()
        redis_server.stop()


async def test_slow_download_of_a_large_backlog_is_not_a_slow_consumer(daphne, env_for, redis_url):
    """A client resuming a backlog far over BROADCAST_MAX_UNSENT_BYTES is not dropped while it
    downloads it: it gets the whole backlog, then the live message that came meanwhile."""
    server = daphne(BROADCAST_MAX_UNSENT_BYTES="65536")
    backlog = [f"{i:04d} " + "x" * 4000 for i in range(1000)]  # ~4 MB, more than kernel buffers
    done = await asyncio.to_thread(
        manage, ["broadcast"], env=env_for(redis_url), stdin="\n".join(backlog), timeout=120
    )  # thousands of messages, on a busy machine
    assert done.returncode == 0, done.stderr
    epoch = (await aioredis.Redis.from_url(redis_url).get("broadcaster:history:broadcast:epoch")).decode()

    slow = raw_receiver(server.port, f"?since=0&epoch={epoch}")
    fast = await Client(server.ws).connect(max_size=None)
    await asyncio.to_thread(server.wait_for_clients, 2)

    done = await asyncio.to_thread(manage, ["broadcast", "-m", "live!"], env=env_for(redis_url))
    assert done.returncode == 0, done.stderr
    # Once the fast client has it, the server has handled it for the slow one too.
    await fast.wait_for(lambda c: "live!" in c.messages(), timeout=15, what="the live message")
    frames = await asyncio.to_thread(read_frames, slow, until="live!", timeout=30)
    slow.close()
    await fast.close()
    texts = []
    for opcode, payload in frames:
        assert opcode == 1, f"closed instead: {payload!r}"
        frame = json.loads(payload)
        if frame["type"] in ("message", "batch"):
            texts.extend(m["text"] for m in (frame["messages"] if frame["type"] == "batch" else [frame]))
    assert texts == [*backlog, "live!"]
    assert "slow consumer" not in server.log()
