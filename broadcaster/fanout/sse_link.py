"""Writing to an SSE receiver (broadcaster/fanout/sse.py): the same `Link` as a WebSocket's
(broadcaster/fanout/transport.py), with each frame written as a Server-Sent Event in the body
of one long HTTP response, and the same slow-consumer bound.

1. `SseLink` (any ASGI server): `http.response.body` messages; unsent is what is in sends
   that have not finished, as `AsgiLink` counts it.
2. `DaphneSseLink` (daphne): unsent is what Twisted's transports hold (TLS, then TCP); on
   plain TCP, once the headers are out, each event goes straight to the socket as one HTTP
   chunk (built once per broadcast for every SSE receiver), as `DirectLink` writes frames.

A close writes the `close` event past the bound (as a WebSocket close frame is queued behind
what is unsent) and ends the response. Under daphne the connection then closes once that is
out (no keep-alive after a stream); a client that stops reading is dropped by the connection
guard (broadcaster/server/guard.py, about twice BROADCAST_REQUEST_TIMEOUT), and one that reads
a trickle at the latest after CLOSE_GRACE, as a WebSocket's is.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from broadcaster import protocol
from broadcaster.compat import daphne
from broadcaster.compat.twisted import cap_send_buffer, is_tcp, raw_socket
from broadcaster.compat.twisted import unsent as twisted_unsent
from broadcaster.fanout.transport import CLOSE_GRACE, AsgiLink, Send, release_held, send_now, write_now

# The last frame encoded as an event (and as a chunk): the hub writes one message object to
# every receiver, so each SSE receiver after the first reuses the bytes. Holding the message
# keeps it alive, so `is` cannot match another object at the same address.
_last_event: tuple[Any, bytes, bytes] | None = None


def _encoded(message: dict[str, Any]) -> tuple[bytes, bytes]:
    """The SSE event for an ASGI `websocket.send` message, and the same as an HTTP chunk."""
    global _last_event
    cached = _last_event
    if cached is not None and cached[0] is message:
        return cached[1], cached[2]
    event = protocol.sse_event(message["text"])
    chunk = b"%x\r\n%b\r\n" % (len(event), event)
    _last_event = (message, event, chunk)
    return event, chunk


def retry_ms(code: int | None = None) -> int:
    """The `retry:` hint for an EventSource, with jitter (docs/PROTOCOL.md, "SSE")."""
    base = (
        protocol.SSE_RETRY_DEFAULT_MS
        if code is None
        else protocol.SSE_RETRY_MS.get(code, protocol.SSE_RETRY_DEFAULT_MS)
    )
    jitter = 1000 if code == protocol.CloseCode.SERVICE_RESTART else protocol.SSE_RETRY_JITTER_MS
    return base + random.randrange(jitter)


class SseLink(AsgiLink):
    """An SSE response under any ASGI server."""

    __slots__ = ("ended",)

    def __init__(self, send: Send, *, max_unsent: int) -> None:
        super().__init__(send, max_unsent=max_unsent)
        self.ended = False

    def start(self, headers: list[tuple[bytes, bytes]], first: bytes) -> None:
        """Send the response's head and its first bytes."""
        send_now(self.send, {"type": "http.response.start", "status": 200, "headers": headers})
        self.write_bytes(first)

    def write(self, message: dict[str, Any], frame: bytes | None) -> bool:
        # Closing: nothing more goes out, as with a WebSocket's close.
        return True if self.ended else super().write(message, frame)

    def _write(self, message: dict[str, Any], frame: bytes | None) -> None:
        self._write_event(*_encoded(message))

    def _write_event(self, event: bytes, chunk: bytes) -> None:
        self.write_bytes(event)

    def write_bytes(self, data: bytes) -> None:
        """Queue raw body bytes (an event, a keep-alive comment), whatever is unsent."""
        task = send_now(self.send, {"type": "http.response.body", "body": data, "more_body": True})
        if task is not None:
            self.pending += len(data)
            task.add_done_callback(functools.partial(self._done, len(data)))

    def close(self, message: dict[str, Any]) -> None:
        self.refuse(message.get("code", int(protocol.CloseCode.NORMAL)), None)

    def refuse(self, code: int, reason: str | None) -> None:
        """End the stream with a `close` event (and the `retry:` hint for that code)."""
        if self.ended:
            return
        self.ended = True
        frame = protocol.close_frame(code=int(code), reason=reason)
        self.write_bytes(protocol.sse_event(frame, retry_ms=retry_ms(int(code))))
        send_now(self.send, {"type": "http.response.body", "body": b"", "more_body": False})

    def no_delay(self) -> None:
        """Turn off Nagle's algorithm where the socket is reachable."""

    def keep_alive(self) -> None:
        """A comment, so proxies see traffic; skipped while output waits (it is traffic)."""
        if not self.ended and not self.unsent():
            self.write_bytes(protocol.SSE_KEEPALIVE)


class DaphneSseLink(SseLink):
    """An SSE response under daphne: `request` is its twisted.web Request."""

    __slots__ = ("request", "sock", "transport")

    def __init__(self, send: Send, request: Any, *, max_unsent: int) -> None:
        super().__init__(send, max_unsent=max_unsent)
        self.request = request
        self.transport = request.transport
        self.sock = raw_socket(self.transport) if is_tcp(self.transport) else None

    def unsent(self) -> int:
        return twisted_unsent(self.transport)

    def gone(self) -> bool:
        return bool(self.transport.disconnected) or bool(self.request.finished)

    def _write_event(self, event: bytes, chunk: bytes) -> None:
        request = self.request
        if self.sock is not None and request.startedWriting and request.chunked and not request.finished:
            write_now(self.transport, self.sock, chunk, self.unsent())
        else:
            release_held()  # twisted.web writes it now: what is held goes first
            self.write_bytes(event)

    def cap_kernel_buffer(self, size: int) -> None:
        cap_send_buffer(self.transport, size)

    def no_delay(self) -> None:
        """TCP_NODELAY, as for a WebSocket: with Nagle's algorithm and delayed ACKs a small
        event would wait up to 40 ms."""
        if self.sock is not None:
            self.transport.setTcpNoDelay(True)

    def refuse(self, code: int, reason: str | None) -> None:
        if self.ended:
            return
        channel = getattr(self.request, "channel", None)
        if channel is not None:
            channel.persistent = False  # Twisted closes the connection once the answer is out
        super().refuse(code, reason)
        from twisted.internet import reactor

        reactor.callLater(CLOSE_GRACE, self._drop)

    def _drop(self) -> None:
        if not self.transport.disconnected:
            self.transport.abortConnection()


def sse_link_for(send: Any, *, max_unsent: int) -> SseLink:
    """The link for an SSE response, given the `send` its server passed (daphne's is a partial
    of Server.handle_reply bound to the connection's twisted.web Request)."""
    request = daphne.protocol_of(send)
    if request is not None and hasattr(request, "startedWriting") and hasattr(request, "transport"):
        return DaphneSseLink(send, request, max_unsent=max_unsent)
    return SseLink(send, max_unsent=max_unsent)
