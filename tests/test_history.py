"""History: numbering, bounds, epochs, and what a resuming client is owed."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from broadcaster.history.kept import History
from broadcaster.history.resume import ResumePoint, catch_up, resume_point
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
                                       "level": "info", "text": 'say "hi"', "time": "t1"}  # fmt: skip
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


# --- Property: history against a plain model --------------------------------------------

_op = st.one_of(
    st.tuples(st.just("append"), st.sampled_from([0, 0, 0, 1, 2, 7])),  # ms since the last op
    st.tuples(
        st.just("since"), st.integers(0, 30), st.sampled_from([1, 3, 10, 1000]), st.sampled_from([1, 300])
    ),
    st.tuples(st.just("newest"), st.sampled_from([0, 2, 1000])),
)


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(start=st.sampled_from([0, 7, 8, 97, 98, 997, 998]), count=st.integers(1, 4), age=st.integers(1, 20),
       ops=st.lists(_op, min_size=1, max_size=40))  # fmt: skip
def test_history_matches_a_plain_model(redis_url, start, count, age, ops):
    """append/trim/since/newest equal a list model, with bursts in one millisecond across 9->10,
    99->100 and 999->1000 (members that sort differently as strings) and every page size."""
    asyncio.run(_check_against_model(redis_url, start, count, age, ops))


async def _check_against_model(url: str, start: int, count: int, age: int, ops: list[tuple]) -> None:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    now = [1_000_000]
    history = History(client, count=count, age=age / 1000, clock=lambda: now[0])
    if start:
        await client.set("broadcaster:history:broadcast:seq", start)
    kept: list[tuple[int, int, str]] = []  # (seq, time, frame), oldest first
    last = start
    try:
        for op in ops:
            if op[0] == "append":
                now[0] += op[1]
                entry = await history.append(id=f"i{last + 1}", text=f"m{last + 1}", time="t")
                last += 1
                assert entry.seq == last
                kept.append((entry.seq, now[0], entry.frame))
                kept = kept[-count:]
                kept = [k for k in kept if k[1] > now[0] - age]
            elif op[0] == "since":
                _, after, max_bytes, max_age = op
                expected = [k for k in kept if k[0] > after and k[1] >= now[0] - max_age]
                got, more, cursor = [], True, after
                while more:
                    page = await history.since(cursor, max_age=max_age / 1000, max_bytes=max_bytes)
                    assert page.last == last
                    assert page.entries or not page.more
                    got += page.entries
                    more = page.more
                    cursor = got[-1].seq if got else cursor
                assert [(e.seq, e.frame) for e in got] == [(k[0], k[2]) for k in expected]
            else:
                max_age = op[1]
                young = [k for k in kept if k[1] >= now[0] - max_age]
                newest = await history.newest(max_age=max_age / 1000)
                expected_newest = [kept[-1]] if kept and young and young[-1] == kept[-1] else []
                assert newest.last == last
                assert [(e.seq, e.frame) for e in newest.entries] == [(k[0], k[2]) for k in expected_newest]
    finally:
        await client.aclose()


async def test_append_is_idempotent_by_message_id(redis):
    """The same message appended twice (a retry after a dropped reply) keeps its first seq."""
    history = History(redis, count=10, age=60)
    first = await history.append(id="same", text="once", time="t")
    again = await history.append(id="same", text="once", time="t")
    other = await history.append(id="other", text="twice", time="t")
    assert (again, other.seq) == (first, 2)
    assert [e.seq for e in (await history.since(0)).entries] == [1, 2]


async def test_same_millisecond_burst_across_ten_keeps_every_timestamp(redis):
    """Seqs 9 and 10 in one millisecond, trimmed by count: 10 keeps its time and is served."""
    history = History(redis, count=1, age=60, clock=lambda: 5_000)
    await redis.set("broadcaster:history:broadcast:seq", 8)
    await history.append(id="a", text="nine", time="t")
    ten = await history.append(id="b", text="ten", time="t")
    assert [e.seq for e in (await history.since(0)).entries] == [10]
    assert await redis.zrange("broadcaster:history:broadcast:times", 0, -1) == [b"10"]
    assert (await history.newest(max_age=60)).entries == [ten]
