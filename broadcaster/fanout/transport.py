"""Writing to a connection without waiting for it: one small interface, `Link`, with one
implementation per transport. Each measures what it holds unsent for the client and keeps the
slow-consumer bound (BROADCAST_MAX_UNSENT_BYTES) itself: a write that finds more than the
bound already unsent is not made and returns False (the receiver then closes the client with
4408), whichever way frames leave.

1. `DirectLink` (daphne, plain TCP): the same WebSocket frame bytes, built once per broadcast
   (server-to-client frames are unmasked, so every client's are identical), written straight
   to the connection's socket, or to Twisted's buffer when the socket is busy. The router
   (broadcaster/fanout/routing.py) also turns on TCP_NODELAY: Twisted leaves Nagle's algorithm on,
   which with delayed ACKs holds a small frame back for up to 40 ms.
2. `TwistedLink` (daphne where the socket is not reachable, e.g. daphne terminating TLS):
   daphne's own `send`; unsent is what Twisted's transports (TLS, then TCP) hold.
3. `AsgiLink` (any other ASGI server): its `send`; unsent is what is in sends that have not
   finished (a server that applies backpressure suspends `send` while its buffer is full).

Every `send` is stepped directly by `send_now` instead of a task per connection. Daphne's
`send` never suspends; if another server's does, the rest runs in a task, so no connection
stalls the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from broadcaster.compat import autobahn, daphne
from broadcaster.compat.autobahn import is_open_and_idle
from broadcaster.compat.twisted import cap_send_buffer, is_tcp, raw_socket, shed_upgraded_channel, tcp_unsent
from broadcaster.compat.twisted import unsent as twisted_unsent

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

# How long a client closed by the server has to read what is queued ahead of the close frame
# (a slow consumer's megabyte) before the connection is dropped without it. autobahn's own
# default is 1 s, which no slow reader can meet.
CLOSE_GRACE = 30.0


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


class Link:
    """Where a receiver's frames go. Never waits for the client."""

    __slots__ = ("max_unsent",)

    def __init__(self, *, max_unsent: int) -> None:
        self.max_unsent = max_unsent

    def write(self, message: dict[str, Any], frame: bytes | None) -> bool:
        """Queue one ASGI send message (`frame`: the same text prebuilt as frame bytes); False,
        and nothing queued, when over `max_unsent` bytes are unsent for this client already."""
        if self.unsent() > self.max_unsent:
            return False
        self._write(message, frame)
        return True

    def _write(self, message: dict[str, Any], frame: bytes | None) -> None:
        raise NotImplementedError

    def unsent(self) -> int:
        """Bytes accepted for this client that have not left the process yet."""
        raise NotImplementedError

    def close(self, message: dict[str, Any]) -> None:
        """Queue the ASGI close message, giving a slow reader CLOSE_GRACE to reach it."""
        raise NotImplementedError

    def gone(self) -> bool:
        """Whether the connection is closed (nothing written now reaches the client)."""
        raise NotImplementedError

    def limit_client_frames(self, max_bytes: int) -> None:
        """Refuse client frames over `max_bytes` (close 1009), and close, with a close frame,
        on invalid UTF-8 (1007), where the server lets the application say so."""

    def failure(self) -> tuple[int, str] | None:
        """(close code, reason) when the server closed the connection for the client's frame."""
        return None

    def refuse(self, code: int, reason: str) -> None:
        """Close an accepted connection with a code the ASGI close message may not carry under
        this server (daphne allows only 1000 and 3000-4999), e.g. 1013."""
        raise NotImplementedError

    def shed_handshake(self) -> None:
        """Once the connection is open: drop what the server keeps of the opening handshake."""

    def cap_kernel_buffer(self, size: int) -> None:
        """Let the kernel hold at most about 2 x `size` bytes unsent for this client (SO_SNDBUF;
        Linux doubles it): past that, output waits in the process, where the slow-consumer
        bound counts it. Unbounded, Linux's autotuning took 1-3 MB per client that stopped
        reading, and the bound saw none of it. Where the socket is not reachable, nothing."""


# Socket writes held back by `writes_after` until the end of its block: (transport, socket, data).
_held_writes: list[tuple[Any, socket.socket, bytes]] | None = None


def write_now(transport: Any, sock: socket.socket, data: bytes, unsent: int) -> None:
    """Write `data` to a Twisted TCP transport: straight to its socket when nothing is queued
    ahead of it (`unsent` is 0), the rest (or all) to Twisted's buffer. Inside `writes_after`,
    the socket write is made at the end of the block, in order."""
    if unsent:
        transport.write(data)
    elif _held_writes is not None:
        _held_writes.append((transport, sock, data))
    else:
        _send_or_buffer(transport, sock, data)


def _send_or_buffer(transport: Any, sock: socket.socket, data: bytes) -> bool:
    """`data` straight to the socket, what it does not take to Twisted's buffer; True when
    Twisted holds some of it now."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        return False  # the connection broke; Twisted notices and closes it
    if sent == len(data):
        return False
    transport.write(data[sent:])
    return True


@contextlib.contextmanager
def writes_after() -> Iterator[None]:
    """Within the block, `write_now`'s socket writes are kept, and made together, in order,
    when it ends: the hub decides what every receiver gets first, then writes the sockets in
    one tight loop. Measured at 5,000 receivers: about 7% less server CPU per single message
    than deciding and writing each receiver in turn (the kernel's work for each write evicts
    the receivers' objects from the CPU's caches; docs/PERFORMANCE.md). The block runs in one
    turn of the event loop, and a write that reaches a transport another way first makes the
    held ones (`release_held`), so each client's bytes keep their order. A nested block joins
    the outer one."""
    global _held_writes
    if _held_writes is not None:
        yield
        return
    held: list[tuple[Any, socket.socket, bytes]] = []
    _held_writes = held
    try:
        yield
    finally:
        _held_writes = None
        _write_held(held)


def release_held() -> None:
    """Make the writes held so far now: called before a write that goes to a transport some
    other way (daphne's `send`, a close), so that every client's bytes keep their order."""
    if _held_writes:
        held = list(_held_writes)
        _held_writes.clear()
        _write_held(held)


def _write_held(held: list[tuple[Any, socket.socket, bytes]]) -> None:
    # A transport given part of a write holds the rest: what follows for it goes there too.
    buffered: set[int] = set()
    for transport, sock, data in held:
        try:
            if buffered and id(transport) in buffered:
                transport.write(data)
            elif _send_or_buffer(transport, sock, data):
                buffered.add(id(transport))
        except Exception:
            # One connection's failure never stops the others' writes.
            logger.exception("Could not write to a receiver's connection")


class TwistedLink(Link):
    """A daphne connection written through daphne's `send` (autobahn frames it)."""

    __slots__ = ("protocol", "send")

    def __init__(self, send: Send, protocol: Any, *, max_unsent: int) -> None:
        super().__init__(max_unsent=max_unsent)
        self.send = send
        self.protocol = protocol

    def unsent(self) -> int:
        return twisted_unsent(getattr(self.protocol, "transport", None))

    def _write(self, message: dict[str, Any], frame: bytes | None) -> None:
        send_now(self.send, message)

    def close(self, message: dict[str, Any]) -> None:
        autobahn.set_close_grace(self.protocol, CLOSE_GRACE)
        release_held()
        send_now(self.send, message)

    def gone(self) -> bool:
        transport = getattr(self.protocol, "transport", None)
        return transport is None or bool(getattr(transport, "disconnected", False))

    def limit_client_frames(self, max_bytes: int) -> None:
        # autobahn's options, per connection (daphne's are 1 MiB, and dropping the TCP
        # connection without a close frame: the client cannot tell what it did wrong). Only
        # the frame limit: autobahn applies its message limit to what it sends as well, so a
        # message of several frames is still held to daphne's 1 MiB.
        autobahn.limit_client_frames(self.protocol, max_bytes)

    def failure(self) -> tuple[int, str] | None:
        return autobahn.close_failure(self.protocol)

    def refuse(self, code: int, reason: str) -> None:
        release_held()
        autobahn.send_close_frame(self.protocol, code, reason)

    def cap_kernel_buffer(self, size: int) -> None:
        cap_send_buffer(getattr(self.protocol, "transport", None), size)

    def shed_handshake(self) -> None:
        # autobahn keeps the raw request and response and the parsed headers, and daphne its
        # own copy of the headers, for the connection's whole life; neither reads them once it
        # is open. About 2 KB per connection (docs/PERFORMANCE.md).
        autobahn.shed_handshake(self.protocol)
        daphne.shed_handshake(self.protocol)
        autobahn.share_options(self.protocol)
        shed_upgraded_channel(getattr(self.protocol, "transport", None))


class DirectLink(TwistedLink):
    """A daphne connection on plain TCP: prebuilt frames go straight to its socket."""

    __slots__ = ("sock", "transport")

    def __init__(self, send: Send, protocol: Any, transport: Any, *, max_unsent: int) -> None:
        super().__init__(send, protocol, max_unsent=max_unsent)
        self.transport = transport
        self.sock: socket.socket = raw_socket(transport)

    def unsent(self) -> int:
        return tcp_unsent(self.transport)

    def write(self, message: dict[str, Any], frame: bytes | None) -> bool:
        """The prebuilt frame straight to the socket when the connection is open and nothing
        of daphne's own is queued ahead of it; else daphne's `send`. (Link.write with the
        bound's check done here, on the count it needs anyway: this runs once per client per
        broadcast.)"""
        transport = self.transport
        held = tcp_unsent(transport)
        if held > self.max_unsent:
            return False
        if frame is None or not is_open_and_idle(self.protocol):
            release_held()  # daphne's send writes to the transport now: what is held goes first
            send_now(self.send, message)
            return True
        if transport.disconnecting or transport.disconnected:
            return True  # closing: nothing more goes out, as with daphne's own send
        write_now(transport, self.sock, frame, held)
        return True


class AsgiLink(Link):
    """Any other ASGI server: unsent is the size of sends that have not finished."""

    __slots__ = ("closed", "pending", "send")

    def __init__(self, send: Send, *, max_unsent: int) -> None:
        super().__init__(max_unsent=max_unsent)
        self.send = send
        self.pending = 0
        self.closed = False

    def unsent(self) -> int:
        return self.pending

    def _write(self, message: dict[str, Any], frame: bytes | None) -> None:
        size = len(frame) if frame is not None else len(message.get("text", "").encode())
        task = send_now(self.send, message)
        if task is not None:
            self.pending += size
            task.add_done_callback(functools.partial(self._done, size))

    def _done(self, size: int, task: asyncio.Task[None]) -> None:
        self.pending -= size
        if not task.cancelled() and task.exception() is not None:
            self.closed = True  # the server could not send: the connection is gone

    def close(self, message: dict[str, Any]) -> None:
        send_now(self.send, message)

    def gone(self) -> bool:
        return self.closed

    def refuse(self, code: int, reason: str) -> None:
        send_now(self.send, {"type": "websocket.close", "code": code, "reason": reason})


def link_for(send: Any, *, max_unsent: int) -> Link:
    """The fastest link for a connection, given the `send` its server passed (what daphne's
    internals it relies on were checked at start-up: broadcaster/compat/)."""
    protocol = daphne.protocol_of(send)
    if protocol is None:
        _say_once("other", "Receivers on this process are served through the ASGI send path (not daphne)")
        return AsgiLink(send, max_unsent=max_unsent)
    transport = getattr(protocol, "transport", None)
    if is_tcp(transport):
        return DirectLink(send, protocol, transport, max_unsent=max_unsent)
    _say_once(
        "twisted", "Receivers on this process are written through daphne's send (no raw socket, e.g. TLS)"
    )
    return TwistedLink(send, protocol, max_unsent=max_unsent)


_said: set[str] = set()


def _say_once(key: str, text: str) -> None:
    if key not in _said:
        _said.add(key)
        logger.warning("%s: slower fan-out; the slow-consumer bound still holds", text)
