"""Twisted's internals: what its TCP and TLS transports hold unsent, their raw socket, and the
HTTP channel's pipelined-request buffer (see the package docstring)."""

from __future__ import annotations

import contextlib
import socket
import sys
from typing import Any

from broadcaster.compat.probe import version

__all__ = [
    "USES", "cap_send_buffer", "drop_pipelined", "generic_channel", "has_pipelined", "is_tcp", "problem",
    "raw_socket", "running_reactor", "shed_upgraded_channel", "tcp_of", "tcp_unsent", "unsent",
]  # fmt: skip

USES: dict[str, tuple[str, ...]] = {
    # What it holds that the kernel has not taken: dataBuffer[offset:] plus _tempDataLen bytes.
    "twisted.internet.tcp.Connection": ("socket", "dataBuffer", "offset", "_tempDataLen"),
    # Cleartext not yet encrypted, and the transport it wraps.
    "twisted.protocols.tls.TLSMemoryBIOProtocol": ("_appSendBuffer", "transport"),
    # Requests pipelined behind the one being answered; the wrapper that picks HTTP/1.1 or h2.
    "twisted.web.http.HTTPChannel": ("_dataBuffer",),
    "twisted.web.http": ("_GenericHTTPChannelProtocol",),
    # Once daphne hands a connection to the WebSocket protocol, the HTTPChannel that parsed its
    # handshake stays on as the transport's producer, with the request and its bytes.
    "twisted.web.http.HTTPChannel (upgraded)": ("producer", "_buffer", "requests"),
}

try:
    from twisted.internet.tcp import Connection as _TcpConnection
    from twisted.web.http import HTTPChannel as _HTTPChannel
except ImportError:  # not under daphne: nothing here is used
    _TcpConnection = _HTTPChannel = None


def is_tcp(transport: Any) -> bool:
    """Whether `transport` is Twisted's own TCP connection (not a wrapper such as TLS, whose
    attribute lookups fall through to the TCP transport underneath)."""
    return _TcpConnection is not None and isinstance(transport, _TcpConnection)


def tcp_unsent(transport: Any) -> int:
    """What a Twisted TCP transport holds that the kernel has not taken (its two buffers)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def raw_socket(transport: Any) -> socket.socket:
    """The socket under a Twisted TCP transport."""
    sock: socket.socket = transport.socket
    return sock


def unsent(transport: Any) -> int:
    """What a Twisted transport holds unsent, down its wrappers (TLS keeps what it cannot
    encrypt yet) to the TCP transport."""
    total = 0
    while transport is not None and not is_tcp(transport):
        own = vars(transport) if hasattr(transport, "__dict__") else {}
        total += sum(len(chunk) for chunk in own.get("_appSendBuffer", ()))
        transport = own.get("transport")
    if transport is not None:
        total += tcp_unsent(transport)
    return total


def tcp_of(transport: Any) -> Any:
    """The TCP transport under `transport` (itself, or under TLS), or None."""
    while transport is not None and not is_tcp(transport):
        transport = vars(transport).get("transport") if hasattr(transport, "__dict__") else None
    return transport


def cap_send_buffer(transport: Any, size: int) -> None:
    """SO_SNDBUF = `size` on the socket under a Twisted transport, if there is one."""
    tcp = tcp_of(transport)
    if tcp is not None:
        with contextlib.suppress(OSError):
            tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def shed_upgraded_channel(transport: Any) -> None:
    """Drop what the HTTP channel that parsed a WebSocket handshake still holds once daphne
    has handed the connection over: the parsed request (its headers, about 1 KB per
    connection) and any bytes left. The channel stays the transport's producer; nothing of it
    reads either again. Under TLS the producer is TLS's own: nothing is dropped there."""
    channel = getattr(transport, "producer", None)
    if _HTTPChannel is None or not isinstance(channel, _HTTPChannel):
        return
    if isinstance(getattr(channel, "_buffer", None), bytes):
        channel._buffer = b""
    if isinstance(getattr(channel, "requests", None), list):
        channel.requests = []


def running_reactor() -> Any:
    """Twisted's reactor when one is installed (daphne installs it); never installs one."""
    if "twisted.internet.reactor" not in sys.modules:
        return None
    from twisted.internet import reactor

    return reactor


def has_pipelined(channel: Any) -> bool:
    """Whether an HTTP channel holds requests pipelined behind the one it is answering."""
    return bool(getattr(channel, "_dataBuffer", None))


def drop_pipelined(channel: Any) -> None:
    """Forget the requests pipelined on an HTTP channel (it is about to be closed)."""
    channel._dataBuffer = []


def generic_channel() -> Any:
    """The wrapper Twisted's own HTTP factory puts around each channel (it switches to h2 when
    TLS negotiates it), or None in a release without it."""
    from twisted.web import http

    return getattr(http, "_GenericHTTPChannelProtocol", None)


class _NoReactor:
    """What a TCP connection asks of its reactor when written to and stopped, doing nothing."""

    def addWriter(self, _: Any) -> None:
        pass

    def removeWriter(self, _: Any) -> None:
        pass


def _version() -> str:
    return version("twisted", "Twisted")


def problem() -> str | None:
    """What the installed Twisted lacks of `USES`, in words naming its version, or None.

    Checked by behaviour where the names are set per connection: a TCP connection on a socket
    pair is written to, and what it reports unsent must be what was written."""
    if _TcpConnection is None:
        return f"{_version()}: cannot import twisted.internet.tcp"
    from twisted.protocols.tls import TLSMemoryBIOProtocol
    from twisted.web import http

    missing = []
    left, right = socket.socketpair()
    try:
        left.setblocking(False)
        # Not the reactor: this connection is never read or written by it.
        connection = _TcpConnection(left, None, _NoReactor())
        try:
            connection.connected = 1
            connection.write(b"x" * 10)
            if tcp_unsent(connection) != 10 or raw_socket(connection) is not left:
                missing.append("TCP Connection: written bytes not counted unsent")
        except AttributeError as exc:
            missing.append(f"TCP Connection.{exc.name}")
        finally:
            with contextlib.suppress(Exception):
                connection.stopWriting()
    finally:
        left.close()
        right.close()
    if "_appSendBuffer" not in TLSMemoryBIOProtocol.makeConnection.__code__.co_names:
        missing.append("TLSMemoryBIOProtocol._appSendBuffer")
    if not isinstance(getattr(http.HTTPChannel(), "_dataBuffer", None), list):
        missing.append("HTTPChannel._dataBuffer")
    return f"{_version()} lacks {', '.join(missing)}" if missing else None
