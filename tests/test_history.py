"""History: numbering, bounds, epochs, and what a resuming client is owed."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from broadcaster.history import History
from broadcaster.resume import ResumePoint, catch_up, resume_point
from tests.support import eventually


@pytest.fixture
async def redis(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_append_numbers_from_one_and_frames_carry_seq_and_epoch(redis):
    """Seqs count up by one per message; the kept frame is exactly what clients receive."""
    history = History(redis, count=10, age=60)
    first = await history.append(id="a", text='say "hi"', time="t1")
    second = await history.append(id="b", text="two", time="t2")
    assert (first.seq, second.seq, first.epoch == second.epoch) == (1, 2, True)
    assert json.loads(first.frame) == {"type": "message", "seq": 1, "epoch": first.epoch, "id": "a",
                                       "text": 'say "hi"', "time": "t1"}  # fmt: skip
    kept = await history.since(0)
    assert (kept.last, kept.epoch, [e.frame for e in kept.entries]) == (
        2,
        first.epoch,
        [first.frame, second.frame],
    )
    assert [e.seq for e in (await history.since(1)).entries] == [2]


async def test_count_bound_keeps_the_newest(redis):
    """Past the count, the oldest go."""
    history = History(redis, count=3, age=60)
    for i in range(7):
        await history.append(id=str(i), text=str(i), time="t")
    kept = await history.since(0)
    assert (kept.last, [e.seq for e in kept.entries]) == (7, [5, 6, 7])


async def test_age_bound_drops_old_messages(redis):
    """Messages older than the age bound are not served and are trimmed on the next append."""
    history = History(redis, count=100, age=0.2)
    await history.append(id="old", text="old", time="t")

    async def aged() -> bool:
        return (await history.since(0)).entries == []

    await eventually(aged, timeout=5, what="the old message to age out")
    new = await history.append(id="new", text="new", time="t")
    assert [e.seq for e in (await history.since(0)).entries] == [new.seq]
    assert await redis.zcard("broadcaster:history:broadcast:log") == 1


def test_resume_point_parsing():
    """since must be a whole number >= 0; epoch is optional."""
    assert resume_point(b"since=5&epoch=ab") == ResumePoint(since=5, epoch="ab")
    assert resume_point(b"since=0") == ResumePoint(since=0, epoch=None)
    assert resume_point(b"") is None
    assert resume_point(b"since=x") is None
    assert resume_point(b"since=-3") is None


async def test_catch_up_cases(redis, settings):
    """Resuming: the gap exactly; past the history: reset; other epoch: reset and all; new client: latest."""
    settings.BROADCAST_HISTORY_COUNT = 4
    history = History(redis, count=4, age=60)
    entries = [
        await history.append(id=str(i), text=str(i), time="t") for i in range(6)
    ]  # seqs 1-6, keeps 3-6
    epoch = entries[0].epoch

    exact = await catch_up(ResumePoint(since=4, epoch=epoch))
    assert ([e.seq for e in exact.entries], exact.reset, exact.after) == ([5, 6], False, 4)
    behind = await catch_up(ResumePoint(since=1, epoch=epoch))
    assert ([e.seq for e in behind.entries], behind.reset) == ([3, 4, 5, 6], True)
    other = await catch_up(ResumePoint(since=2, epoch="elsewhere"))
    assert ([e.seq for e in other.entries], other.reset, other.after) == ([3, 4, 5, 6], True, 0)
    ahead = await catch_up(ResumePoint(since=99, epoch=None))
    assert (ahead.reset, ahead.after) == (True, 0)
    fresh = await catch_up(None)
    assert ([e.seq for e in fresh.entries], fresh.reset) == ([6], False)
    settings.BROADCAST_LATEST_AGE = 0
    assert (await catch_up(None)).entries == []
