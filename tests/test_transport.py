"""The write path's one interface (broadcaster/fanout/transport.py): every Link keeps the slow-consumer
bound itself. Daphne's two links are tested with real sockets (test_slow_consumers.py, plain TCP
and TLS); these drive the link for any other ASGI server, whose `send` applies backpressure by
not finishing. No such server is installed here: the tests play one, in-process, with a `send`
that suspends while its client is not reading."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.test import override_settings

from broadcaster.fanout.consumers import ReceiverConsumer
from broadcaster.fanout.hub import get_hub
from broadcaster.fanout.transport import AsgiLink
from broadcaster.protocol import RECEIVER_PATH
from broadcaster.sending.publish import publish

pytestmark = pytest.mark.django_db(transaction=True)


class BackpressureServer:
    """An ASGI server's side of one WebSocket whose client reads only while `reading` is set."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.reading = asyncio.Event()
        self.reading.set()
        self.gone = asyncio.Event()
        self.closed = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "websocket.close":
            self.closed.set()
        await self.reading.wait()

    async def receive(self) -> dict[str, Any]:
        if not any(m["type"] == "websocket.accept" for m in self.sent):
            return {"type": "websocket.connect"}
        await self.gone.wait()
        return {"type": "websocket.disconnect", "code": 1006}

    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(m["text"]) for m in self.sent if m["type"] == "websocket.send"]

    def messages(self) -> list[str]:
        """The texts of the broadcasts written, in order (batches opened)."""
        out: list[str] = []
        for frame in self.texts():
            out += [m["text"] for m in frame.get("messages", [frame] if frame["type"] == "message" else [])]
        return out


async def test_asgi_link_refuses_a_write_once_over_the_bound_and_takes_them_again_when_drained() -> None:
    """Sends that have not finished count as unsent; past the bound a write is refused and never
    reaches the server; once the client reads, writes are taken again."""
    server = BackpressureServer()
    server.reading.clear()
    link = AsgiLink(server.send, max_unsent=4096)
    frame = {"type": "websocket.send", "text": "x" * 1000}
    taken = [link.write(frame, None) for _ in range(8)]
    assert (taken, link.unsent(), len(server.sent)) == ([True] * 5 + [False] * 3, 5000, 5)
    server.reading.set()
    async with asyncio.timeout(5):
        while link.unsent():
            await asyncio.sleep(0.01)
    assert (link.write(frame, None), len(server.sent)) == (True, 6)


async def test_receiver_that_stops_reading_is_closed_with_4408_under_any_asgi_server() -> None:
    """A receiver served through another ASGI server's `send` (the AsgiLink path), whose client
    stops reading, is closed with SLOW_CONSUMER once more than the bound is unsent, like on daphne."""
    server = BackpressureServer()
    scope = {"type": "websocket", "path": RECEIVER_PATH, "query_string": b"", "client": ("127.0.0.1", 5)}
    with override_settings(BROADCAST_MAX_UNSENT_BYTES=8192, BROADCAST_COUNT_INTERVAL=0.05):
        running = asyncio.create_task(ReceiverConsumer()(scope, server.receive, server.send))
        async with asyncio.timeout(10):
            while not any(t["type"] == "count" for t in server.texts()):
                await asyncio.sleep(0.01)
        server.reading.clear()  # the client stops reading
        sent = 0
        async with asyncio.timeout(20):
            while not server.closed.is_set():
                await publish(text=f"{sent:03d} " + "y" * 2000, sender="test")
                sent += 1
                await asyncio.sleep(0.02)
        closes = [m for m in server.sent if m["type"] == "websocket.close"]
        assert closes == [{"type": "websocket.close", "code": 4408}]
        delivered = [text[:3] for text in server.messages()]
        # Written until more than 8 KB were unsent (about five 2 KB messages), none after.
        assert 4 <= len(delivered) <= 6 and delivered == [f"{i:03d}" for i in range(len(delivered))]
        server.gone.set()
        server.reading.set()
        await asyncio.wait_for(running, 10)
    await get_hub().stop()
