"""What a connection keeps, in-process: the light input queue that replaces daphne's
asyncio.Queue (broadcaster/server/input_queue.py, installed by broadcaster/compat/daphne.py), and
autobahn's per-connection options kept once per process (compat.autobahn.share_options)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tracemalloc

import pytest

from broadcaster.compat import autobahn, daphne
from broadcaster.server.input_queue import InputQueue


async def test_items_come_out_in_order_to_a_waiting_getter():
    queue = InputQueue()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    for item in ("connect", "receive", "disconnect"):
        queue.put_nowait(item)
    assert await asyncio.wait_for(getter, 1) == "connect"
    assert [await queue.get(), await queue.get()] == ["receive", "disconnect"]
    assert queue.empty() and queue.qsize() == 0


async def test_each_item_reaches_one_of_several_getters():
    queue = InputQueue()
    getters = [asyncio.ensure_future(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)
    for item in range(3):
        queue.put_nowait(item)
    assert sorted(await asyncio.wait_for(asyncio.gather(*getters), 1)) == [0, 1, 2]


async def test_a_getter_cancelled_after_it_was_woken_passes_the_item_on():
    """asyncio.Queue's rule: a getter woken for an item and cancelled before it took it must
    not strand the item while another getter waits."""
    queue = InputQueue()
    first, second = asyncio.ensure_future(queue.get()), asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("only")  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == "only"
    assert first.cancelled()


async def test_a_cancelled_waiting_getter_leaves_nothing_behind():
    queue = InputQueue()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    getter.cancel()
    await asyncio.gather(getter, return_exceptions=True)
    queue.put_nowait("later")
    assert await asyncio.wait_for(queue.get(), 1) == "later"


def test_it_is_a_tenth_of_an_asyncio_queue():
    def size(make):
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        kept = [make() for _ in range(1000)]
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        assert len(kept) == 1000
        return sum(s.size_diff for s in after.compare_to(before, "filename")) / 1000

    ours, theirs = size(InputQueue), size(asyncio.Queue)
    assert ours * 10 < theirs, (ours, theirs)


def test_daphnes_create_application_is_replaced_only_when_it_is_the_one_checked(monkeypatch):
    from daphne.server import Server

    original = Server.create_application
    if getattr(original, "_broadcaster_replaced", False):
        # Replaced by a server started in this process: it counts as the one checked.
        assert "create_application" not in (daphne.optional_problem() or "")
        return

    def changed(self, protocol, scope):  # a daphne release whose method is not the one checked
        return asyncio.Queue()

    monkeypatch.setattr(Server, "create_application", changed)
    assert daphne.replace_input_queue(InputQueue) is False
    assert Server.create_application is changed
    assert "Server.create_application as checked" in (daphne.optional_problem() or "")
    monkeypatch.setattr(Server, "create_application", original)
    assert daphne.optional_problem() is None or "create_application" not in daphne.optional_problem()
    assert daphne.replace_input_queue(InputQueue) is True
    assert Server.create_application._broadcaster_replaced
    assert "create_application" not in (daphne.optional_problem() or "")  # replaced is no problem
    assert "daphne.server" in sys.modules


def _connection(factory):
    """An autobahn server connection with its options copied from `factory`, as autobahn's
    _connectionMade copies them."""
    protocol = factory.buildProtocol(None)
    for name in protocol.CONFIG_ATTRS:
        setattr(protocol, name, getattr(factory, name))
    for i in range(60):  # the rest of a live connection's state (99 names in all under daphne)
        setattr(protocol, f"state_{i}", i)
    return protocol


def test_options_are_kept_once_and_read_the_same():
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    first, second = _connection(factory), _connection(factory)
    second.maxFramePayloadSize = 4096  # set for this connection (as limit_client_frames does)
    before = {name: getattr(first, name) for name in first.CONFIG_ATTRS}
    size = sys.getsizeof(vars(first))
    for protocol in (first, second):
        autobahn.share_options(protocol)
    assert {name: getattr(first, name) for name in first.CONFIG_ATTRS} == before
    assert second.maxFramePayloadSize == 4096 and first.maxFramePayloadSize == factory.maxFramePayloadSize
    assert type(first) is type(second) and issubclass(type(first), WebSocketServerProtocol)
    assert type(first).__name__ == "WebSocketServerProtocol"
    assert set(first.CONFIG_ATTRS) & set(vars(first)) == {"perMessageCompressionAccept"}  # a function: kept
    assert "maxFramePayloadSize" in vars(second)
    assert sys.getsizeof(vars(first)) * 2 <= size, (sys.getsizeof(vars(first)), size)
    assert first.state_59 == 59
    first.autoPingInterval = 5  # set later: this connection's own again
    assert first.autoPingInterval == 5 and second.autoPingInterval == factory.autoPingInterval
    autobahn.share_options(first)  # twice: nothing more moves
    assert first.autoPingInterval == 5


def test_the_upgraded_http_channel_lets_go_of_the_handshake():
    """The HTTP channel that parsed a WebSocket handshake stays the transport's producer; its
    bytes and parsed request go. A producer of another kind is left alone."""
    from types import SimpleNamespace

    from twisted.web import http

    from broadcaster.compat.twisted import shed_upgraded_channel

    channel = http.HTTPChannel()
    channel._buffer, channel.requests = b"GET /ws/broadcast/ HTTP/1.1\r\n", [object()]
    transport = SimpleNamespace(producer=channel)
    shed_upgraded_channel(transport)
    assert (channel._buffer, channel.requests, transport.producer) == (b"", [], channel)
    other = SimpleNamespace(_buffer=b"kept", requests=[1])
    shed_upgraded_channel(SimpleNamespace(producer=other))
    shed_upgraded_channel(None)
    assert (other._buffer, other.requests) == (b"kept", [1])


class _Transport:
    """What write_now needs of a Twisted TCP transport: `write` into its own buffer."""

    def __init__(self, *, fail: bool = False) -> None:
        self.buffered: list[bytes] = []
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("this transport fails")
        self.buffered.append(data)


def test_held_writes_go_out_at_the_end_of_the_block_in_order():
    import socket

    from broadcaster.fanout.transport import release_held, write_now, writes_after

    left, right = socket.socketpair()
    other_left, other_right = socket.socketpair()
    for sock in (left, right, other_left, other_right):
        sock.setblocking(False)
    try:
        transport, failing = _Transport(), _Transport(fail=True)
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with writes_after():
            write_now(transport, left, b"one|", 0)
            write_now(transport, left, b"two|", 0)
            with writes_after():  # nested: joins the outer block
                write_now(transport, left, b"three|", 0)
            with pytest.raises(BlockingIOError):  # nothing written yet
                right.recv(100)
            release_held()  # a write that bypasses them is coming: what is held goes now
            assert right.recv(100) == b"one|two|three|"
            big = b"x" * (4 * 1024 * 1024)  # more than the kernel takes at once: the rest buffered
            write_now(transport, left, big, 0)
            write_now(transport, left, b"after", 0)  # behind the rest, in the transport's buffer
            # A connection whose transport raises does not stop the others' writes.
            write_now(failing, other_left, b"y" * (4 * 1024 * 1024), 0)
            write_now(transport, left, b"", 0)
        taken = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := right.recv(1 << 20):
                taken += chunk
        assert taken and set(taken) == {ord("x")}
        assert b"".join([taken, *transport.buffered]) == big + b"after"
    finally:
        for sock in (left, right, other_left, other_right):
            sock.close()
