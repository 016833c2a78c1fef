"""Writing to a connection without waiting for it: the fan-out's per-connection cost.

Two ways, fastest first:

1. `DirectLink` (daphne only): the same WebSocket frame bytes, built once per broadcast
   (server-to-client frames are unmasked, so every client's are identical), written straight
   to the connection's socket, or to Twisted's buffer when the socket is busy. Found by the
   router (broadcaster/routing.py), which also turns on TCP_NODELAY: Twisted leaves Nagle's
   algorithm on, which with delayed ACKs holds a small frame back for up to 40 ms.
2. `send_now` (any ASGI server): steps the `send` coroutine directly instead of a task per
   connection. Daphne's `send` never suspends; if another server's does (backpressure),
   the rest runs in a task, so no connection stalls the others.

A server without (1) still works through (2); a daphne connection behind TLS has no raw
socket and uses (2) as well.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]

SCOPE_LINK_KEY = "broadcaster.link"


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked WebSocket text frame (RFC 6455 section 5.2) around `payload`."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def send_now(send: Send, message: dict[str, Any]) -> asyncio.Task[None] | None:
    """Run `send(message)` up to its first suspension; return the task finishing it, if any."""
    coro = send(message)
    assert isinstance(coro, Coroutine)
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_finish(coro, yielded))


async def _finish(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    while True:
        if yielded is None:
            await asyncio.sleep(0)
        else:
            # The coroutine reads the future's result (or exception) itself when resumed.
            await asyncio.wait([yielded])
        try:
            yielded = coro.send(None)
        except StopIteration:
            return


class DirectLink:
    """A daphne WebSocket connection's Twisted transport, for writing prebuilt frames."""

    def __init__(self, protocol: Any, transport: Any) -> None:
        self.protocol = protocol
        self.transport = transport
        self.sock: socket.socket = transport.socket

    def unsent(self) -> int:
        """Bytes accepted for this connection that the kernel has not taken yet."""
        t = self.transport
        return len(t.dataBuffer) - t.offset + t._tempDataLen

    def write_frame(self, frame: bytes) -> bool:
        """Write a whole prebuilt frame; False when the connection is not in a state for it."""
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN or protocol.send_queue:
            return False
        transport = self.transport
        if transport.disconnecting or transport.disconnected:
            return True  # closing: nothing more goes out, as with daphne's own send
        if not self.unsent():
            # Nothing queued ahead of it, so the socket may take it at once.
            try:
                sent = self.sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                return True  # the connection broke; Twisted notices and closes it
            if sent == len(frame):
                return True
            frame = frame[sent:]
        transport.write(frame)
        return True


def daphne_link(send: Any) -> DirectLink | None:
    """The DirectLink behind daphne's `send` (a partial of Server.handle_reply bound to the
    protocol), or None for another server or a connection without a plain TCP socket."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    protocol = send.args[0]
    transport = getattr(protocol, "transport", None)
    needed = ("socket", "dataBuffer", "offset", "_tempDataLen", "setTcpNoDelay")
    if transport is None or not all(hasattr(transport, name) for name in needed):
        return None
    if not all(hasattr(protocol, name) for name in ("state", "STATE_OPEN", "send_queue")):
        return None
    return DirectLink(protocol, transport)
