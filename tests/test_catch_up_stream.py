"""The streamed catch-up of one receiver, driven directly (real Redis, no socket): live messages
that arrive meanwhile come once and in order, even past the held bound; nothing is written twice.

The socket is replaced by `RecordingLink`, an in-memory implementation of the project's `Link`
interface whose unsent bytes the test drains (the slow client reading)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from broadcaster import protocol
from broadcaster.backend import redis_client
from broadcaster.fanout.consumers import ReceiverConsumer
from broadcaster.fanout.transport import Link
from broadcaster.history import resume
from broadcaster.history.entry import Entry
from broadcaster.history.kept import group_history


class RecordingLink(Link):
    """Frames as written, and a backlog of unsent bytes that the test drains."""

    def __init__(self, *, max_unsent: int) -> None:
        super().__init__(max_unsent=max_unsent)
        self.frames: list[str] = []
        self.backlog = 0
        self.closed: int | None = None

    def unsent(self) -> int:
        return self.backlog

    def _write(self, message: dict[str, Any], frame: bytes | None) -> None:
        self.frames.append(message["text"])
        self.backlog += len(message["text"].encode())

    def close(self, message: dict[str, Any]) -> None:
        self.closed = message["code"]

    def gone(self) -> bool:
        return False

    def refuse(self, code: int, reason: str) -> None:
        self.closed = code

    def seqs(self) -> list[int]:
        out: list[int] = []
        for text in self.frames:
            frame = json.loads(text)
            if frame["type"] == "message":
                out.append(frame["seq"])
            elif frame["type"] == "batch":
                out += [m["seq"] for m in frame["messages"]]
        return out


def _consumer(link: RecordingLink) -> ReceiverConsumer:
    consumer = ReceiverConsumer()
    consumer.scope = {"client": ("test", 1)}
    consumer.link = link
    consumer.held = []
    return consumer


async def _publish(n: int, start: int) -> list[Entry]:
    history = group_history(redis_client.shared_client())
    return [
        await history.append(id=f"m{i}", text=f"{i:04d} " + "p" * 400, time="t")
        for i in range(start, start + n)
    ]


async def test_send_entries_sends_an_entry_that_comes_twice_once():
    """Backlog and held overlapping ([4, 5] twice): each goes out once, in order."""
    link = RecordingLink(max_unsent=1 << 20)
    consumer = _consumer(link)
    frames = {s: protocol.message_frame(seq=s, epoch="e", id=str(s), text="x", time="t") for s in (4, 5, 6)}
    entries = [Entry(seq=s, epoch="e", frame=frames[s]) for s in (4, 5, 4, 5, 6)]
    consumer.sent = ("e", 3)
    consumer._send_entries(entries)
    assert link.seqs() == [4, 5, 6]


async def test_live_messages_during_a_slow_catch_up_arrive_once_in_order(monkeypatch: pytest.MonkeyPatch):
    """Catching up 40 messages in small pages while 40 more arrive live (more than the held bound
    allows): the client gets 1..80 exactly once, in order, then goes live."""
    monkeypatch.setattr(resume, "PAGE_BYTES", 2000)
    first = await _publish(40, 1)
    backlog = await resume.catch_up(resume.ResumePoint(since=0, epoch=first[0].epoch))
    assert backlog.more
    link = RecordingLink(max_unsent=4096)
    consumer = _consumer(link)
    assert consumer._release(backlog) is False
    streaming = asyncio.create_task(consumer._stream(backlog))
    for entry in await _publish(40, 41):
        consumer.write(protocol.send_event(entry.frame), None, [entry])
        link.backlog = 0  # the client reads a little
        await asyncio.sleep(0)
    async with asyncio.timeout(20):  # the client keeps reading until the catch-up is out
        while not streaming.done():
            link.backlog = 0
            await asyncio.sleep(0.005)
        await streaming
    assert consumer.held is None and link.closed is None
    assert link.seqs() == list(range(1, 81))
    live = (await _publish(1, 81))[0]
    consumer.write(protocol.send_event(live.frame), None, [live])
    assert link.seqs() == list(range(1, 82))
