"""What connecting clients cost a server process: a new visitor reads only the newest message,
a resuming client's catch-up is streamed as it reads, and an unknown numbering gets `reset`.
Real daphne, real Redis, real clients."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from broadcaster.backend import redis_client
from broadcaster.history.kept import group_history
from broadcaster.history.resume import ResumePoint, catch_up
from tests.support import Client, raw_receiver

MB = 2**20


async def _fill(n: int, size: int) -> list[str]:
    """Publish straight into history (no live send): n messages of `size` characters."""
    history = group_history(redis_client.shared_client())
    now = datetime.now(UTC).isoformat()
    texts = [f"{i:05d} " + "k" * (size - 6) for i in range(n)]
    for text in texts:
        await history.append(id=text[:5], text=text, time=now)
    return texts


@pytest.mark.serial  # measures time or memory: runs alone
async def test_fifty_new_visitors_to_a_fresh_process_read_only_the_newest(daphne):
    """1,000 x 2 KB kept; 50 visitors at once to a fresh process: all accepted, each gets just the
    newest message, and the process's memory barely moves."""
    texts = await _fill(1000, 2000)
    server = daphne()
    before = await asyncio.to_thread(server.steady_rss)
    clients = await asyncio.gather(*(Client(server.ws).connect() for _ in range(50)))
    await asyncio.gather(
        *(c.wait_for(lambda c: c.messages(), timeout=20, what="the newest") for c in clients)
    )
    await asyncio.to_thread(server.wait_for_clients, 50)
    after = await asyncio.to_thread(server.steady_rss)
    print(f"50 new visitors: RSS {before / MB:.0f} -> {after / MB:.0f} MB")
    assert [c.messages() for c in clients] == [[texts[-1]]] * 50
    assert after - before < 30 * MB, (before, after)
    await asyncio.gather(*(c.close() for c in clients))


@pytest.mark.serial  # measures time or memory: runs alone
async def test_fifty_stalled_catch_ups_hold_bounded_memory(daphne):
    """50 clients resume 1,000 x 4 KB with ?since=0 and never read: the server holds at most about
    the slow-consumer bound for each, not the whole catch-up."""
    await _fill(1000, 4000)
    epoch = (await redis_client.shared_client().get("broadcaster:history:broadcast:epoch")).decode()
    server = daphne(BROADCAST_MAX_UNSENT_BYTES="262144")
    before = await asyncio.to_thread(server.steady_rss)
    stalled = [
        await asyncio.to_thread(raw_receiver, server.port, f"?since=0&epoch={epoch}") for _ in range(50)
    ]
    await asyncio.to_thread(server.wait_for_clients, 50)
    after = await asyncio.to_thread(server.steady_rss)
    print(f"50 stalled catch-ups of 4 MB: RSS {before / MB:.0f} -> {after / MB:.0f} MB")
    # Whole, they would be 200 MB (and more as copies); bounded, 50 x 0.25 MB plus a page each.
    assert after - before < 60 * MB, (before, after)
    for sock in stalled:
        sock.close()
    await asyncio.to_thread(server.wait_for_clients, 0)


async def test_resume_without_epoch_after_redis_lost_its_data_is_told_to_reset(redis_url):
    """since=N without epoch, after numbering restarted: reset and all that is kept, not a silent
    skip of the new numbering's first N messages."""
    await _fill(5, 10)
    await redis_client.shared_client().flushall()  # Redis lost its data
    texts = await _fill(8, 10)
    backlog = await catch_up(ResumePoint(since=5, epoch=None))
    assert (backlog.reset, backlog.after, [e.seq for e in backlog.entries]) == (True, 0, list(range(1, 9)))
    assert [e.frame.count(t) for e, t in zip(backlog.entries, texts, strict=True)] == [1] * 8
    # With its epoch, a client in step gets just what it missed.
    epoch = backlog.epoch
    exact = await catch_up(ResumePoint(since=5, epoch=epoch))
    assert (exact.reset, [e.seq for e in exact.entries]) == (False, [6, 7, 8])
