"""Answers the server writes itself, before any application sees the request (a body over its
limit, a request too slow or too large, a process out of descriptors), and how it closes after
them."""

from __future__ import annotations

import json
from typing import Any

from broadcaster.compat.twisted import is_tcp

__all__ = ["answer", "refuse"]

# How long a refused client may go on sending before the connection is dropped.
LINGER = 5.0


def answer(status: int, reason: str, message: str, *, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer with a JSON error body, closing the connection."""
    body = json.dumps({"error": message}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", "Cache-Control: no-store",
             f"Content-Length: {len(body)}", "Connection: close"]  # fmt: skip
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _abort(transport: Any) -> None:
    if not getattr(transport, "disconnected", True):
        transport.abortConnection()


def refuse(transport: Any, data: bytes, *, linger: float = LINGER) -> None:
    """Write `data` and close, dropping the connection after `linger` seconds whatever the
    client does. On plain TCP, half-close first, so a client still sending reads the answer
    instead of a reset; under TLS a full close, which flushes the encrypted answer first (a
    half-close would shut the socket under TLS's buffer and lose it)."""
    from twisted.internet import reactor

    transport.write(data)
    if is_tcp(transport) and hasattr(transport, "loseWriteConnection"):
        transport.loseWriteConnection()
    else:
        transport.loseConnection()
    reactor.callLater(linger, _abort, transport)
