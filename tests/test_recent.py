"""Connecting clients answered from a server process's memory: same answers as Redis, no reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import redis
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from broadcaster import protocol
from broadcaster.backend import redis_client
from broadcaster.fanout.consumers import ReceiverConsumer
from broadcaster.fanout.hub import get_hub
from broadcaster.history.entry import Entry
from broadcaster.history.kept import group_history
from broadcaster.history.recent import RecentBroadcasts
from broadcaster.history.resume import ResumePoint, backlog, catch_up
from broadcaster.sending.publish import publish

pytestmark = pytest.mark.django_db(transaction=True)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def kept(n: int) -> list[Entry]:
    history = group_history(redis_client.shared_client())
    return [await history.append(id=str(i), text=f"m{i}", time=now()) for i in range(n)]


async def test_memory_gives_the_same_backlog_as_redis_or_defers_to_it():
    """For every resume point memory answers exactly as history in Redis does, or says None."""
    entries = await kept(10)
    epoch = entries[-1].epoch
    recent = RecentBroadcasts()
    for entry in entries:
        recent.remember(entry)
    points = [None, *(ResumePoint(since=s, epoch=epoch) for s in range(11)), ResumePoint(since=0, epoch=None)]
    for point in points:
        assert await backlog(point, recent.source(epoch=epoch, last=10)) == await catch_up(point), point
    # Another numbering, an unknown one, or a client ahead of this process: all that is kept is
    # owed, with a reset. Memory holding everything since seq 1 answers as Redis; memory that
    # does not reach back that far cannot tell.
    partial = RecentBroadcasts()
    for entry in entries[2:]:
        partial.remember(entry)
    for point in (ResumePoint(since=3, epoch="other"), ResumePoint(since=3, epoch=None),
                  ResumePoint(since=11, epoch=epoch)):  # fmt: skip
        expected = await catch_up(point)
        assert expected.reset and len(expected.entries) == 10
        assert await backlog(point, recent.source(epoch=epoch, last=10)) == expected, point
        assert await backlog(point, partial.source(epoch=epoch, last=10)) is None, point
    # Memory that is not at history's newest says nothing.
    assert await backlog(None, recent.source(epoch=epoch, last=11)) is None


async def test_memory_keeps_at_most_the_history_count_and_defers_beyond_it():
    """With BROADCAST_HISTORY_COUNT=4, memory holds 4; a client that missed more asks Redis."""
    with override_settings(BROADCAST_HISTORY_COUNT=4):
        entries = await kept(10)
        recent = RecentBroadcasts()
        for entry in entries:
            recent.remember(entry)
        epoch = entries[-1].epoch
        assert await backlog(ResumePoint(since=5, epoch=epoch), recent.source(epoch=epoch, last=10)) is None
        answer = await backlog(ResumePoint(since=6, epoch=epoch), recent.source(epoch=epoch, last=10))
        assert answer == await catch_up(ResumePoint(since=6, epoch=epoch))
        assert [e.seq for e in answer.entries] == [7, 8, 9, 10]


async def test_a_gap_or_a_new_epoch_starts_memory_again():
    """Entries that do not follow on (a gap, another epoch) replace what memory held."""
    entries = await kept(3)
    recent = RecentBroadcasts()
    recent.remember(entries[0])
    recent.remember(entries[2])  # seq 2 never came
    epoch = entries[0].epoch
    assert await backlog(ResumePoint(since=1, epoch=epoch), recent.source(epoch=epoch, last=3)) is None
    answer = await backlog(ResumePoint(since=2, epoch=epoch), recent.source(epoch=epoch, last=3))
    assert answer.entries == [entries[2]]


async def test_in_step_process_answers_connecting_clients_without_reading_history(redis_url):
    """Once the hub has checked it is in step, 20 connects (new and resuming) read no history."""
    with override_settings(BROADCAST_COUNT_INTERVAL=1.0):  # the hub's own loop: 2 calls a second
        sent = [await publish(text=f"n{i}", sender="test") for i in range(3)]
        first = WebsocketCommunicator(ReceiverConsumer.as_asgi(), "/ws/broadcast/")
        assert (await first.connect())[0]
        await get_hub().check_history()  # what the hub's task does every interval
        stats = redis.Redis.from_url(redis_url)
        stats.config_resetstat()
        comms = []
        for i in range(20):
            path = "/ws/broadcast/" + ("" if i % 2 else f"?since=1&epoch={sent[0].epoch}")
            comm = WebsocketCommunicator(ReceiverConsumer.as_asgi(), path)
            assert (await comm.connect())[0]
            comms.append((i, comm))
        calls = stats.info("commandstats")
        for i, comm in comms:
            frames = []
            while not any(f["type"] in ("message", "batch") for f in frames):
                frames.append(json.loads(await comm.receive_from(timeout=5)))
            shown = next(f for f in frames if f["type"] in ("message", "batch"))
            texts = [m["text"] for m in shown["messages"]] if shown["type"] == "batch" else [shown["text"]]
            assert texts == (["n2"] if i % 2 else ["n1", "n2"])
            await comm.disconnect()
        await first.disconnect()
        await get_hub().stop()
    # The hub's own loop (presence, history check) may have run meanwhile; 20 reads did not happen.
    assert (
        calls.get("cmdstat_evalsha", {}).get("calls", 0) + calls.get("cmdstat_eval", {}).get("calls", 0) < 10
    )


async def test_current_announcement_is_the_same_from_memory_and_from_redis():
    """A new client's current announcement: the newest message unless a later retraction takes
    it back or it has expired (then none: an older one does not come back), sent with the
    retractions after it so the client's numbering has no hole. Memory and Redis agree at every
    step; memory holding only retractions defers to Redis."""
    history = group_history(redis_client.shared_client())
    recent = RecentBroadcasts()

    async def appended(entry: Entry) -> Entry:
        recent.remember(entry)
        return entry

    async def message(id: str, *, expires: str | None = None) -> Entry:
        return await appended(await history.append(id=id, text=id, time=now(), expires=expires))

    async def retraction(id: str) -> Entry:
        template = protocol.retract_frame(seq=0, epoch="", id=id, time=now())
        return await appended((await history.append_frame(template=template, key=f"retract:{id}")).entry)

    async def current() -> list[tuple[str, str]]:
        from_redis = await catch_up(None)
        last = from_redis.last
        from_memory = await backlog(None, recent.source(epoch=from_redis.epoch, last=last))
        assert from_memory == from_redis
        # Whole numbering: what it is sent runs without a gap up to history's newest.
        seqs = [e.seq for e in from_redis.entries]
        assert seqs == list(range(from_redis.after + 1, last + 1))
        return [(e.kind, e.id[0]) for e in from_redis.entries]

    await message("a" * 32)
    assert await current() == [("message", "a")]
    await message("b" * 32)
    await retraction("a" * 32)  # an older one's retraction: the newest stays current
    assert await current() == [("message", "b"), ("retract", "a")]
    await retraction("b" * 32)
    assert await current() == []  # not "a": it was retracted too, and no older one comes back
    await message("c" * 32, expires="2000-01-01T00:00:00.000Z")
    assert await current() == []  # expired
    await message("d" * 32, expires="2999-01-01T00:00:00.000Z")
    assert await current() == [("message", "d")]
    await retraction("d" * 32)
    assert await current() == []

    # Memory that starts after a message, with only its retraction (seq 7), cannot tell.
    only_retractions = RecentBroadcasts()
    only_retractions.remember((await history.since(6)).entries[0])
    epoch = (await catch_up(None)).epoch
    assert await backlog(None, only_retractions.source(epoch=epoch, last=7)) is None
