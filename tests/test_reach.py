"""The reach report, measured: 1,000 real WebSocket clients on two daphne processes, half of
them acknowledging, against a real Redis. The report must say delivered 1,000 and seen 500
exactly, and the acks must cost Redis a few commands per flush, not one per ack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import pytest
import redis
import websockets

from tests.support import Daphne, create_token, http_request, scrape

CLIENTS = 1000


class Tab:
    """A receiver that records the ids of the messages it gets and its pongs."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.epoch = ""
        self.pongs = 0
        self.counted = asyncio.Event()
        self.changed = asyncio.Event()
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None

    async def connect(self, url: str) -> Tab:
        self.ws = await websockets.connect(url, open_timeout=60)
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame["type"] == "message":
                    self.ids.append(frame["id"])
                    self.epoch = frame["epoch"]
                elif frame["type"] == "count":
                    self.counted.set()
                elif frame["type"] == "pong":
                    self.pongs += 1
                self.changed.set()

    async def send(self, frame: dict[str, str]) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait_for(self, predicate: Any, *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {what}"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def close(self) -> None:
        await self.ws.close()
        assert self.task is not None
        await self.task


def hincrby_calls(url: str) -> int:
    """HINCRBY commands Redis has run (only the reach flush sends them)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get("cmdstat_hincrby", {}).get("calls", 0))


def seen_frames(servers: list[Daphne]) -> tuple[float, float]:
    """`seen` frames the servers counted and ignored, as their metrics say."""
    return (summed(servers, 'broadcaster_seen_frames_total{result="counted"}'),
            summed(servers, 'broadcaster_seen_frames_total{result="ignored"}'))  # fmt: skip


def summed(servers: list[Daphne], name: str) -> float:
    return sum(scrape(server.http)[1].get(name, 0.0) for server in servers)


@pytest.mark.serial  # measures time or memory: runs alone
async def test_reach_counts_delivered_and_seen_exactly_in_few_commands(daphne, env_for, redis_url):
    servers = [daphne(), daphne()]
    secret = await asyncio.to_thread(create_token, f"reach-{uuid.uuid4().hex[:8]}", env=env_for(redis_url))
    tabs: list[Tab] = []
    for start in range(0, CLIENTS, 100):  # in steps, within the listen backlog
        tabs += await asyncio.gather(*(Tab().connect(servers[i % 2].ws) for i in range(start, start + 100)))
    for tab in tabs:
        await asyncio.wait_for(tab.counted.wait(), 60)
    calls_before = await asyncio.to_thread(hincrby_calls, redis_url)
    started = time.monotonic()

    answer = await http_request(servers[0].port, "POST", "/api/broadcasts/", body=b'{"text": "Reach me"}',
                                headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert answer.status == 201, answer.body
    id = answer.json()["id"]
    for tab in tabs:
        await tab.wait_for(lambda t: t.ids == [id], timeout=60, what="the message")

    # Half acknowledge (250 on each server: tab i is on server i % 2); a tenth of those twice,
    # one of them also for an id nobody was sent. Only the first ack of each connection counts.
    acking = tabs[: CLIENTS // 2]
    await asyncio.gather(*(tab.send({"type": "seen", "id": id}) for tab in acking))
    await asyncio.gather(*(tab.send({"type": "seen", "id": id}) for tab in acking[::10]))
    await acking[0].send({"type": "seen", "id": "f" * 32})
    # A client that was sent nothing floods acks: it is closed with 4429 after its allowance.
    flooder = await websockets.connect(f"{servers[1].ws}?since=1&epoch={tabs[0].epoch}")
    for _ in range(25):
        with contextlib.suppress(websockets.ConnectionClosed):
            await flooder.send(json.dumps({"type": "seen", "id": id}))
    error = None
    with contextlib.suppress(websockets.ConnectionClosed):
        async for raw in flooder:
            if json.loads(raw)["type"] == "error":
                error = json.loads(raw)
    assert flooder.close_code == 4429
    assert error == {
        "type": "error",
        "code": 4429,
        "reason": "too many seen frames for unknown or repeated ids",
    }

    # Every ack is processed once a ping sent after it is answered (frames are read in order).
    await asyncio.gather(*(tab.send({"type": "ping"}) for tab in acking))
    for tab in acking:
        await tab.wait_for(lambda t: t.pongs == 1, timeout=30, what="the pong")
    ignored = len(acking[::10]) + 1 + 21  # repeats, the unknown id, the flood up to its close
    deadline = time.monotonic() + 30
    while True:
        frames = await asyncio.to_thread(seen_frames, servers)
        if frames == (500, ignored):
            break
        assert time.monotonic() < deadline, f"seen frames (counted, ignored) {frames}, not (500, {ignored})"
    # The metrics were flushed in the same beat as the reach counts, or before: wait for the
    # report, then it must be exactly this.
    path = f"/api/broadcasts/{id}/"
    deadline = time.monotonic() + 30
    while True:
        report = (await http_request(servers[1].port, "GET", path,
                                     headers={"Authorization": f"Bearer {secret}"})).json()  # fmt: skip
        if (report["delivered"], report["seen"]) == (CLIENTS, CLIENTS // 2):
            break
        assert report["delivered"] <= CLIENTS and report["seen"] <= CLIENTS // 2, report
        assert time.monotonic() < deadline, report
    elapsed = time.monotonic() - started
    calls = await asyncio.to_thread(hincrby_calls, redis_url) - calls_before
    commands = await asyncio.to_thread(summed, servers, "broadcaster_reach_redis_commands_total")
    acks = len(acking) + len(acking[::10]) + 1 + 25
    print(f"\nreach: delivered {report['delivered']}, seen {report['seen']} from {acks} seen frames on "
          f"{len(servers)} processes; Redis HINCRBY for them: {calls} in {elapsed:.1f} s "
          f"(all reach commands incl. EXPIRE: {commands:.0f})")  # fmt: skip
    # At most two HINCRBY per broadcast per process per flush, a flush a second: bounded by the
    # time taken, not by the number of acks.
    assert calls <= 2 * len(servers) * (elapsed + 2)
    assert calls < acks / 10
    for tab in tabs:
        await tab.close()


def test_a_connection_counts_each_message_once_over_a_long_life():
    """A connection's record of what it acked stays bounded, and a repeat of a message acked
    long ago still counts as a repeat; a new epoch starts the record again."""
    from broadcaster.fanout.consumers import ReceiverConsumer
    from broadcaster.reach import REMEMBER

    consumer = ReceiverConsumer()
    assert consumer._first_ack("e", 1) and not consumer._first_ack("e", 1)
    assert all(consumer._first_ack("e", seq) for seq in range(2, 5 * REMEMBER))
    assert consumer.acked is not None and len(consumer.acked) <= REMEMBER
    assert not any(consumer._first_ack("e", seq) for seq in (1, REMEMBER, 5 * REMEMBER - 1))
    assert consumer._first_ack("e2", 1)


def test_a_process_knows_as_many_broadcasts_by_id_as_history_keeps(settings):
    """With BROADCAST_HISTORY_COUNT above 1,024, a catch-up of all of history is acked in full:
    the process knows every one of those ids (before, it knew 1,024 and the client's acks of the
    rest were ignored until it was closed with 4429)."""
    from broadcaster import protocol
    from broadcaster.history.entry import Entry
    from broadcaster.reach import REMEMBER, ReachTally

    settings.BROADCAST_HISTORY_COUNT = 3000
    tally = ReachTally()
    frames = [
        protocol.message_frame(seq=s, epoch="e", id=f"{s:032x}", text="x", time="t") for s in range(1, 3001)
    ]
    tally.delivered([Entry(seq=s, epoch="e", frame=f) for s, f in enumerate(frames, 1)], 1)
    assert len(tally.known) == 3000 and f"{1:032x}" in tally.known
    settings.BROADCAST_HISTORY_COUNT = 10
    assert ReachTally().remember == REMEMBER
