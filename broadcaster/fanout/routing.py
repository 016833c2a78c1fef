"""The ASGI application's routing: HTTP to Django, the receiver endpoints (WebSocket and SSE) to
the receivers.

`Router` has no coroutine frame of its own: each call returns the coroutine of the
application that handles the connection. Channels' ProtocolTypeRouter, OriginValidator and
URLRouter, stacked with a middleware, each kept a frame (and URLRouter a copy of the scope)
alive for the whole life of every WebSocket: about 2 KB per connection, measured with
tracemalloc at 2,000 connections.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from broadcaster import protocol
from broadcaster.compat.asgiref import single_callable
from broadcaster.fanout import sse
from broadcaster.fanout.consumers import ReceiverConsumer
from broadcaster.fanout.origin import OriginCheck
from broadcaster.fanout.transport import DirectLink, link_for

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class StaticFiles:
    """Which paths `app` serves: every path under `prefix`, or only the `files` listed."""

    def __init__(self, *, app: ASGIApp, prefix: str, files: frozenset[str] | None = None) -> None:
        self.app, self.prefix, self.files = app, prefix, files

    def serves(self, path: str) -> bool:
        if self.files is not None:
            return path in self.files
        return path.startswith(self.prefix)


@single_callable  # its __call__ is plain (not async): asgiref would take it for the old style
class Router:
    """The project's ASGI application."""

    def __init__(self, *, http: ASGIApp, origins: OriginCheck, static: StaticFiles | None = None,
                 other_websockets: ASGIApp | None = None) -> None:  # fmt: skip
        self.http = http
        self.origins = origins
        # Static files served here, whatever DJANGO_DEBUG says (broadcaster/asgi.py says which).
        self.static = static
        # Where WebSockets at other paths go (a host project's own consumers); None: refused.
        self.other_websockets = other_websockets

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        if scope["type"] == "http":
            if scope["path"] == protocol.SSE_PATH:
                return sse.sse_receiver(scope, receive, send, self.origins)
            if scope["path"] == protocol.SSE_SEEN_PATH:
                return sse.seen_endpoint(scope, receive, send, self.origins)
            if self.static is not None and self.static.serves(scope["path"]):
                return self.static.app(scope, receive, send)
            return self.http(scope, receive, send)
        if scope["type"] == "websocket":
            return self.websocket(scope, receive, send)
        raise ValueError(f"No application for ASGI scope type {scope['type']!r}")

    def websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        """A WebSocket handshake: the receiver endpoint, or a refusal (HTTP 403)."""
        if scope["path"] != protocol.RECEIVER_PATH:
            if self.other_websockets is not None:
                return self.other_websockets(scope, receive, send)
            logger.warning("Refused WebSocket handshake: no endpoint at %s", scope["path"])
            return _deny(receive, send)
        if not self.origins.allows(scope):
            return _deny(receive, send)
        link = link_for(send, max_unsent=settings.BROADCAST_MAX_UNSENT_BYTES)
        link.limit_client_frames(protocol.MAX_CLIENT_FRAME)
        if isinstance(link, DirectLink):
            # Twisted leaves Nagle's algorithm on; with delayed ACKs it holds small frames back.
            link.transport.setTcpNoDelay(True)
        link.cap_kernel_buffer(settings.BROADCAST_SOCKET_SEND_BUFFER)
        return ReceiverConsumer(link)(scope, receive, send)


async def _deny(receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.close"})  # before accept: the server answers 403
